"""DIMSE messages to and from P-DATA: command fragments collected and decoded, dataset fragments
streamed into a sink as they arrive (the receive hot path), and outgoing messages cut into PDVs no
larger than the peer takes, whole or streamed from a file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

from pacskit.dicom.part10 import iter_file_chunks
from pacskit.net import events as ev
from pacskit.net import pdu
from pacskit.net.base import CANCELLABLE, SEND_BLOCK, AssociationBase, log
from pacskit.net.dimse import Command, CommandField
from pacskit.net.errors import AssociationAborted, DimseError, PduError
from pacskit.net.presentation import PresentationContext
from pacskit.net.sinks import MemorySink, ReceivedDataset

if TYPE_CHECKING:
    from pacskit.net.association import Association


class Assembly(AssociationBase):
    """The message assembly part of :class:`~pacskit.net.association.Association`."""

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
            foreign = command.foreign_elements
            if foreign:  # be liberal (DCMTK and Orthanc answer such requests): keep, report, go on
                seen = (command.command_field, tuple(foreign))
                if seen not in self._foreign_reported:  # once per association, not per Pending answer
                    self._foreign_reported.add(seen)
                    log.warning(
                        "%s: %s command set carries elements outside group 0000 (%s), against PS3.7 6.3.1;"
                        " accepted, not used",
                        self.label,
                        _field_name(command.command_field),
                        ", ".join(f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in foreign),
                    )
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
                self._sink = self.services.open_sink(cast("Association", self), ctx, command)
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
            self.bus.emit(ev.DIMSE_RECEIVED, cast("Association", self), command=command, context_id=ctx.id, received=received)
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
            message_id = command.get("MessageIDBeingRespondedTo", -1)
            cancelled = self._cancels.get(message_id)
            if cancelled is not None:
                cancelled.set()
            elif self._queued_ids[message_id]:  # its request waits to start: honoured when it does
                self._early_cancels.add(message_id)
            else:
                log.info("%s: C-CANCEL for message ID %s, which is not outstanding; ignored", self.label, message_id)
        else:
            if field in CANCELLABLE:
                self._queued_ids[int(command.get("MessageID", 0))] += 1
            self._requests.put_nowait((ctx, command, received, error))

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
                pieces += fragments(dataset, context_id, max_data, command=False)
            await self._send_pieces(pieces)
            return
        path, offset, size = dataset
        # The file is read in blocks of whole PDVs (~256 KiB) and each block leaves in one write, with
        # the command in front of the first: with a peer's 16 KiB PDUs that is one system call per
        # 16 PDUs instead of one per PDU, and one per small instance instead of two.
        block = max_data * max(1, SEND_BLOCK // max_data)
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
            self.bus.emit(ev.DIMSE_SENT, cast("Association", self), command=command, context_id=context_id)
        self.dataset_bytes_sent += dataset_size
        if command_pdus:
            return list(command_pdus)
        return fragments(command.encode(), context_id, self._max_pdv_data(), command=True)

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


def fragments(data: bytes, context_id: int, max_data: int, *, command: bool) -> list[bytes]:
    """P-DATA-TF header + PDV pieces of one command set or dataset, each PDV at most ``max_data``."""
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


def _field_name(command_field: int) -> str:
    """``C-GET-RSP``… for log lines, or the hex value of an unknown command field."""
    try:
        return CommandField(command_field).name.replace("_", "-")
    except ValueError:
        return f"0x{command_field:04X}"
