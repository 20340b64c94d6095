"""pacskit.net: an asyncio DICOM Upper Layer and DIMSE engine (PS3.7, PS3.8), both roles.

Layers, bottom up (each module is named after the part of the standard it implements):

- :mod:`~pacskit.net.pdu`: PDU and item codecs
- :mod:`~pacskit.net.fsm`: the Upper Layer state machine table
- :mod:`~pacskit.net.dul`: the asyncio protocol: framing, state machine actions, ARTIM and idle timers
- :mod:`~pacskit.net.presentation`: presentation context and role negotiation
- :mod:`~pacskit.net.dimse`: command sets and status codes
- :mod:`~pacskit.net.sinks`: where incoming datasets stream to; reading outgoing Part 10 files
- :mod:`~pacskit.net.association`: ACSE, DIMSE assembly and dispatch, the requestor API, :func:`connect`
- :mod:`~pacskit.net.services`: handler registry, :class:`Request`, :class:`Response`
- :mod:`~pacskit.net.acceptor`: the listener
- :mod:`~pacskit.net.events`: spy notifications
"""

from pacskit.net.acceptor import Acceptor
from pacskit.net.association import (
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_LOCAL_LIMIT,
    REJECT_NO_REASON,
    WHOLE_FILE_LIMIT,
    AssociateHook,
    Association,
    Reject,
    connect,
    encode_dataset,
)
from pacskit.net.config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, NetConfig
from pacskit.net.dimse import Command, CommandField, Status, status_category
from pacskit.net.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    DimseError,
    NetError,
    NetTimeout,
    NoAcceptableContext,
    PduError,
)
from pacskit.net.events import EventBus, SpyEvent
from pacskit.net.pdu import UserIdentityRQ
from pacskit.net.presentation import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    PresentationContext,
    RequestedContext,
    SupportedContext,
)
from pacskit.net.services import Handler, OperationContext, Request, Response, Services, current_operation
from pacskit.net.sinks import Part10Info, ReceivedDataset, read_part10

__all__ = [
    "ALL_TRANSFER_SYNTAXES",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "Acceptor",
    "AssociateHook",
    "Association",
    "AssociationAborted",
    "AssociationRejected",
    "Command",
    "CommandField",
    "ConnectionFailed",
    "DimseError",
    "EventBus",
    "Handler",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "NetConfig",
    "NetError",
    "NetTimeout",
    "NoAcceptableContext",
    "OperationContext",
    "Part10Info",
    "PduError",
    "PresentationContext",
    "REJECT_CALLED_AE",
    "REJECT_CALLING_AE",
    "REJECT_LOCAL_LIMIT",
    "REJECT_NO_REASON",
    "ReceivedDataset",
    "Reject",
    "Request",
    "RequestedContext",
    "Response",
    "Services",
    "SpyEvent",
    "Status",
    "SupportedContext",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "UserIdentityRQ",
    "VERIFICATION_SOP_CLASS",
    "WHOLE_FILE_LIMIT",
    "connect",
    "current_operation",
    "encode_dataset",
    "read_part10",
    "status_category",
]


def __getattr__(name: str) -> object:
    # made from pydicom's list on first use, so importing the engine does not import pydicom
    if name == "ALL_TRANSFER_SYNTAXES":
        from pacskit.net import presentation

        return presentation.ALL_TRANSFER_SYNTAXES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
