"""pacskit.net: an asyncio DICOM Upper Layer and DIMSE engine (PS3.7, PS3.8), both roles.

Built on :mod:`pacskit.dicom` (Part 10 files, transfer syntax and SOP class UIDs, dataset encoding),
which it does not re-export. Layers, bottom up (each module is named after the part of the standard it implements):

- :mod:`~pacskit.net.pdu`: PDU and item codecs
- :mod:`~pacskit.net.fsm`: the Upper Layer state machine table
- :mod:`~pacskit.net.dul`: the asyncio protocol: framing, state machine actions, ARTIM and idle timers
- :mod:`~pacskit.net.presentation`: presentation context and role negotiation
- :mod:`~pacskit.net.dimse`: command sets and status codes
- :mod:`~pacskit.net.sinks`: where incoming datasets stream to
- :mod:`~pacskit.net.base`, :mod:`~pacskit.net.negotiation`, :mod:`~pacskit.net.assembly`,
  :mod:`~pacskit.net.dispatch`, :mod:`~pacskit.net.requestor`: the parts of
  :mod:`~pacskit.net.association` (ACSE, DIMSE assembly, dispatch, the requestor API and :func:`connect`)
- :mod:`~pacskit.net.services`: handler registry, :class:`Request`, :class:`Response`
- :mod:`~pacskit.net.acceptor`: the listener
- :mod:`~pacskit.net.events`: spy notifications
"""

from pacskit.net.acceptor import Acceptor
from pacskit.net.association import Association
from pacskit.net.negotiation import (
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_LOCAL_LIMIT,
    REJECT_NO_REASON,
    AssociateHook,
    Reject,
)
from pacskit.net.requestor import connect
from pacskit.net.config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, NetConfig
from pacskit.net.dimse import Command, CommandField
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
from pacskit.net.presentation import PresentationContext, RequestedContext, SupportedContext
from pacskit.net.services import Handler, InlineHandler, OperationContext, Request, Response, Services, current_operation
from pacskit.net.sinks import ReceivedDataset

__all__ = [
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
    "InlineHandler",
    "NetConfig",
    "NetError",
    "NetTimeout",
    "NoAcceptableContext",
    "OperationContext",
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
    "SupportedContext",
    "UserIdentityRQ",
    "connect",
    "current_operation",
]

