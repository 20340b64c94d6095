"""DICOM Upper Layer protocol: framing, the PS3.8 state machine, ARTIM and idle timers.

:class:`UpperLayer` is an :class:`asyncio.Protocol`: the event loop calls ``data_received`` when bytes
arrive, so there is no polling thread and an idle association costs nothing. PDUs other than P-DATA-TF
are collected whole (capped by ``NetConfig.max_associate_pdu_length``) and decoded into
:mod:`pacskit.net.pdu` objects. P-DATA-TF is never collected: its PDV items are parsed as they arrive and
their payload is handed on in slices (``on_pdv_start`` / ``on_pdv_data`` / ``on_pdv_end``), which is what
lets a 2 GB dataset stream to disk through a 256 KB buffer; a PDV that is whole in one read (a command
set, a C-FIND answer, a small dataset) goes in one ``on_pdv`` call.

The service user (:class:`pacskit.net.association.Association`) sees indications and confirmations as
method calls, and asks for requests and responses through ``send_*`` methods; every one of these goes
through :func:`pacskit.net.fsm.next_action`, so a PDU that is not allowed in the current state gets the
reaction the standard prescribes (mostly A-ABORT), never an exception.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from typing import TYPE_CHECKING, Any

from pacskit.net import events as ev
from pacskit.net import pdu
from pacskit.net.errors import PduError
from pacskit.net.fsm import PDU_EVENTS, Event, State, next_action

if TYPE_CHECKING:
    from pacskit.net.association import Association
    from pacskit.net.config import NetConfig

log = logging.getLogger("pacskit.net.dul")

_MODE_HEADER = 0
_MODE_BODY = 1
_MODE_PDV_HEADER = 2
_MODE_PDV_DATA = 3
_MODE_DISCARD = 4

_PDU_HEADER = pdu.PDU_HEADER
_P_DATA_TF = pdu.P_DATA_TF
_STA6 = State.STA6
_CORK_LIMIT = 64 * 1024  # bytes of corked P-DATA that are written at once rather than at the end of the loop turn
_PDV_HEADER = pdu.PDV_HEADER

#: connections open on each event loop (from connection_made to connection_lost, either role): a
#: handler runs inline only on the loop's one connection (pacskit.net.dispatch, InlineHandler)
_open_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()


def open_connections(loop: asyncio.AbstractEventLoop) -> int:
    """How many DICOM connections (acceptor or requestor) are open on ``loop``."""
    return _open_connections.get(loop, 0)


class UpperLayer(asyncio.Protocol):
    """One transport connection and its Upper Layer state machine (either role)."""

    def __init__(self, user: Association, config: NetConfig, bus: ev.EventBus) -> None:
        self.user = user
        self.config = config
        self.bus = bus
        self.state = State.STA1
        self.transport: asyncio.Transport | None = None
        self.is_requestor = False
        self.closed = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._artim: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last_rx = time.monotonic()
        self._can_write = asyncio.Event()
        self._can_write.set()
        # receive parser state
        self._mode = _MODE_HEADER
        self._need = 6
        self._buf = bytearray()
        self._pdu_type = 0
        self._pdu_left = 0
        self._pdv_left = 0
        self._pending_rq: pdu.AssociateRQ | None = None
        self._max_p_data = config.max_pdu_length + 1024 if config.max_pdu_length else 0
        # P-DATA written during one turn of the event loop leaves in one system call (see send_p_data)
        self._corked: list[bytes] = []
        self._corked_size = 0
        self._counted = False  # in _open_connections
        #: bytes of PDUs received and sent so far (TLS records excluded): the statistics read these
        #: rather than counting PDU events, which would cost an event per PDU on every busy association
        self.bytes_received = 0
        self.bytes_sent = 0

    # ------------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self._counted:
            self._counted = True
            _open_connections[self._loop] = _open_connections.get(self._loop, 0) + 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (tests over socketpair)
                pass
        if self.user.proxy_address is None:  # else the acceptor set the address a PROXY header named
            self.user.peer_address = transport.get_extra_info("peername")
        if self.bus.wants(ev.CONNECTION_OPENED):
            self.bus.emit(ev.CONNECTION_OPENED, self.user, peer=self.user.peer_address)
        if self.is_requestor:
            self.state = State.STA4
            self._event(Event.EVT2)
        else:
            self._event(Event.EVT5)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            _open_connections[self._loop] = _open_connections.get(self._loop, 1) - 1
        self._stop_artim()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._can_write.set()
        self._corked, self._corked_size = [], 0
        self._event(Event.EVT17)
        if self.bus.wants(ev.CONNECTION_CLOSED):
            self.bus.emit(ev.CONNECTION_CLOSED, self.user, peer=self.user.peer_address)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    @property
    def can_write(self) -> bool:
        """``False`` while the transport's buffer is above its high-water mark (``drain`` would wait)."""
        return self._can_write.is_set()

    async def drain(self) -> None:
        """Wait until the transport buffer is below its high-water mark (flow control for big sends)."""
        if not self._can_write.is_set():
            await self._can_write.wait()

    # ------------------------------------------------------------------ receive path

    def data_received(self, data: bytes) -> None:  # noqa: C901 - the hot path, kept flat on purpose
        self._last_rx = time.monotonic()
        self.bytes_received += len(data)
        view = memoryview(data)
        pos, end = 0, len(data)
        user = self.user
        while pos < end:
            mode = self._mode
            if mode == _MODE_PDV_DATA:
                take = end - pos
                if take > self._pdv_left:
                    take = self._pdv_left
                self._pdv_left -= take
                self._pdu_left -= take
                try:
                    user.on_pdv_data(view[pos : pos + take])
                    pos += take
                    if self._pdv_left == 0:
                        user.on_pdv_end()
                        self._mode = _MODE_PDV_HEADER if self._pdu_left else _MODE_HEADER
                        self._need = 6
                except PduError as exc:
                    self._invalid_pdu(str(exc), exc.abort_reason)
                    return
                continue
            if mode == _MODE_DISCARD:
                return
            if not self._buf and end - pos >= 6:
                # The header is all in this read (the usual case): parsed in place, no copy.
                if mode == _MODE_HEADER:
                    pdu_type, _, length = _PDU_HEADER.unpack_from(data, pos)
                    pos += 6
                    if (pdu_type == _P_DATA_TF and self.state is _STA6 and length >= 6
                            and (not self._max_p_data or length <= self._max_p_data) and not self.bus.wants(ev.PDU_RECEIVED)):
                        # P-DATA during data transfer (two per C-FIND answer): what _on_pdu_header
                        # would decide (DT-2), without the table lookups
                        self._pdu_left = length
                        self._mode = _MODE_PDV_HEADER
                        continue
                    self._on_pdu_header(pdu_type, length)
                    continue
                if mode == _MODE_PDV_HEADER:
                    length, context_id, control = _PDV_HEADER.unpack_from(data, pos)
                    if length >= 2 and length + 4 <= self._pdu_left and end - pos >= length + 4:
                        # A whole PDV in this read (every C-FIND answer, every small dataset):
                        # handed on in one call instead of start / data / end.
                        self._pdu_left -= length + 4
                        try:
                            user.on_pdv(context_id, control, view[pos + 6 : pos + 4 + length])
                        except PduError as exc:
                            self._invalid_pdu(str(exc), exc.abort_reason)
                            return
                        pos += length + 4
                        if not self._pdu_left:
                            self._mode = _MODE_HEADER
                        continue
                    pos += 6
                    self._on_pdv_header(length, context_id, control)
                    continue
            want = self._need - len(self._buf)
            if not self._buf and end - pos >= want:
                chunk = bytes(view[pos : pos + want])
                pos += want
            else:
                take = min(want, end - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < self._need:
                    return
                chunk = bytes(self._buf)
                self._buf.clear()
            if mode == _MODE_HEADER:
                pdu_type, _, length = _PDU_HEADER.unpack(chunk)
                self._on_pdu_header(pdu_type, length)
            elif mode == _MODE_BODY:
                self._mode, self._need = _MODE_HEADER, 6
                self._on_pdu_body(self._pdu_type, chunk)
            else:
                self._on_pdv_header(*_PDV_HEADER.unpack(chunk))

    def _on_pdu_header(self, pdu_type: int, length: int) -> None:
        event = PDU_EVENTS.get(pdu_type)
        if event is None:
            self._invalid_pdu(f"unrecognized PDU type 0x{pdu_type:02X}", pdu.ABORT_REASON_UNRECOGNIZED_PDU)
            return
        if self.bus.wants(ev.PDU_RECEIVED) and pdu_type == pdu.P_DATA_TF:
            self.bus.emit(ev.PDU_RECEIVED, self.user, pdu_type=pdu_type, length=length, pdu=None)
        if pdu_type == pdu.P_DATA_TF:
            action = next_action(self.state, Event.EVT10)
            if action in ("dt_2", "ar_6"):
                if self._max_p_data and length > self._max_p_data:
                    self._invalid_pdu(
                        f"P-DATA-TF of {length} bytes exceeds our maximum PDU length {self.config.max_pdu_length}",
                        pdu.ABORT_REASON_INVALID_PARAMETER,
                    )
                    return
                if length < 6:
                    self._invalid_pdu(f"P-DATA-TF of {length} bytes holds no PDV", pdu.ABORT_REASON_INVALID_PARAMETER)
                    return
                self._pdu_left = length
                self._mode, self._need = _MODE_PDV_HEADER, 6
            else:
                # Not allowed here (e.g. before association): the table says abort; never read the body.
                self._mode = _MODE_DISCARD
                self._event(Event.EVT10)
            return
        limit = self.config.max_associate_pdu_length
        if length > limit:
            self._invalid_pdu(
                f"{pdu.PDU_NAMES[pdu_type]} claims {length} bytes, more than the {limit} allowed",
                pdu.ABORT_REASON_INVALID_PARAMETER,
            )
            return
        self._pdu_type = pdu_type
        if length == 0:
            self._on_pdu_body(pdu_type, b"")
        else:
            self._mode, self._need = _MODE_BODY, length

    def _on_pdv_header(self, length: int, context_id: int, control: int) -> None:
        if length < 2 or length + 4 > self._pdu_left:
            self._invalid_pdu(
                f"PDV item length {length} does not fit the {self._pdu_left} bytes left in its P-DATA-TF",
                pdu.ABORT_REASON_INVALID_PARAMETER,
            )
            return
        self._pdu_left -= 6
        self._pdv_left = length - 2
        try:
            self.user.on_pdv_start(context_id, control)
            if self._pdv_left == 0:
                self.user.on_pdv_end()
                self._mode = _MODE_PDV_HEADER if self._pdu_left else _MODE_HEADER
            else:
                self._mode = _MODE_PDV_DATA
        except PduError as exc:
            self._invalid_pdu(str(exc), exc.abort_reason)

    def _on_pdu_body(self, pdu_type: int, body: bytes) -> None:
        if self.bus.wants(ev.PDU_RECEIVED):
            self.bus.emit(ev.PDU_RECEIVED, self.user, pdu_type=pdu_type, length=len(body), pdu=body)
        event = PDU_EVENTS[pdu_type]
        try:
            if pdu_type == pdu.A_ASSOCIATE_RQ:
                if next_action(self.state, event) == "ae_6":
                    self._pending_rq = pdu.AssociateRQ.decode(body)
                self._event(event)
            elif pdu_type == pdu.A_ASSOCIATE_AC:
                parsed_ac = pdu.AssociateAC.decode(body) if self.state == State.STA5 else None
                self._event(event, parsed_ac)
            elif pdu_type == pdu.A_ASSOCIATE_RJ:
                self._event(event, pdu.AssociateRJ.decode(body))
            elif pdu_type == pdu.A_ABORT:
                self._event(event, pdu.Abort.decode(body) if len(body) == 4 else pdu.Abort(2, 0))
            else:  # release RQ / RP
                self._event(event)
        except PduError as exc:
            self._invalid_pdu(str(exc), exc.abort_reason)

    def _invalid_pdu(self, why: str, reason: int) -> None:
        log.warning("%s: invalid PDU from %s: %s", self.user.label, self.user.peer_address, why)
        self.user.provider_abort_reason = (why, reason)
        self._mode = _MODE_DISCARD
        self._event(Event.EVT19, reason)

    # ------------------------------------------------------------------ state machine

    def _event(self, event: Event, arg: Any = None) -> bool:
        """Run the action Table 9-10 gives for ``event``; ``False`` when it gives none (e.g. in Sta1)."""
        action = next_action(self.state, event)
        if action is None:
            if self.state != State.STA1:
                log.debug("%s: %s ignored in %s", self.user.label, event.name, self.state.name)
            self._mode = _MODE_DISCARD if self.state == State.STA1 else self._mode
            return False
        getattr(self, action)(arg)
        return True

    def _write(self, data: bytes, pdu_type: int) -> None:
        self.flush()  # P-DATA sent before this PDU goes first
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.bytes_sent += len(data)
        if self.bus.wants(ev.PDU_SENT):
            self.bus.emit(ev.PDU_SENT, self.user, pdu_type=pdu_type, length=len(data) - 6, pdu=data[6:])

    def _start_artim(self) -> None:
        self._stop_artim()
        self._artim = self._loop.call_later(self.config.artim_timeout, self._event, Event.EVT18)

    def _stop_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def _start_idle_timer(self) -> None:
        timeout = self.config.network_timeout
        if timeout:
            self._idle = self._loop.call_later(timeout, self._check_idle)

    def _check_idle(self) -> None:
        timeout = self.config.network_timeout
        assert timeout
        idle_for = time.monotonic() - self._last_rx
        if self.state not in (State.STA6, State.STA7, State.STA8):
            return
        if idle_for >= timeout and not self.user.busy:
            log.warning("%s: no traffic for %.0f s, aborting", self.user.label, idle_for)
            self.user.provider_abort_reason = (f"network timeout after {idle_for:.0f} s idle", 0)
            self.abort()
            return
        self._idle = self._loop.call_later(max(timeout - idle_for, 1.0), self._check_idle)

    # --- requests from the service user (local primitives)

    def send_associate_rq(self, rq: pdu.AssociateRQ) -> None:
        """Requestor: called before the connection exists; AE-1 happened in :func:`connect`."""
        self._pending_rq = rq
        self.is_requestor = True

    def associate_response(self, answer: pdu.AssociateAC | pdu.AssociateRJ) -> None:
        self._event(Event.EVT7 if isinstance(answer, pdu.AssociateAC) else Event.EVT8, answer)

    def send_p_data(self, data: bytes | list[bytes]) -> bool:
        """Send encoded P-DATA-TF PDU(s); ``False`` when the state no longer allows data transfer."""
        action = next_action(self.state, Event.EVT9)
        if action is None:
            return False
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        # Corked until the end of this turn of the event loop: a handler's burst of responses (a
        # page of C-FIND matches, each a few hundred bytes) then costs one send() instead of one
        # each, which was a third of the server's time on a many-match query. A big send (a file
        # being streamed) flushes at once, so the transport's flow control still sees every byte.
        corked = self._corked
        if not corked:
            self._loop.call_soon(self.flush)
        if isinstance(data, list):
            corked.extend(data)
            self._corked_size += sum(map(len, data))
        else:
            corked.append(data)
            self._corked_size += len(data)
        if self._corked_size >= _CORK_LIMIT:
            self.flush()
        if self.bus.wants(ev.PDU_SENT):
            # One event per PDU, not per buffer: a PDU is usually a header piece plus a payload piece.
            need = 0
            for piece in data if isinstance(data, list) else [data]:
                pos, size = 0, len(piece)
                while pos < size:
                    if need == 0:
                        length = int.from_bytes(piece[pos + 2 : pos + 6], "big")
                        self.bus.emit(ev.PDU_SENT, self.user, pdu_type=pdu.P_DATA_TF, length=length, pdu=None)
                        need = length + 6
                    take = min(need, size - pos)
                    need -= take
                    pos += take
        return True

    def flush(self) -> None:
        """Hand corked P-DATA to the transport now (normally done at the end of the loop turn)."""
        if not self._corked:
            return
        corked, size, self._corked, self._corked_size = self._corked, self._corked_size, [], 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(corked)
            self.bytes_sent += size

    @property
    def plain_socket(self) -> bool:
        """The transport writes to its socket as it is (no TLS layer in between)."""
        transport = self.transport
        return (transport is not None and transport.get_extra_info("ssl_object") is None
                and transport.get_extra_info("socket") is not None)

    def send_from_thread(self, data: bytes | None) -> bool:
        """Write whole P-DATA-TF PDUs to the socket from another thread, while the event loop's thread
        is held by a handler running inline (:class:`~pacskit.net.services.InlineHandler`): the
        transport is then untouched, and the bytes go out now. Only in Sta6, with nothing corked or
        buffered in the transport (else they would overtake it) and in one non-blocking write;
        otherwise, or if that write is short, the connection is shut down (the peer sees it drop)
        and ``False`` is returned (``data=None``: only that). No PDU spy event is emitted (observers
        run on the loop)."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return False
        fd = sock.fileno()
        written = 0
        if (data and self.state == _STA6 and not self._corked and transport is not None and not transport.is_closing()
                and transport.get_write_buffer_size() == 0):
            try:
                written = os.write(fd, data)
            except OSError:
                written = 0
        if data and written == len(data):
            self.bytes_sent += written
            return True
        try:
            with socket.socket(fileno=os.dup(fd)) as dup:
                dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return False

    def release_request(self) -> bool:
        return self._event(Event.EVT11)

    def release_response(self) -> bool:
        return self._event(Event.EVT14)

    def abort(self) -> None:
        """A-ABORT request from the service user; a no-op when there is nothing left to abort."""
        if self.state == State.STA13:
            return
        if self.state in (State.STA1, State.STA2, State.STA4):
            # No association to abort yet (Table 9-10 has no Evt15 in Sta2): just drop the connection.
            self._stop_artim()
            self.state = State.STA1
            self._mode = _MODE_DISCARD
            self._close_transport()
            return
        self._event(Event.EVT15)

    # --- actions (PS3.8 Table 9-6 .. 9-9). The argument is the decoded PDU or reason where relevant.

    def ae_1(self, _: Any) -> None:  # pragma: no cover - connect() opens the transport itself
        self.state = State.STA4

    def ae_2(self, _: Any) -> None:
        assert self._pending_rq is not None
        self._write(self._pending_rq.encode(), pdu.A_ASSOCIATE_RQ)
        self.state = State.STA5

    def ae_3(self, ac: pdu.AssociateAC) -> None:
        self.state = State.STA6
        self._start_idle_timer()
        self.user.on_associate_ac(ac)

    def ae_4(self, rj: pdu.AssociateRJ) -> None:
        self.state = State.STA1
        self._mode = _MODE_DISCARD
        self._close_transport()
        self.user.on_associate_rj(rj)

    def ae_5(self, _: Any) -> None:
        self.state = State.STA2
        self._start_artim()

    def ae_6(self, _: Any) -> None:
        self._stop_artim()
        rq = self._pending_rq
        self._pending_rq = None
        assert rq is not None
        self.state = State.STA3
        self.user.on_associate_rq(rq)

    def ae_7(self, ac: pdu.AssociateAC) -> None:
        self._write(ac.encode(), pdu.A_ASSOCIATE_AC)
        self.state = State.STA6
        self._start_idle_timer()

    def ae_8(self, rj: pdu.AssociateRJ) -> None:
        self._write(rj.encode(), pdu.A_ASSOCIATE_RJ)
        self.state = State.STA13
        self._start_artim()

    def dt_1(self, _: Any) -> None:  # pragma: no cover - send_p_data writes directly
        self.state = State.STA6

    def dt_2(self, _: Any) -> None:  # pragma: no cover - P-DATA is streamed in data_received
        self.state = State.STA6

    def ar_1(self, _: Any) -> None:
        self._write(pdu.RELEASE_RQ_PDU, pdu.A_RELEASE_RQ)
        self.state = State.STA7

    def ar_2(self, _: Any) -> None:
        self.state = State.STA8
        self.user.on_release_rq()

    def ar_3(self, _: Any) -> None:
        self.state = State.STA1
        self._mode = _MODE_DISCARD
        self._close_transport()
        self.user.on_release_rp()

    def ar_4(self, _: Any) -> None:
        self._write(pdu.RELEASE_RP_PDU, pdu.A_RELEASE_RP)
        self.state = State.STA13
        self._start_artim()

    def ar_5(self, _: Any) -> None:
        self._stop_artim()
        self.state = State.STA1
        self._close_transport()

    def ar_6(self, _: Any) -> None:  # pragma: no cover - P-DATA is streamed in data_received
        self.state = State.STA7

    def ar_7(self, _: Any) -> None:  # pragma: no cover - send_p_data writes directly
        self.state = State.STA8

    def ar_8(self, _: Any) -> None:
        # Release collision: both sides sent A-RELEASE-RQ.
        self.state = State.STA9 if self.is_requestor else State.STA10
        self.user.on_release_rq(collision=True)

    def ar_9(self, _: Any) -> None:
        self._write(pdu.RELEASE_RP_PDU, pdu.A_RELEASE_RP)
        self.state = State.STA11

    def ar_10(self, _: Any) -> None:
        self.state = State.STA12
        self.user.on_release_rp(collision=True)

    def aa_1(self, reason: Any) -> None:
        # Sta2 (and local aborts): A-ABORT PDU. A local abort has source service-user; a bad PDU in
        # Sta2 is a provider abort (Table 9-9 note), so reason codes go with source 2.
        if isinstance(reason, int):
            self._write(pdu.Abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, reason).encode(), pdu.A_ABORT)
        elif self.state == State.STA2:
            self._write(
                pdu.Abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, pdu.ABORT_REASON_UNEXPECTED_PDU).encode(), pdu.A_ABORT
            )
        else:
            self._write(pdu.Abort(pdu.ABORT_SOURCE_SERVICE_USER).encode(), pdu.A_ABORT)
        self.state = State.STA13
        self._mode = _MODE_DISCARD
        self._start_artim()
        self.user.on_abort(pdu.ABORT_SOURCE_SERVICE_USER, 0, local=True)

    def aa_2(self, _: Any) -> None:
        self._stop_artim()
        self.state = State.STA1
        self._close_transport()

    def aa_3(self, abort: pdu.Abort | None) -> None:
        self.state = State.STA1
        self._mode = _MODE_DISCARD
        self._close_transport()
        source, reason = (abort.source, abort.reason) if abort else (pdu.ABORT_SOURCE_SERVICE_PROVIDER, 0)
        self.user.on_abort(source, reason, local=False)

    def aa_4(self, _: Any) -> None:
        self.state = State.STA1
        self.user.on_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, 0, local=False, connection_lost=True)

    def aa_5(self, _: Any) -> None:
        self._stop_artim()
        self.state = State.STA1

    def aa_6(self, _: Any) -> None:
        self.state = State.STA13

    def aa_7(self, reason: Any) -> None:
        self._write(
            pdu.Abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, reason if isinstance(reason, int) else 2).encode(),
            pdu.A_ABORT,
        )
        self.state = State.STA13

    def aa_8(self, reason: Any) -> None:
        code = reason if isinstance(reason, int) else pdu.ABORT_REASON_UNEXPECTED_PDU
        self._write(pdu.Abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, code).encode(), pdu.A_ABORT)
        self.state = State.STA13
        self._mode = _MODE_DISCARD
        self._start_artim()
        self.user.on_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, code, local=True)
