"""Associations: ACSE negotiation, DIMSE message assembly and dispatch, and the requestor API.

One :class:`Association` object exists per connection, in either role. It is the DICOM "service user"
of its :class:`~pacskit.net.dul.UpperLayer`: it answers A-ASSOCIATE-RQ (acceptor), assembles DIMSE
messages from PDV fragments (streaming datasets into sinks), runs handlers for incoming requests one at a
time (asynchronous operations window 1/1) while C-CANCEL and responses keep flowing, and offers
``echo`` / ``store`` / ``find`` / ``move`` / ``get`` / N-service calls to the local application.

Life of one association (acceptor side): ``connection_made`` → ARTIM → A-ASSOCIATE-RQ → checks
(protocol version, application context, called AE, association limit, the ``on_associate`` hook) →
context negotiation → A-ASSOCIATE-AC → P-DATA: command PDVs collected, dataset PDVs streamed into a sink
→ complete message queued → request worker runs the handler → response(s) sent → A-RELEASE-RQ queued
behind running requests → A-RELEASE-RP → peer closes (or ARTIM closes) → cleanup.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import errno
import inspect
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, NamedTuple, Union


from pacskit.dicom.codec import encode_dataset
from pacskit.dicom.part10 import WHOLE_FILE_LIMIT, Part10Info, iter_file_chunks, read_part10
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import dimse, pdu
from pacskit.net import events as ev
from pacskit.net.config import NetConfig
from pacskit.net.dimse import Command, CommandField
from pacskit.net.dul import UpperLayer
from pacskit.net.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    DimseError,
    NetTimeout,
    NoAcceptableContext,
    PduError,
)
from pacskit.net.fsm import State
from pacskit.net.presentation import (
    PresentationContext,
    RequestedContext,
    SupportedContext,
    accepted_contexts,
    build_requested,
    negotiate_as_acceptor,
)
from pacskit.net.services import OperationContext, Request, Response, Services, current_operation, failure_status
from pacskit.net.sinks import DatasetSink, DatasetTooLarge, MemorySink, ReceivedDataset

if TYPE_CHECKING:
    import ssl as _ssl

    from pydicom.dataset import Dataset

log = logging.getLogger("pacskit.net")

_MULTI_RESPONSE = frozenset({"C-FIND", "C-GET", "C-MOVE"})
_SEND_BLOCK = WHOLE_FILE_LIMIT  # bytes of a streamed file read and written per step
_RELEASE = object()
_association_ids = itertools.count(1)


class _Responses:
    """The responses to one request as they arrive: what :class:`asyncio.Queue` does for one consumer
    (no task accounting, no event), a few microseconds less on every C-STORE sub-operation and on
    every C-FIND answer received."""

    __slots__ = ("_items", "_getter", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._getter: asyncio.Future[None] | None = None
        self._loop = loop

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Any:
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            self._getter = self._loop.create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return self._items.popleft()


class Reject(NamedTuple):
    """An A-ASSOCIATE-RJ decision: ``result`` 1 permanent / 2 transient, ``source`` and ``reason`` per PS3.8."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        return pdu.AssociateRJ(*self).describe()


REJECT_CALLED_AE = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 7)
REJECT_CALLING_AE = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 3)
REJECT_NO_REASON = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 1)
REJECT_APPLICATION_CONTEXT = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 2)
REJECT_PROTOCOL_VERSION = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_ACSE, 2)
REJECT_LOCAL_LIMIT = Reject(pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, 2)
REJECT_CONGESTION = Reject(pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, 1)

#: Acceptor decision hook: inspect the association (calling AE, address, user identity, proposed contexts)
#: and return a :class:`Reject` to refuse it, or ``None`` to go on. May fill
#: ``assoc.extended_negotiation_response`` and ``assoc.user_identity_response``.
AssociateHook = Callable[["Association"], Union[Reject, None, Awaitable[Union[Reject, None]]]]

DatasetSource = Union[str, os.PathLike[str], "Dataset"]


# responses that carry no Affected SOP Instance UID (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2)
_NO_INSTANCE_IN_RESPONSE = frozenset({CommandField.C_FIND_RQ, CommandField.C_MOVE_RQ, CommandField.C_GET_RQ})

class Association:
    """One DICOM association, acceptor or requestor side. Create requestors with :func:`connect`."""

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
        self.peer_address: Any = None
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
        self.dul = UpperLayer(self, config, bus)
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
        # the last Pending response sent: (request command, status, response command, its P-DATA pieces)
        self._pending_rsp: tuple[Command, int, Command, list[bytes]] | None = None
        self._last_command: tuple[bytes, Command] | None = None  # the last command set received, decoded
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

    # ------------------------------------------------------------------ ACSE, acceptor side

    def on_associate_rq(self, rq: pdu.AssociateRQ) -> None:
        self.requested = rq
        self.remote_ae_title = rq.calling_ae_title
        self.peer_max_pdu = rq.user_info.max_pdu_length or 0
        self.peer_implementation_class_uid = rq.user_info.implementation_class_uid
        self.peer_implementation_version_name = rq.user_info.implementation_version_name
        self.user_identity = rq.user_info.user_identity
        self.extended_negotiation = dict(rq.user_info.extended_negotiation)
        self.common_extended_negotiation = list(rq.user_info.common_extended_negotiation)
        if self.bus.wants(ev.ASSOCIATION_REQUESTED):
            self.bus.emit(
                ev.ASSOCIATION_REQUESTED,
                self,
                calling_ae=rq.calling_ae_title,
                called_ae=rq.called_ae_title,
                contexts=rq.contexts,
            )
        task = self._loop.create_task(self._negotiate(rq))
        task.add_done_callback(self._log_task_error)

    async def _negotiate(self, rq: pdu.AssociateRQ) -> None:
        decision = self._check_request(rq)
        if decision is None and self._on_associate is not None:
            try:
                result = self._on_associate(self)
                if inspect.isawaitable(result):
                    result = await result
                decision = result
            except Exception:
                log.exception("%s: association hook failed; rejecting", self.label)
                decision = REJECT_NO_REASON
        if self.dul.state != State.STA3:
            return  # the peer gave up (abort / closed) while we were deciding
        if decision is not None:
            self._reject(decision)
            return
        negotiation = negotiate_as_acceptor(
            rq.contexts, self._supported, rq.user_info.roles, self.config.transfer_syntax_preference
        )
        self.contexts = negotiation.contexts
        info = pdu.UserInformation(
            max_pdu_length=self.config.max_pdu_length,
            implementation_class_uid=self.config.implementation_class_uid,
            implementation_version_name=self.config.implementation_version_name,
            async_ops=(1, 1) if rq.user_info.async_ops is not None else None,
            roles=negotiation.roles,
            extended_negotiation=self.extended_negotiation_response,
        )
        ui = rq.user_info.user_identity
        if self.user_identity_response is not None:
            info.user_identity_response = self.user_identity_response
        elif ui is not None and ui.positive_response_requested and ui.type in (1, 2):
            info.user_identity_response = b""  # username types: empty server response (PS3.7 D.3.3.7.2)
        ac = pdu.AssociateAC(rq.called_ae_title, rq.calling_ae_title, negotiation.ac_items, info)
        self.dul.associate_response(ac)
        self._became_established()
        if not self.accepted_contexts:
            log.warning("%s: no acceptable presentation context among %d proposed", self.label, len(rq.contexts))
        else:
            log.info(
                "%s: association accepted from %s (%d/%d contexts)",
                self.label,
                _addr(self.peer_address),
                len(self.accepted_contexts),
                len(rq.contexts),
            )

    def _check_request(self, rq: pdu.AssociateRQ) -> Reject | None:
        if not rq.protocol_version & 1:
            return REJECT_PROTOCOL_VERSION
        if rq.application_context != pdu.APPLICATION_CONTEXT_NAME:
            return REJECT_APPLICATION_CONTEXT
        if not pdu.is_valid_ae_title(rq.called_ae_title) or (
            self._require_called_ae and rq.called_ae_title != self.local_ae_title
        ):
            return REJECT_CALLED_AE
        if not pdu.is_valid_ae_title(rq.calling_ae_title):  # empty or not ASCII: cannot be echoed in an AC
            return REJECT_CALLING_AE
        if len(rq.contexts) > self.config.max_presentation_contexts:
            return REJECT_NO_REASON
        if self._acceptor is not None and self._acceptor.count_others(self) >= self.config.max_associations:
            return REJECT_LOCAL_LIMIT
        return None

    def _reject(self, decision: Reject) -> None:
        self.reject = decision
        self.dul.associate_response(pdu.AssociateRJ(*decision))
        called = self.requested.called_ae_title if self.requested is not None else self.local_ae_title
        log.warning(
            "association from %s@%s to %s rejected (%s)",
            self.remote_ae_title or "?",
            _addr(self.peer_address),
            called,
            decision.describe(),
        )
        if self.bus.wants(ev.ASSOCIATION_REJECTED):
            self.bus.emit(
                ev.ASSOCIATION_REJECTED,
                self,
                result=decision.result,
                source=decision.source,
                reason=decision.reason,
                description=decision.describe(),
            )

    def _became_established(self) -> None:
        self.is_established = True
        self._worker = self._loop.create_task(self._serve_requests())
        if self.bus.wants(ev.ASSOCIATION_ACCEPTED):
            self.bus.emit(
                ev.ASSOCIATION_ACCEPTED,
                self,
                calling_ae=self.local_ae_title if self.is_requestor else self.remote_ae_title,
                called_ae=self.remote_ae_title if self.is_requestor else self.local_ae_title,
                contexts=self.accepted_contexts,
            )

    # ------------------------------------------------------------------ ACSE, requestor side

    def on_associate_ac(self, ac: pdu.AssociateAC) -> None:
        assert self.requested is not None
        info = ac.user_info
        self.peer_max_pdu = info.max_pdu_length or 0
        self.peer_implementation_class_uid = info.implementation_class_uid
        self.peer_implementation_version_name = info.implementation_version_name
        self.user_identity_response = info.user_identity_response
        self.extended_negotiation_response = dict(info.extended_negotiation)
        self.contexts = accepted_contexts(
            self.requested.contexts, ac.contexts, self.requested.user_info.roles, info.roles
        )
        self._became_established()
        if not self._established.done():
            self._established.set_result(None)

    def on_associate_rj(self, rj: pdu.AssociateRJ) -> None:
        self.reject = Reject(rj.result, rj.source, rj.reason)
        if not self._established.done():
            self._established.set_exception(AssociationRejected(rj.result, rj.source, rj.reason, rj.describe()))

    # ------------------------------------------------------------------ release and abort

    def on_release_rq(self, collision: bool = False) -> None:
        if collision and self.is_requestor:
            self.dul.release_response()  # Sta9 -> AR-9; the RP from the peer completes it
            return
        if collision:
            return  # acceptor side of a collision: wait for the peer's RP (AR-10)
        # Answer after every request already received has been answered (PS3.8: responses may still
        # be sent in Sta8).
        self._requests.put_nowait(_RELEASE)

    def on_release_rp(self, collision: bool = False) -> None:
        if collision:
            self.dul.release_response()  # Sta12 -> AR-4
        self._finish_release()

    def _finish_release(self) -> None:
        if self.is_released:
            return
        self.is_released = True
        self._stop_worker()
        self._fail_waiters(AssociationAborted("association released"))
        if not self._release_done.done():
            self._release_done.set_result(None)
        log.info("%s: association released", self.label)
        if self.bus.wants(ev.ASSOCIATION_RELEASED):
            self.bus.emit(ev.ASSOCIATION_RELEASED, self)

    def on_abort(self, source: int, reason: int, *, local: bool, connection_lost: bool = False) -> None:
        if self.is_aborted or self.is_released:
            return
        self.is_aborted = True
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        for cancelled in self._cancels.values():
            cancelled.set()
        if local and self.provider_abort_reason is not None:
            description = f"aborted by us: {self.provider_abort_reason[0]}"
        elif local:
            description = "aborted by the local user"
        elif connection_lost:
            description = "connection closed by the peer without release"
        else:
            description = pdu.Abort(source, reason).describe()
        error = AssociationAborted(description)
        if not self._established.done():
            self._established.set_exception(error)
            self._established.exception()  # mark retrieved: acceptors never await it (connect() still sees it)
        if not self._release_done.done():
            self._release_done.set_exception(error)
            self._release_done.exception()  # mark retrieved
        self._fail_waiters(error)
        self._stop_worker()
        if self.is_established:
            log.warning("%s: %s", self.label, description)
        else:
            log.info("%s (%s): %s", self.label, _addr(self.peer_address), description)
        if self.bus.wants(ev.ASSOCIATION_ABORTED):
            self.bus.emit(ev.ASSOCIATION_ABORTED, self, source=source, reason=reason, description=description)

    def _fail_waiters(self, error: BaseException) -> None:
        for queue in self._waiters.values():
            queue.put_nowait(error)

    def _stop_worker(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._requests.put_nowait(None)

    @staticmethod
    def _log_task_error(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("association task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ DIMSE receive (hot path)

    def on_pdv_start(self, context_id: int, control: int) -> None:
        is_command = bool(control & 1)
        self._pdv_last = bool(control & 2)
        self._pdv_is_command = is_command
        if is_command:
            self._take_command_pdv(context_id)
        else:
            self._check_dataset_pdv(context_id)

    def _take_command_pdv(self, context_id: int) -> None:
        """A command fragment may come now, on this context (PduError if not); it is noted as the
        command's context."""
        if self._msg_command is not None:
            raise PduError("command fragment received while a dataset was expected", 5)
        if self._cmd_parts and context_id != self._cmd_context:
            raise PduError("command fragments on different presentation contexts", 6)
        ctx = self.contexts.get(context_id)
        if ctx is None or not ctx.accepted:
            raise PduError(f"PDV on presentation context {context_id}, which was not accepted", 6)
        self._cmd_context = context_id

    def _check_dataset_pdv(self, context_id: int) -> None:
        ctx = self._msg_context
        if self._msg_command is None or ctx is None or ctx.id != context_id:
            raise PduError(f"dataset fragment on context {context_id} without its command", 5)

    def on_pdv_data(self, chunk: memoryview) -> None:
        if self._pdv_is_command:
            self._cmd_len += len(chunk)
            if self._cmd_len > self.config.max_command_length:
                raise PduError(f"command set larger than {self.config.max_command_length} bytes", 6)
            self._cmd_parts.append(bytes(chunk))
            return
        sink = self._sink
        if sink is not None:
            try:
                sink.write(chunk)
            except Exception as exc:  # full disk, size cap...: answer with a failure status later
                self._sink_error = exc
                self._sink = None
                sink.abort()

    def on_pdv(self, context_id: int, control: int, payload: memoryview) -> None:
        """A whole PDV: what :meth:`on_pdv_start`, :meth:`on_pdv_data` and :meth:`on_pdv_end` do, in one
        call for the common cases (the DUL calls this when the PDV arrived in one read)."""
        if control == 3 and not self._cmd_parts:  # a command set in one fragment
            self._take_command_pdv(context_id)
            if len(payload) > self.config.max_command_length:
                raise PduError(f"command set larger than {self.config.max_command_length} bytes", 6)
            self._command_complete(bytes(payload))
            return
        if control == 2:  # the last (often the only) fragment of a dataset
            self._check_dataset_pdv(context_id)
            self._pdv_is_command = False
            if payload:
                self.on_pdv_data(payload)
            self._dataset_complete()
            return
        self.on_pdv_start(context_id, control)
        if payload:
            self.on_pdv_data(payload)
        self.on_pdv_end()

    def on_pdv_end(self) -> None:
        if not self._pdv_last:
            return
        if self._pdv_is_command:
            data = b"".join(self._cmd_parts)
            self._cmd_parts = []
            self._cmd_len = 0
            self._command_complete(data)
        else:
            self._dataset_complete()

    def _command_complete(self, data: bytes) -> None:
        last = self._last_command
        if last is not None and last[0] == data:
            command = Command(last[1])  # a stream of Pending answers repeats one command set
        else:
            try:
                command = Command.decode(data)
            except DimseError as exc:
                raise PduError(f"invalid command set: {exc}", 6) from exc
            self._last_command = (data, Command(command))
        ctx = self.contexts[self._cmd_context]
        if not command.has_dataset:
            self._message_complete(ctx, command, None, None)
            return
        self._msg_command = command
        self._msg_context = ctx
        self._sink_error = None
        try:
            if command.command_field & 0x8000:
                self._sink = MemorySink(ctx.transfer_syntax, self.config.max_memory_dataset)
            else:
                self._sink = self.services.open_sink(self, ctx, command)
        except Exception as exc:
            self._sink = None
            self._sink_error = exc

    def _dataset_complete(self) -> None:
        command, ctx = self._msg_command, self._msg_context
        assert command is not None and ctx is not None
        self._msg_command = self._msg_context = None
        sink, self._sink = self._sink, None
        received: ReceivedDataset | None = None
        error = self._sink_error
        if sink is not None:
            try:
                received = sink.finish()
            except Exception as exc:
                sink.abort()
                error = exc
        self._message_complete(ctx, command, received, error)

    def _message_complete(
        self,
        ctx: PresentationContext,
        command: Command,
        received: ReceivedDataset | None,
        error: BaseException | None,
    ) -> None:
        if self.bus.wants(ev.DIMSE_RECEIVED):
            self.bus.emit(ev.DIMSE_RECEIVED, self, command=command, context_id=ctx.id, received=received)
        field = command.command_field
        if field & 0x8000:
            waiter = self._waiters.get(command.get("MessageIDBeingRespondedTo", -1))
            if waiter is None:
                log.warning("%s: response to unknown message ID %s ignored", self.label, command.get("MessageIDBeingRespondedTo"))
                if received is not None:
                    received.discard()
            else:
                waiter.put_nowait((command, received))
        elif field == CommandField.C_CANCEL_RQ:
            cancelled = self._cancels.get(command.get("MessageIDBeingRespondedTo", -1))
            if cancelled is not None:
                cancelled.set()
        else:
            self._requests.put_nowait((ctx, command, received, error))

    # ------------------------------------------------------------------ request dispatch

    async def _serve_requests(self) -> None:
        queue = self._requests
        while True:
            item = await queue.get()
            if item is None:
                # drain anything left (association ended): remove temp files
                while not queue.empty():
                    leftover = queue.get_nowait()
                    if isinstance(leftover, tuple) and leftover[2] is not None:
                        leftover[2].discard()
                return
            if item is _RELEASE:
                if self.dul.release_response():
                    self._finish_release()
                return
            ctx, command, received, error = item
            self._handling = True
            try:
                await self._handle(ctx, command, received, error)
            except AssociationAborted:
                pass
            except Exception:
                log.exception("%s: failure while answering a request", self.label)
            finally:
                self._handling = False
                if received is not None:
                    received.discard()

    async def _handle(
        self, ctx: PresentationContext, command: Command, received: ReceivedDataset | None, error: BaseException | None
    ) -> None:
        """Dispatch one request with the operation context set (log lines of the handler carry it), and
        tell ``operation-completed`` observers how it ended (only built when someone listens)."""
        try:
            service = CommandField(command.command_field).service
        except ValueError:
            service = f"0x{command.command_field:04X}"
        token = current_operation.set(
            OperationContext(self.id, self.remote_ae_title, self.local_ae_title, _addr(self.peer_address), service,
                             int(command.get("MessageID", 0)))
        )
        self._final_response = None
        started_wall = time.time()
        started = time.monotonic()
        sent_before = self.dataset_bytes_sent
        try:
            await self._dispatch(ctx, command, received, error)
        finally:
            current_operation.reset(token)
            if self.bus.wants(ev.OPERATION_COMPLETED):
                final = self._final_response
                self.bus.emit(
                    ev.OPERATION_COMPLETED,
                    self,
                    service=service,
                    command=command,
                    abstract_syntax=ctx.abstract_syntax,
                    transfer_syntax=ctx.transfer_syntax,
                    status=final.status if final is not None else None,
                    final_elements=dict(final.elements) if final is not None else {},
                    started=started_wall,
                    duration=time.monotonic() - started,
                    bytes_received=received.size if received is not None else 0,
                    bytes_sent=self.dataset_bytes_sent - sent_before,
                    identifier=received.data if received is not None else None,
                )

    async def _dispatch(
        self, ctx: PresentationContext, command: Command, received: ReceivedDataset | None, error: BaseException | None
    ) -> None:
        field = command.command_field
        try:
            service = CommandField(field).service
        except ValueError:
            log.warning("%s: unknown command field 0x%04X", self.label, field)
            await self._respond(ctx, command, Response(0x0211, elements={"ErrorComment": "unrecognized operation"}))
            return
        if error is not None:
            status = 0xA700 if _is_resource_error(error) else failure_status(service)
            log.error("%s: %s %s could not be received: %s", self.label, service, command.get("AffectedSOPInstanceUID", ""), error)
            await self._respond(ctx, command, Response(status, elements={"ErrorComment": _comment(error)}))
            return
        entry = self.services.lookup(service, ctx.abstract_syntax)
        if entry is None or (service.startswith("C-") and not ctx.as_scp):
            log.warning("%s: no handler for %s on %s", self.label, service, ctx)
            await self._respond(ctx, command, Response(0x0211, elements={"ErrorComment": f"{service} not served here"}))
            return
        handler, timeout = entry
        cancelled = asyncio.Event()
        message_id = int(command.get("MessageID", 0))
        request = Request(self, ctx, command, received, cancelled)
        authorizer = self.services.authorizer
        if authorizer is not None:
            try:
                refusal = authorizer(request)
            except Exception:
                log.exception("%s: request authorizer failed; refusing %s", self.label, service)
                refusal = Response(failure_status(service), elements={"ErrorComment": "authorization failed"})
            if refusal is not None:
                await self._respond(ctx, command, refusal)
                return
        if service in _MULTI_RESPONSE:
            self._cancels[message_id] = cancelled
        try:
            result = await self._call(handler, request, timeout)
            await self._send_results(request, result, timeout, service)
        except TimeoutError:
            log.error("%s: %s handler %r did not answer within %s s", self.label, service, handler, timeout)
            await self._respond(
                ctx, command, Response(failure_status(service), elements={"ErrorComment": f"processing timed out after {timeout} s"})
            )
        except AssociationAborted:
            raise
        except Exception as exc:
            log.exception("%s: %s handler failed", self.label, service)
            await self._respond(ctx, command, Response(failure_status(service), elements={"ErrorComment": _comment(exc)}))
        finally:
            self._cancels.pop(message_id, None)

    async def _call(self, handler: Callable[[Request], Any], request: Request, timeout: float | None) -> Any:
        if inspect.iscoroutinefunction(handler):
            coro = handler(request)
            return await (asyncio.wait_for(coro, timeout) if timeout else coro)
        if inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
            return handler(request)
        # the handler's thread sees the operation context (contextvars do not cross run_in_executor)
        future = self._loop.run_in_executor(self.executor, contextvars.copy_context().run, handler, request)
        result = await (asyncio.wait_for(future, timeout) if timeout else future)
        if inspect.isawaitable(result):
            result = await (asyncio.wait_for(result, timeout) if timeout else result)
        return result

    async def _send_results(self, request: Request, result: Any, timeout: float | None, service: str) -> None:
        ctx, command = request.context, request.command
        if isinstance(result, (int, Response)):
            await self._respond(ctx, command, result if isinstance(result, Response) else Response(int(result)))
            return
        if result is None:
            raise DimseError("handler returned no status")
        if hasattr(result, "__anext__"):
            aiter: AsyncIterator[Any] = result
            # One timeout scope for the whole stream (asyncio.wait_for per item would create a task
            # per response, most of the cost of a many-match C-FIND). Its deadline moves forward at
            # most once a second, so a handler gets between timeout - 1 and timeout seconds for each
            # item; it is disarmed while a slow peer holds up sending (that is not the handler's time).
            async with asyncio.timeout(None) as scope:
                while True:
                    if timeout:
                        deadline = self._loop.time() + timeout
                        when = scope.when()
                        if when is None or deadline - when > 1.0:
                            scope.reschedule(deadline)
                    try:
                        item = await aiter.__anext__()
                    except StopAsyncIteration:
                        break
                    if timeout and not self.dul.can_write:
                        scope.reschedule(None)
                    if await self._send_item(request, item):
                        await aiter.aclose() if hasattr(aiter, "aclose") else None
                        return
        elif hasattr(result, "__next__"):
            sentinel = object()
            step_context = contextvars.copy_context()
            while True:
                future = self._loop.run_in_executor(self.executor, step_context.run, next, result, sentinel)  # type: ignore[arg-type]
                item = await (asyncio.wait_for(future, timeout) if timeout else future)
                if item is sentinel:
                    break
                if await self._send_item(request, item):
                    if hasattr(result, "close"):
                        result.close()
                    return
        else:
            raise DimseError(f"handler returned {type(result).__name__}, not a status, Response or iterator")
        final = 0xFE00 if request.cancelled.is_set() and service in _MULTI_RESPONSE else 0x0000
        await self._respond(ctx, command, Response(final))

    async def _send_item(self, request: Request, item: Any) -> bool:
        """Send one yielded response, or a list of them; ``True`` when one was final (not Pending)."""
        if type(item) is list:
            return await self._send_many(request, item)
        response = item if isinstance(item, Response) else Response(int(item))
        await self._respond(request.context, request.command, response)
        return response.status not in (0xFF00, 0xFF01)

    async def _send_many(self, request: Request, items: list[Any]) -> bool:
        """Responses yielded as one list (a page of C-FIND matches): the Pending ones with encoded
        datasets leave in one write, without a coroutine per answer; anything else is sent the usual
        way, in order. Items after a final response are ignored."""
        ctx, command = request.context, request.command
        max_data = self._max_pdv_data()
        pieces: list[bytes] = []
        for n, item in enumerate(items):
            response = item if isinstance(item, Response) else Response(int(item))
            data = response.dataset
            status = response.status
            if (status == 0xFF00 or status == 0xFF01) and type(data) is bytes and not response.elements:
                cmd, cmd_pdus = self._pending_command(ctx, command, status)
                pieces += self._message_start(ctx.id, cmd, len(data), cmd_pdus)
                pieces += _fragments(data, ctx.id, max_data, command=False)
                continue
            if pieces:
                await self._send_pieces(pieces)
                pieces = []
            await self._respond(ctx, command, response)
            if status not in (0xFF00, 0xFF01):
                if n + 1 < len(items):
                    log.warning("%s: %d responses after a final one ignored", self.label, len(items) - n - 1)
                return True
        if pieces:
            await self._send_pieces(pieces)
        return False

    def _pending_command(self, ctx: PresentationContext, request: Command, status: int) -> tuple[Command, list[bytes]]:
        """The Pending response command of ``request`` and its P-DATA pieces, built once per request:
        a stream of Pending answers (C-FIND matches) repeats one command set."""
        cached = self._pending_rsp
        if cached is None or cached[0] is not request or cached[1] != status:
            cmd = dimse.response_command(request, status, has_dataset=True)
            if request.command_field in _NO_INSTANCE_IN_RESPONSE:
                cmd.pop("AffectedSOPInstanceUID", None)
            pdus = _fragments(cmd.encode(), ctx.id, self._max_pdv_data(), command=True)
            cached = self._pending_rsp = (request, status, cmd, pdus)
        return cached[2], cached[3]

    async def _respond(self, ctx: PresentationContext, request: Command, response: Response) -> None:
        data: bytes | None = None
        if response.dataset is not None:
            data = response.dataset if isinstance(response.dataset, bytes) else encode_dataset(response.dataset, ctx.transfer_syntax)
        status = response.status
        if (status == 0xFF00 or status == 0xFF01) and data is not None and not response.elements:
            cmd, pdus = self._pending_command(ctx, request, status)
            await self.send_message(ctx.id, cmd, data, command_pdus=pdus)
            return
        elements = dict(response.elements)
        if "ErrorComment" in elements and elements["ErrorComment"]:
            elements["ErrorComment"] = str(elements["ErrorComment"])[:64]
        cmd = dimse.response_command(request, response.status, has_dataset=data is not None, **elements)
        if response.status not in (0xFF00, 0xFF01):
            self._final_response = response
        if request.command_field in _NO_INSTANCE_IN_RESPONSE:
            cmd.pop("AffectedSOPInstanceUID", None)
        await self.send_message(ctx.id, cmd, data)
        if response.status not in (0xFF00, 0xFF01):
            self.dul.flush()  # a final answer: the peer waits for it, nothing more will be gathered

    # ------------------------------------------------------------------ DIMSE send

    def _max_pdv_data(self) -> int:
        return self.peer_max_pdu - 6 if self.peer_max_pdu else self.config.unlimited_pdu_send_size

    async def send_message(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | tuple[str | os.PathLike[str], int, int] | None = None,
        *,
        command_pdus: list[bytes] | None = None,
    ) -> None:
        """Send one DIMSE message. ``dataset`` is encoded bytes, or ``(path, offset, size)`` to stream a
        file from ``offset`` in PDU-sized pieces (never loading it whole). ``command_pdus`` is
        ``command`` already encoded into its P-DATA pieces (header, fragment…) for this context, when
        the caller sends the same one many times. Raises
        :class:`AssociationAborted` when the association can no longer carry data."""
        size = 0 if dataset is None else len(dataset) if isinstance(dataset, bytes) else dataset[2]
        pieces = self._message_start(context_id, command, size, command_pdus)
        max_data = self._max_pdv_data()
        if dataset is None or isinstance(dataset, bytes):
            if dataset is not None:
                pieces += _fragments(dataset, context_id, max_data, command=False)
            await self._send_pieces(pieces)
            return
        path, offset, size = dataset
        # The file is read in blocks of whole PDVs (~256 KiB) and each block leaves in one write, with
        # the command in front of the first: with a peer's 16 KiB PDUs that is one system call per
        # 16 PDUs instead of one per PDU, and one per small instance instead of two.
        block = max_data * max(1, _SEND_BLOCK // max_data)
        async with self._send_lock:
            remaining = size
            if remaining == 0:
                self._send_now(pieces + [pdu.p_data_header(0, context_id, 0x02)])
                return
            for chunk in iter_file_chunks(path, offset, min(block, size)):
                chunk = chunk[:remaining]
                view = memoryview(chunk)
                for start in range(0, len(chunk), max_data):
                    part = view[start : start + max_data]
                    remaining -= len(part)
                    pieces.append(pdu.p_data_header(len(part), context_id, 0x00 if remaining > 0 else 0x02))
                    pieces.append(part)  # type: ignore[arg-type]
                self._send_now(pieces)
                pieces = []
                await self.dul.drain()
                if remaining <= 0:
                    break
            if remaining > 0:
                self.abort()
                raise AssociationAborted(f"{path} shrank while being sent")

    def _message_start(self, context_id: int, command: Command, dataset_size: int,
                       command_pdus: list[bytes] | None) -> list[bytes]:
        """What every message sent begins with: the dimse-sent spy event, the dataset byte count, and
        the command's P-DATA pieces (``command_pdus`` when already made)."""
        if self.bus.wants(ev.DIMSE_SENT):
            self.bus.emit(ev.DIMSE_SENT, self, command=command, context_id=context_id)
        self.dataset_bytes_sent += dataset_size
        if command_pdus:
            return list(command_pdus)
        return _fragments(command.encode(), context_id, self._max_pdv_data(), command=True)

    async def _send_pieces(self, pieces: list[bytes]) -> None:
        """Whole messages' P-DATA pieces, in one write unless a streamed file holds the send lock."""
        if self._send_lock.locked():
            async with self._send_lock:
                self._send_now(pieces)
        else:
            self._send_now(pieces)
        await self.dul.drain()

    def _send_now(self, pieces: list[bytes]) -> None:
        if not self.dul.send_p_data(pieces):
            raise AssociationAborted("association is no longer established")

    # ------------------------------------------------------------------ requestor API

    def _new_message_id(self) -> int:
        self._next_message_id = self._next_message_id % 0xFFFF + 1
        return self._next_message_id

    def find_context(self, abstract_syntax: str, transfer_syntax: str | None = None, *, as_scu: bool = True) -> PresentationContext:
        """An accepted context for ``abstract_syntax`` (and ``transfer_syntax`` if given) where we may act
        as SCU (``as_scu``) or SCP; raises :class:`NoAcceptableContext`."""
        for pc in self.contexts.values():
            if (
                pc.accepted
                and pc.abstract_syntax == abstract_syntax
                and (transfer_syntax is None or pc.transfer_syntax == transfer_syntax)
                and (pc.as_scu if as_scu else pc.as_scp)
            ):
                return pc
        wanted = f"{abstract_syntax}" + (f" in {transfer_syntax}" if transfer_syntax else "")
        raise NoAcceptableContext(f"no accepted presentation context for {wanted}")

    async def request(
        self,
        command_field: CommandField,
        sop_class_uid: str,
        dataset: bytes | tuple[str | os.PathLike[str], int, int] | Dataset | None = None,
        *,
        context: PresentationContext | None = None,
        **elements: Any,
    ) -> AsyncIterator[tuple[Command, ReceivedDataset | None]]:
        """Send one request and yield its responses until the final one (the generic DIMSE call).

        Pending responses are yielded as they come; the iterator ends after the first non-Pending status.
        Raises :class:`NetTimeout` when a response takes longer than ``dimse_timeout``.
        """
        ctx = context or self.find_context(sop_class_uid)
        message_id = self._new_message_id()
        data: Any = dataset
        if dataset is not None and not isinstance(dataset, (bytes, tuple)):
            data = encode_dataset(dataset, ctx.transfer_syntax)
        command = dimse.request_command(command_field, message_id, sop_class_uid, has_dataset=data is not None, **elements)
        queue = _Responses(self._loop)
        self._waiters[message_id] = queue
        try:
            await self.send_message(ctx.id, command, data)
            self.dul.flush()  # nothing to gather before the answer comes: leave now, not next loop turn
            timeout = self.config.dimse_timeout
            while True:
                if not queue.empty():  # responses that arrived together: no timer, no task
                    item = queue.get_nowait()
                else:
                    try:
                        async with asyncio.timeout(timeout or None):
                            item = await queue.get()
                    except TimeoutError:
                        raise NetTimeout(f"no DIMSE response within {timeout} s") from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item[0].status not in (0xFF00, 0xFF01):
                    return
        finally:
            self._waiters.pop(message_id, None)

    async def _single(self, command_field: CommandField, sop_class_uid: str, dataset: Any = None, **kw: Any) -> tuple[Command, ReceivedDataset | None]:
        last: tuple[Command, ReceivedDataset | None] | None = None
        async for last in self.request(command_field, sop_class_uid, dataset, **kw):
            pass
        assert last is not None
        return last

    async def echo(self) -> int:
        """C-ECHO; returns the status (0x0000 on success)."""
        rsp, _ = await self._single(CommandField.C_ECHO_RQ, VERIFICATION_SOP_CLASS)
        return rsp.status

    async def store(
        self,
        source: DatasetSource,
        *,
        priority: int = dimse.PRIORITY_MEDIUM,
        move_originator: tuple[str, int] | None = None,
        preread: tuple[Part10Info, bytes] | None = None,
    ) -> Command:
        """C-STORE a Part 10 file (streamed from disk in PDU-sized pieces) or a pydicom Dataset.

        The file is sent as stored: an accepted context must have its SOP class and transfer syntax
        (conversion belongs to the client framework). ``preread`` is what
        :func:`~pacskit.dicom.part10.read_part10` returned for this file with its dataset (a caller that
        read it while the previous C-STORE was in flight). Returns the C-STORE-RSP command set.
        """
        extra: dict[str, Any] = {"Priority": priority}
        if move_originator is not None:
            extra["MoveOriginatorApplicationEntityTitle"] = move_originator[0]
            extra["MoveOriginatorMessageID"] = move_originator[1]
        if isinstance(source, (str, os.PathLike)):
            # a small file is read whole, once; a bigger one is streamed from disk in blocks
            info, whole = preread if preread is not None else read_part10(source, whole_below=WHOLE_FILE_LIMIT)
            ctx = self.find_context(info.sop_class_uid, info.transfer_syntax)
            data: Any = whole if whole is not None else (source, info.dataset_offset, info.file_size - info.dataset_offset)
            sop_class, sop_instance = info.sop_class_uid, info.sop_instance_uid
        else:
            sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
            ctx = self.find_context(sop_class)
            data = encode_dataset(source, ctx.transfer_syntax)
        rsp, _ = await self._single(
            CommandField.C_STORE_RQ, sop_class, data, context=ctx, AffectedSOPInstanceUID=sop_instance, **extra
        )
        return rsp

    async def find(self, sop_class_uid: str, identifier: Dataset, *, priority: int = 0) -> AsyncIterator[tuple[int, Dataset | None]]:
        """C-FIND: yields ``(status, identifier)`` for each response, ending with the final status."""
        async for rsp, received in self.request(CommandField.C_FIND_RQ, sop_class_uid, identifier, Priority=priority):
            yield rsp.status, received.decode() if received is not None else None

    async def move(self, sop_class_uid: str, identifier: Dataset, destination: str, *, priority: int = 0) -> AsyncIterator[Command]:
        """C-MOVE to ``destination``: yields each response command set (sub-operation counts, status)."""
        async for rsp, received in self.request(
            CommandField.C_MOVE_RQ, sop_class_uid, identifier, Priority=priority, MoveDestination=destination
        ):
            if received is not None:
                received.discard()
            yield rsp

    async def get(self, sop_class_uid: str, identifier: Dataset, *, priority: int = 0) -> AsyncIterator[Command]:
        """C-GET: the C-STORE sub-operations arrive on this association and go to this association's
        ``services`` ("C-STORE" handler); yields each C-GET response command set."""
        async for rsp, received in self.request(CommandField.C_GET_RQ, sop_class_uid, identifier, Priority=priority):
            if received is not None:
                received.discard()
            yield rsp

    async def cancel(self, message_id: int, context: PresentationContext) -> None:
        """Send C-CANCEL for an outstanding C-FIND / C-MOVE / C-GET."""
        cmd = Command({"CommandField": int(CommandField.C_CANCEL_RQ), "MessageIDBeingRespondedTo": message_id, "CommandDataSetType": dimse.NO_DATASET})
        await self.send_message(context.id, cmd)

    @property
    def last_message_id(self) -> int:
        """The message ID of the most recent request (for :meth:`cancel`)."""
        return self._next_message_id

    async def n_request(
        self,
        command_field: CommandField,
        sop_class_uid: str,
        dataset: Dataset | bytes | None = None,
        *,
        context: PresentationContext | None = None,
        **elements: Any,
    ) -> tuple[Command, Dataset | None]:
        """Any DIMSE-N request (N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE); returns the
        response command set and its decoded dataset. Pass ``AffectedSOPInstanceUID`` /
        ``RequestedSOPInstanceUID``, ``EventTypeID``, ``ActionTypeID``, ``AttributeIdentifierList`` as
        keyword arguments.

        ``context``: the presentation context to send on. By default, an accepted context for
        ``sop_class_uid`` on which this side may act as SCU. An SCP that sends a request back to its
        requestor on the association the requestor opened — a storage commitment SCP's N-EVENT-REPORT
        (PS3.4 J.3.3), which needs no role negotiation — passes the context the original request
        arrived on (``request.context``). This works on both sides of an association: responses are
        matched by message ID, and requests the peer sends meanwhile are still served. Check
        :attr:`is_open` first: after the peer asked for release, nothing new may be sent."""
        rsp, received = await self._single(command_field, sop_class_uid, dataset, context=context, **elements)
        return rsp, received.decode() if received is not None else None

    async def release(self) -> None:
        """A-RELEASE; waits for A-RELEASE-RP (``acse_timeout``), aborting if it does not come."""
        if self.is_released or self.is_aborted or not self.is_established:
            return
        if not self.dul.release_request():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._release_done), self.config.acse_timeout)
        except TimeoutError:
            self.abort()
            raise NetTimeout(f"no A-RELEASE-RP within {self.config.acse_timeout} s; aborted") from None
        except AssociationAborted:
            pass
        await self._wait_closed(self.config.artim_timeout)

    def abort(self) -> None:
        """A-ABORT (service-user source). Safe to call at any time."""
        self.dul.abort()

    async def _wait_closed(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.dul.closed), timeout)
        except TimeoutError:
            if self.dul.transport is not None:
                self.dul.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.dul.closed)

    async def __aenter__(self) -> Association:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None or not issubclass(exc_type, BaseException) or exc_type is GeneratorExit:
            await self.release()
        else:
            self.abort()
            await self._wait_closed(2.0)


def _fragments(data: bytes, context_id: int, max_data: int, *, command: bool) -> list[bytes]:
    base = 0x01 if command else 0x00
    n = len(data)
    if n <= max_data:
        return [pdu.p_data_header(n, context_id, base | 0x02), data]
    pieces: list[bytes] = []
    view = memoryview(data)
    for start in range(0, n, max_data):
        chunk = view[start : start + max_data]
        last = start + max_data >= n
        pieces.append(pdu.p_data_header(len(chunk), context_id, base | (0x02 if last else 0)))
        pieces.append(bytes(chunk))
    return pieces


def _is_resource_error(exc: BaseException) -> bool:
    if isinstance(exc, DatasetTooLarge):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE)


def _comment(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.encode("ascii", "replace").decode("ascii")[:64]


def _addr(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def connect(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "PACSKIT",
    contexts: Sequence[RequestedContext],
    config: NetConfig | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    services: Services | None = None,
    bus: ev.EventBus | None = None,
    user_identity: pdu.UserIdentityRQ | None = None,
    extended_negotiation: dict[str, bytes] | None = None,
    common_extended_negotiation: Sequence[pdu.CommonExtendedNegotiation] = (),
    async_ops: tuple[int, int] | None = None,
    executor: Executor | None = None,
) -> Association:
    """Open an association as requestor and return it once accepted.

    Raises :class:`ConnectionFailed` (refused, unreachable, TLS failure), :class:`AssociationRejected`
    (with the peer's result/source/reason), :class:`AssociationAborted`, or :class:`NetTimeout`
    (``acse_timeout``). Use as ``async with await connect(...) as assoc:`` to release on exit.
    ``services`` answers requests the peer sends us on this association (C-GET's C-STOREs,
    N-EVENT-REPORTs).
    """
    config = config or NetConfig()
    assoc = Association(
        is_requestor=True,
        local_ae_title=calling_ae,
        config=config,
        bus=bus or ev.EventBus(),
        services=services or Services(),
        executor=executor,
    )
    assoc.remote_ae_title = called_ae
    items, roles = build_requested(contexts)
    rq = pdu.AssociateRQ(
        called_ae,
        calling_ae,
        items,
        pdu.UserInformation(
            max_pdu_length=config.max_pdu_length,
            implementation_class_uid=config.implementation_class_uid,
            implementation_version_name=config.implementation_version_name,
            async_ops=async_ops,
            roles=roles,
            extended_negotiation=dict(extended_negotiation or {}),
            common_extended_negotiation=list(common_extended_negotiation),
            user_identity=user_identity,
        ),
    )
    assoc.requested = rq
    assoc.dul.send_associate_rq(rq)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: assoc.dul, host, port, ssl=ssl, server_hostname=server_hostname if ssl else None),
            config.acse_timeout,
        )
    except TimeoutError:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: timed out after {config.acse_timeout} s") from None
    except ConnectionRefusedError as exc:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: connection refused") from exc
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    try:
        await asyncio.wait_for(asyncio.shield(assoc._established), config.acse_timeout)
    except TimeoutError:
        assoc.abort()
        raise NetTimeout(f"no answer to A-ASSOCIATE-RQ from {host}:{port} within {config.acse_timeout} s") from None
    except AssociationRejected:
        await assoc._wait_closed(1.0)
        raise
    return assoc


__all__ = [
    "Association",
    "AssociateHook",
    "Reject",
    "connect",
    "REJECT_CALLED_AE",
    "REJECT_CALLING_AE",
    "REJECT_NO_REASON",
    "REJECT_LOCAL_LIMIT",
    "REJECT_CONGESTION",
    "REJECT_PROTOCOL_VERSION",
    "REJECT_APPLICATION_CONTEXT",
]
