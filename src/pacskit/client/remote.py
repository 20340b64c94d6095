"""Which peer a client talks to: ``RemoteAE`` entries from the AE registry, or ``AET@host:port``.

Every SCU and the command line resolve their target through :func:`resolve_remote`, so a name works
the same everywhere: ``"ORTHANC"`` is looked up in the registry (``ae-titles.toml``, the one
``pacskit ae add`` writes), ``"ORTHANC@127.0.0.1:4242"`` needs no registry at all.

``AET@host:port`` resolves to a :class:`Peer` (title, host, port), not to a registry entry: nothing
else is known about such a peer, and a :class:`RemoteAE` is a pydantic model whose import (~0.15 s)
would be most of the start-up of ``pacskit echo`` or ``pacskit store``. This module imports pydantic
only when a registry entry is asked for (``RemoteAE`` is loaded on first use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from pacskit.config.validation import validate_ae_title

if TYPE_CHECKING:
    from pacskit.config.aetitles import AeTitles, RemoteAE

__all__ = ["Peer", "RemoteAE", "RemoteSpec", "UnknownRemote", "is_dicomweb_url", "parse_address", "resolve_remote"]


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer given as ``AET@host:port``: what an SCU needs to reach it, the fields it shares with a
    :class:`RemoteAE` (``title``, ``host``, ``port``, ``tls``). ``tls`` is off: a caller turns TLS on
    by passing an ``ssl`` context to the SCU."""

    title: str
    host: str
    port: int
    tls: bool = False


#: What SCUs accept as a target: a registry entry, a :class:`Peer`, ``"AET@host:port"`` or a registered AE title.
RemoteSpec = Union["RemoteAE", Peer, str]


class UnknownRemote(LookupError):
    """The target is neither ``AET@host:port`` nor a title in the AE registry (or no registry was given)."""


def __getattr__(name: str) -> object:
    """``RemoteAE`` (a pydantic model) is imported on first use (PEP 562)."""
    if name == "RemoteAE":
        from pacskit.config.aetitles import RemoteAE

        return RemoteAE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_dicomweb_url(target: str) -> bool:
    """Whether a CLI target names a DICOMweb service (``http(s)://...``) rather than an AE."""
    return target.startswith(("http://", "https://"))


def parse_address(text: str) -> tuple[str, str, int]:
    """Parse dcm4che's ``AET@host:port`` form into ``(ae, host, port)``.

    ``host`` may be a bracketed IPv6 address (``AE@[::1]:104``). Raises ``ValueError`` saying which
    part is wrong (the AE title is checked as the registry checks it).
    """
    ae, sep, rest = text.partition("@")
    host, colon, port_text = rest.rpartition(":")
    if not sep or not colon or not ae or not host:
        raise ValueError(f"{text!r} is not AET@host:port")
    if len(ae) > 16:
        raise ValueError(f"AE title {ae!r} is longer than 16 characters")
    ae = validate_ae_title(ae)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return ae, host.strip("[]"), port


def resolve_remote(target: RemoteSpec, registry: AeTitles | None = None) -> RemoteAE | Peer:
    """Turn ``target`` into what an SCU connects to.

    ``AET@host:port`` is parsed into a :class:`Peer` (ValueError if malformed); a bare title is looked
    up in ``registry`` (:class:`UnknownRemote` if absent) and its :class:`RemoteAE` returned. A
    :class:`RemoteAE` or :class:`Peer` is returned unchanged.
    """
    if not isinstance(target, str):
        return target
    if "@" in target:
        return Peer(*parse_address(target))
    if registry is None:
        raise UnknownRemote(f"{target!r} is not AET@host:port and no AE registry was given to look it up")
    found = registry.get(target)
    if found is None:
        raise UnknownRemote(f"AE {target!r} is not registered (pacskit ae add {target} --host H --port P)")
    return found
