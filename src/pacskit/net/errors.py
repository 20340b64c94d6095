"""Exceptions raised by the network engine.

::

    NetError
     ├── PduError                  malformed or unexpected PDU (carries the A-ABORT reason to send)
     ├── DimseError                malformed DIMSE command set or message sequence
     ├── ConnectionFailed          TCP connect refused / unreachable / TLS handshake failed
     ├── AssociationRejected       peer answered A-ASSOCIATE-RJ (result, source, reason)
     ├── AssociationAborted        A-ABORT or A-P-ABORT while the association was up
     ├── NoAcceptableContext       nothing suitable was accepted for what the caller wants to send
     └── NetTimeout                ACSE, DIMSE or network timeout expired

Callers catch :class:`NetError` for "the peer or the network failed"; everything else is a bug.
"""

from __future__ import annotations


class NetError(Exception):
    """Base class of every error the network engine raises on purpose."""


class PduError(NetError):
    """A PDU could not be decoded; ``abort_reason`` is the A-ABORT reason code (PS3.8 Table 9-26)."""

    def __init__(self, message: str, abort_reason: int = 0) -> None:
        super().__init__(message)
        self.abort_reason = abort_reason


class DimseError(NetError):
    """A DIMSE command set or message sequence is invalid."""


class ConnectionFailed(NetError):
    """The transport connection could not be established."""


class AssociationRejected(NetError):
    """The peer rejected the association; ``result``, ``source`` and ``reason`` are PS3.8 codes."""

    def __init__(self, result: int, source: int, reason: int, description: str) -> None:
        super().__init__(f"association rejected: {description}")
        self.result = result
        self.source = source
        self.reason = reason
        self.description = description


class AssociationAborted(NetError):
    """The association was aborted (by the peer, by the provider, or because the connection dropped)."""


class NoAcceptableContext(NetError):
    """No accepted presentation context fits the SOP class and transfer syntax the caller needs."""


class NetTimeout(NetError):
    """An ACSE, DIMSE or network timeout expired."""
