"""The state one association's parts share: set up once, read and changed by the negotiation
(:mod:`~pacskit.net.negotiation`), message assembly (:mod:`~pacskit.net.assembly`), dispatch
(:mod:`~pacskit.net.dispatch`) and requestor (:mod:`~pacskit.net.requestor`) mixins that
:class:`~pacskit.net.association.Association` is made of.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, cast

from pacskit.dicom.part10 import WHOLE_FILE_LIMIT
from pacskit.net import events as ev
from pacskit.net import pdu
from pacskit.net.config import NetConfig
from pacskit.net.dimse import Command, CommandField
from pacskit.net.dul import UpperLayer
from pacskit.net.fsm import State
from pacskit.net.presentation import PresentationContext, SupportedContext
from pacskit.net.services import Response, Services
from pacskit.net.sinks import DatasetSink

if TYPE_CHECKING:
    from pacskit.net.association import Association
    from pacskit.net.negotiation import AssociateHook, Reject
    from pacskit.net.requestor import _Responses

log = logging.getLogger("pacskit.net")

MULTI_RESPONSE = frozenset({"C-FIND", "C-GET", "C-MOVE"})
CANCELLABLE = frozenset({CommandField.C_FIND_RQ, CommandField.C_GET_RQ, CommandField.C_MOVE_RQ})
#: queued behind the requests received before an A-RELEASE-RQ: answer those first, then release
RELEASE = object()
#: bytes of a streamed file read and written per step (files up to this size are sent whole)
SEND_BLOCK = WHOLE_FILE_LIMIT
_association_ids = itertools.count(1)


def address_text(peer: Any) -> str:
    """``host:port`` of a peer address, for log lines and the operation context."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class AssociationBase:
    """The state every part of an association shares, and who it is. See :class:`~pacskit.net.association.Association`."""

    def __init__(
        self,
        *,
        is_requestor: bool,
        local_ae_title: str,
        config: NetConfig,
        bus: ev.EventBus,
        services: Services,
        executor: Executor | None = None,
        supported: Sequence[SupportedContext] = (),
        on_associate: AssociateHook | None = None,
        acceptor: Any = None,
        require_called_ae: bool = True,
    ) -> None:
        self.is_requestor = is_requestor
        #: process-unique number of this association (log lines, transaction log, audit records)
        self.id = next(_association_ids)
        #: dataset bytes sent on this association so far (C-FIND matches, C-STORE data, responses)
        self.dataset_bytes_sent = 0
        self.local_ae_title = local_ae_title
        self.remote_ae_title = ""
        #: the caller's (host, port): the connection's peer, or the client a trusted load balancer named
        #: in its PROXY header (then ``proxy_address`` is the balancer's)
        self.peer_address: Any = None
        self.proxy_address: Any = None
        self.config = config
        self.bus = bus
        self.services = services
        self.executor = executor
        self.contexts: dict[int, PresentationContext] = {}
        self.peer_max_pdu = 0
        self.peer_implementation_class_uid = ""
        self.peer_implementation_version_name = ""
        self.requested: pdu.AssociateRQ | None = None
        self.user_identity: pdu.UserIdentityRQ | None = None
        self.user_identity_response: bytes | None = None
        self.extended_negotiation: dict[str, bytes] = {}
        self.extended_negotiation_response: dict[str, bytes] = {}
        self.common_extended_negotiation: list[pdu.CommonExtendedNegotiation] = []
        self.provider_abort_reason: tuple[str, int] | None = None
        self.reject: Reject | None = None
        self.is_established = False
        self.is_released = False
        self.is_aborted = False
        self._supported = supported
        self._on_associate = on_associate
        self._acceptor = acceptor
        self._require_called_ae = require_called_ae
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.dul = UpperLayer(cast("Association", self), config, bus)
        self.dul.is_requestor = is_requestor
        self._established: asyncio.Future[None] = loop.create_future()
        self._release_done: asyncio.Future[None] = loop.create_future()
        # receive assembly
        self._pdv_is_command = False
        self._pdv_last = False
        self._cmd_context = 0
        self._cmd_parts: list[bytes] = []
        self._cmd_len = 0
        self._msg_command: Command | None = None
        self._msg_context: PresentationContext | None = None
        self._sink: DatasetSink | None = None
        self._sink_error: BaseException | None = None
        # dispatch
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._handling = False
        self._cancels: dict[int, asyncio.Event] = {}
        # C-FIND / C-MOVE / C-GET requests received but not started: message ID -> how many. A C-CANCEL
        # for one of them (sent right behind its request) is remembered in _early_cancels until it starts.
        self._queued_ids: collections.Counter[int] = collections.Counter()
        self._early_cancels: set[int] = set()
        # the last Pending response sent: (request command, status, response command, its P-DATA pieces)
        self._pending_rsp: tuple[Command, int, Command, list[bytes]] | None = None
        self._last_command: tuple[bytes, Command] | None = None  # the last command set received, decoded
        self._foreign_reported: set[tuple[int, tuple[int, ...]]] = set()  # warned of: (field, foreign tags)
        self._waiters: dict[int, _Responses] = {}
        self._next_message_id = 0
        self._send_lock = asyncio.Lock()
        self._final_response: Response | None = None

    # ------------------------------------------------------------------ identity / helpers

    @property
    def label(self) -> str:
        """``CALLING->CALLED`` for log lines."""
        if self.is_requestor:
            return f"{self.local_ae_title}->{self.remote_ae_title}"
        return f"{self.remote_ae_title or '?'}->{self.local_ae_title}"

    @property
    def is_tls(self) -> bool:
        """The connection runs over TLS."""
        transport = self.dul.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The peer's TLS certificate as :meth:`ssl.SSLSocket.getpeercert` gives it (subject, issuer,
        validity…), or ``None`` without TLS or when the peer sent none. Only verified certificates
        are reported (the listener's context must ask for client certificates)."""
        transport = self.dul.transport
        if transport is None:
            return None
        return transport.get_extra_info("peercert") or None

    @property
    def bytes_received(self) -> int:
        """Bytes of PDUs received on this association so far."""
        return self.dul.bytes_received

    @property
    def bytes_sent(self) -> int:
        """Bytes of PDUs handed to the transport so far (corked P-DATA counts once it leaves)."""
        return self.dul.bytes_sent

    @property
    def busy(self) -> bool:
        return self._handling or bool(self._waiters) or not self._requests.empty()

    @property
    def is_open(self) -> bool:
        """Established and ready for data transfer: neither released, aborted, nor asked by either side to
        release. Only then may a new request (e.g. an SCP's N-EVENT-REPORT back to the requestor, see
        :meth:`n_request`) be sent on it."""
        return self.is_established and not (self.is_released or self.is_aborted) and self.dul.state == State.STA6

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        return [pc for pc in self.contexts.values() if pc.accepted]

    def __repr__(self) -> str:
        role = "requestor" if self.is_requestor else "acceptor"
        return f"<Association {self.label} {role} {self.dul.state.name} peer={self.peer_address}>"

    # The parts call each other through the whole association; declared here for the type checker
    # (each is defined in the module named).
    if TYPE_CHECKING:

        def _finish_release(self) -> None: ...  # negotiation

        def _max_pdv_data(self) -> int: ...  # assembly

        async def send_message(
            self,
            context_id: int,
            command: Command,
            dataset: bytes | tuple[str | os.PathLike[str], int, int] | None = None,
            *,
            command_pdus: list[bytes] | None = None,
        ) -> None: ...  # assembly

        def _message_start(self, context_id: int, command: Command, dataset_size: int,
                           command_pdus: list[bytes] | None) -> list[bytes]: ...  # assembly

        async def _send_pieces(self, pieces: list[bytes]) -> None: ...  # assembly

        async def _serve_requests(self) -> None: ...  # dispatch

        def abort(self) -> None: ...  # requestor
