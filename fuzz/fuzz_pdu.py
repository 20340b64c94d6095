#!/usr/bin/env python3
"""Fuzz the DICOM Upper Layer: PDU decoders and the acceptor's framing and state machine.

Each input is read two ways:

1. **Decoders**: the bytes are split into PDUs by their 6-byte headers and every body goes to its
   decoder in :mod:`pacskit.net.pdu` (A-ASSOCIATE-RQ/AC/RJ, A-ABORT); the whole input also goes to
   :meth:`pacskit.net.dimse.Command.decode`. Documented failures: :class:`PduError` and
   :class:`DimseError` (each carries the A-ABORT reason / the reason the command set is refused).
2. **Engine**: the first byte picks a chunk size (0 = all at once), the rest is fed to a fresh
   acceptor-side :class:`pacskit.net.dul.UpperLayer` (what :class:`pacskit.net.Acceptor` makes for every
   TCP connection; C-ECHO and C-STORE served) through an in-memory transport, exactly as asyncio
   would deliver it. It must answer or abort: an exception out of ``data_received``, an exception
   reported to the event loop, an error logged with a traceback by pacskit, or a connection that does
   not close within 2 s after the peer hung up is a finding (the engine "crashed or hung").

Seeds (built here): a verification association with C-ECHO and release, a C-STORE of a small
synthetic CT, an A-ABORT, an A-ASSOCIATE-AC and -RJ, a garbage prefix.

    python fuzz/fuzz_pdu.py -max_total_time=60
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import main  # noqa: E402

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS  # noqa: E402
from pacskit.net import Acceptor, NetConfig, Services, SupportedContext
from pacskit.net import pdu  # noqa: E402
from pacskit.net.dimse import CommandField, Command, request_command  # noqa: E402
from pacskit.net.errors import DimseError, PduError  # noqa: E402

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
AE = "FUZZSCP"

_DECODERS = {
    pdu.A_ASSOCIATE_RQ: pdu.AssociateRQ.decode,
    pdu.A_ASSOCIATE_AC: pdu.AssociateAC.decode,
    pdu.A_ASSOCIATE_RJ: pdu.AssociateRJ.decode,
    pdu.A_ABORT: pdu.Abort.decode,
}


def decode_all(data: bytes) -> None:
    """Split ``data`` into PDUs and decode each; only :class:`PduError` / :class:`DimseError` may escape."""
    try:
        Command.decode(data)
    except DimseError:
        pass
    pos = 0
    while pos + 6 <= len(data):
        pdu_type, _, length = pdu.PDU_HEADER.unpack_from(data, pos)
        body = data[pos + 6 : pos + 6 + length]
        pos += 6 + length
        decoder = _DECODERS.get(pdu_type)
        if decoder is None:
            continue
        try:
            decoder(body)
        except PduError:
            pass


# --------------------------------------------------------------------------- the engine


class MemoryTransport(asyncio.Transport):
    """The transport asyncio would give the protocol, without a socket: writes are kept (capped)."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.closing = False
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 11112)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False


class _Findings(logging.Handler):
    """Collects log records that carry a traceback: pacskit caught one of its own bugs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


class Engine:
    """One event loop and one :class:`Acceptor` (never listening) reused for every input."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.findings = _Findings()
        logging.getLogger("pacskit").addHandler(self.findings)
        logging.getLogger("pacskit").setLevel(logging.ERROR)
        logging.getLogger("pacskit").propagate = False
        self.temp = tempfile.mkdtemp(prefix="pacskit-fuzz-pdu-")
        services = Services()
        services.register("C-ECHO", lambda req: 0x0000)
        services.register("C-STORE", lambda req: 0x0000)
        contexts = [SupportedContext(VERIFICATION_SOP_CLASS), SupportedContext(CT_IMAGE_STORAGE, [EXPLICIT_LE, IMPLICIT_LE])]
        config = NetConfig(artim_timeout=1.0, dimse_timeout=1.0, network_timeout=2.0, handler_threads=1,
                           temp_dir=self.temp, max_dataset_size=1 << 20, max_memory_dataset=1 << 16)
        self.acceptor = Acceptor(AE, contexts, services, config=config)

    def feed(self, data: bytes) -> None:
        self.loop.run_until_complete(self._feed(data))
        problems = list(self.loop_errors)
        self.loop_errors.clear()
        if problems:
            context = problems[0]
            raise RuntimeError(f"event loop reported: {context.get('message')}") from context.get("exception")
        if self.findings.records:
            record = self.findings.records[0]
            self.findings.records.clear()
            cause = record.exc_info[1] if record.exc_info else None
            where = ""
            if cause is not None:
                import traceback

                frames = traceback.extract_tb(cause.__traceback__)
                where = f" ({type(cause).__name__}: {cause} at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            raise RuntimeError(f"pacskit logged a traceback: {record.getMessage()}{where}") from cause

    async def _feed(self, data: bytes) -> None:
        chunk = data[0] if data else 0
        stream = data[1:]
        protocol = self.acceptor._make_protocol()  # what create_server calls for each connection
        transport = MemoryTransport(protocol)
        protocol.connection_made(transport)
        step = chunk or max(len(stream), 1)
        for pos in range(0, len(stream), step):
            if transport.closing:
                break
            protocol.data_received(stream[pos : pos + step])
            await asyncio.sleep(0)
        for _ in range(5):  # let handlers answer
            await asyncio.sleep(0)
        transport.close()  # the peer hangs up
        closed = getattr(protocol, "closed", None)
        if closed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(closed), 2.0)
            except TimeoutError:
                raise RuntimeError("the association did not close within 2 s after the peer hung up") from None
        for _ in range(3):
            await asyncio.sleep(0)


_engine: Engine | None = None


def one_input(data: bytes) -> None:
    global _engine
    decode_all(data)
    if _engine is None:
        _engine = Engine()
    _engine.feed(data)


# --------------------------------------------------------------------------- seeds


def _p_data(context_id: int, control: int, payload: bytes) -> bytes:
    return pdu.p_data_header(len(payload), context_id, control) + payload


def _rq() -> bytes:
    contexts = [pdu.PresentationContextRQ(1, VERIFICATION_SOP_CLASS, [IMPLICIT_LE]),
                pdu.PresentationContextRQ(3, CT_IMAGE_STORAGE, [EXPLICIT_LE, IMPLICIT_LE])]
    info = pdu.UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3.4", implementation_version_name="FUZZ",
                               roles=[pdu.RoleSelection(CT_IMAGE_STORAGE, True, False)],
                               user_identity=pdu.UserIdentityRQ(2, True, b"user", b"secret"))
    return pdu.AssociateRQ(AE, "FUZZSCU", contexts, info).encode()


def _small_ct_dataset() -> bytes:
    """The dataset bytes of a 2x2 synthetic CT in Explicit VR Little Endian (as a C-STORE sends it)."""
    from pacskit.testing.synth import dataset_bytes, make_instance

    with tempfile.TemporaryDirectory() as folder:
        path = make_instance(Path(folder) / "ct.dcm", rows=2, cols=2, sop_uid="1.2.3.4.5.6.7",
                             transfer_syntax=EXPLICIT_LE)
        return dataset_bytes(path)


def seeds() -> list[bytes]:
    echo = request_command(CommandField.C_ECHO_RQ, 1, VERIFICATION_SOP_CLASS, has_dataset=False).encode()
    store = request_command(CommandField.C_STORE_RQ, 2, CT_IMAGE_STORAGE, has_dataset=True,
                            AffectedSOPInstanceUID="1.2.3.4.5.6.7", Priority=0).encode()
    dataset = _small_ct_dataset()
    association = _rq() + _p_data(1, 0x03, echo) + pdu.RELEASE_RQ_PDU
    store_association = _rq() + _p_data(3, 0x03, store) + _p_data(3, 0x00, dataset[:40]) + _p_data(3, 0x02, dataset[40:]) + pdu.RELEASE_RQ_PDU
    ac = pdu.AssociateAC(AE, "FUZZSCU", [pdu.PresentationContextAC(1, 0, IMPLICIT_LE), pdu.PresentationContextAC(3, 3)],
                         pdu.UserInformation(max_pdu_length=0, implementation_class_uid="1.2.3", user_identity_response=b"ok")).encode()
    return [
        b"\x00" + association,
        b"\x07" + association,
        b"\x00" + store_association,
        b"\x00" + _rq(),
        b"\x00" + _rq() + pdu.Abort(0, 0).encode(),
        b"\x00" + ac,
        b"\x00" + pdu.AssociateRJ(1, 1, 7).encode(),
        b"\x00" + struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF) + b"\x00" * 32,
        b"\x00GET / HTTP/1.1\r\n\r\n",
    ]


if __name__ == "__main__":
    main("pdu", one_input, seeds)
