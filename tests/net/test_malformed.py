"""Malformed and unexpected PDUs from a raw socket: the acceptor answers with A-ABORT (or closes), never
crashes, never allocates what a length field claims, and keeps serving (a DCMTK echoscu succeeds after)."""

from __future__ import annotations

import asyncio
import struct
import time
import tracemalloc

import pytest

from pacskit.net import NetConfig
from pacskit.net import pdu

from ._util import AE, LOCALHOST, StoreLog, associate_rq, dcmtk, p_data, proc_status, run_tool, serving, wait_until

pytestmark = pytest.mark.dcmtk  # a DCMTK echoscu checks the acceptor after every case

ABORT_PROVIDER = bytes((0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02))


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def rq_with_overflowing_item() -> bytes:
    data = bytearray(associate_rq())
    # the first item after the 68-byte fixed part (application context, type 0x10) claims 60,000 bytes
    assert data[6 + 68] == 0x10
    data[6 + 70 : 6 + 72] = struct.pack(">H", 60_000)
    return bytes(data)


def rq_with_overflowing_user_info_subitem() -> bytes:
    data = bytearray(associate_rq())
    at = data.index(b"\x51\x00\x00\x04")  # maximum length sub-item
    data[at + 2 : at + 4] = struct.pack(">H", 0x0400)
    return bytes(data)


def rq_context_with_bad_subitem() -> bytes:
    data = bytearray(associate_rq())
    at = data.index(b"\x30\x00")  # abstract syntax sub-item -> unknown sub-item type
    data[at] = 0x77
    return bytes(data)


# (payload sent at once, expected A-ABORT reason; None = the acceptor just closes)
CASES = {
    "unknown-pdu-type": (header(0x09, 4) + bytes(4), pdu.ABORT_REASON_UNRECOGNIZED_PDU),
    "garbage-http": (b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n", pdu.ABORT_REASON_UNRECOGNIZED_PDU),
    "p-data-before-association": (p_data(1, 0x03, b"\x00" * 16), pdu.ABORT_REASON_UNEXPECTED_PDU),
    "p-data-absurd-length-before-association": (header(pdu.P_DATA_TF, 0xFFFFFFFF) + b"\x00" * 4096, pdu.ABORT_REASON_UNEXPECTED_PDU),
    "associate-rq-absurd-length": (header(pdu.A_ASSOCIATE_RQ, 0xFFFFFFF0) + b"\x00" * 4096, pdu.ABORT_REASON_INVALID_PARAMETER),
    "associate-rq-shorter-than-fixed-part": (header(pdu.A_ASSOCIATE_RQ, 20) + b"\x00\x01" + b"\x00" * 18, pdu.ABORT_REASON_INVALID_PARAMETER),
    "associate-rq-item-overflows": (rq_with_overflowing_item(), pdu.ABORT_REASON_INVALID_PARAMETER),
    "associate-rq-subitem-overflows": (rq_with_overflowing_user_info_subitem(), pdu.ABORT_REASON_INVALID_PARAMETER),
    "associate-rq-unexpected-subitem": (rq_context_with_bad_subitem(), pdu.ABORT_REASON_UNEXPECTED_PARAMETER),
    "release-rq-before-association": (pdu.RELEASE_RQ_PDU, pdu.ABORT_REASON_UNEXPECTED_PDU),
    "associate-ac-to-an-acceptor": (header(pdu.A_ASSOCIATE_AC, 4) + bytes(4), pdu.ABORT_REASON_UNEXPECTED_PDU),
}


async def _echo_ok(port: int) -> tuple[bool, str]:
    rc, out = await run_tool(dcmtk("echoscu"), "-v", "-aec", AE, LOCALHOST, str(port))
    return rc == 0 and "Received Echo Response (Success)" in out, out


async def _send_and_read(port: int, payload: bytes) -> bytes:
    """Send ``payload``, then read what comes back until the acceptor closes (bounded by its ARTIM)."""
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        received = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            if len(received) >= 10:
                break  # got the A-ABORT; we close our side now, as a well-behaved peer does
        return received
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_pdu_gets_abort(case):
    payload, reason = CASES[case]

    async def main():
        log = StoreLog()
        async with serving(log.services(), config=NetConfig(artim_timeout=3)) as acceptor:
            rss_before = proc_status()["VmRSS"]
            tracemalloc.start()
            try:
                answer = await _send_and_read(acceptor.port, payload)
                gone = await wait_until(lambda: not acceptor.associations, 15)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            rss_after = proc_status()["VmRSS"]
            ok, out = await _echo_ok(acceptor.port)
        return answer, gone, peak, rss_after - rss_before, ok, out

    answer, gone, peak, rss_growth, echo_ok, out = asyncio.run(main())
    assert answer == ABORT_PROVIDER + bytes((reason,)), answer[:32]
    assert gone, "the connection was not cleaned up"
    assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated while handling {case}"
    assert rss_growth < 32 * 1024 * 1024
    assert echo_ok, out


def test_truncated_associate_rq_then_close():
    """Header claims 200 bytes, 50 arrive, then the peer closes: the acceptor cleans up quietly."""

    async def main():
        log = StoreLog()
        async with serving(log.services(), config=NetConfig(artim_timeout=30)) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            writer.write(header(pdu.A_ASSOCIATE_RQ, 200) + associate_rq()[6:56])
            await writer.drain()
            assert await wait_until(lambda: len(acceptor.associations) == 1, 10)
            writer.close()
            await writer.wait_closed()
            gone = await wait_until(lambda: not acceptor.associations, 10)
            ok, out = await _echo_ok(acceptor.port)
        return gone, ok, out

    gone, ok, out = asyncio.run(main())
    assert gone
    assert ok, out


def test_truncated_associate_rq_then_silence_closed_by_artim():
    """Header claims 200 bytes, 50 arrive, then nothing: the ARTIM timer closes the connection."""

    async def main():
        log = StoreLog()
        async with serving(log.services(), config=NetConfig(artim_timeout=0.5)) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            writer.write(header(pdu.A_ASSOCIATE_RQ, 200) + associate_rq()[6:56])
            await writer.drain()
            started = time.monotonic()
            try:
                rest = await asyncio.wait_for(reader.read(), 20)  # EOF when the acceptor closes
            except ConnectionResetError:
                rest = b""
            waited = time.monotonic() - started
            writer.close()
            gone = await wait_until(lambda: not acceptor.associations, 10)
            ok, out = await _echo_ok(acceptor.port)
        return rest, waited, gone, ok, out

    rest, waited, gone, ok, out = asyncio.run(main())
    assert rest == b""  # ARTIM in Sta2 just closes (AA-2), nothing is sent
    assert waited >= 0.4  # not before the ARTIM timer (the upper bound is the 20 s read timeout)
    assert gone
    assert ok, out


def test_absurd_p_data_length_during_association():
    """After association, a P-DATA-TF claiming 4 GB (more than our maximum PDU) is aborted at the header."""

    async def main():
        log = StoreLog()
        async with serving(log.services(), config=NetConfig(artim_timeout=3)) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            writer.write(associate_rq())
            head = await reader.readexactly(6)
            await reader.readexactly(int.from_bytes(head[2:], "big"))
            assert head[0] == pdu.A_ASSOCIATE_AC
            tracemalloc.start()
            try:
                writer.write(header(pdu.P_DATA_TF, 0xFFFFFFFF) + b"\x00" * 65536)
                await writer.drain()
                answer = await asyncio.wait_for(reader.readexactly(10), 10)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            writer.close()
            gone = await wait_until(lambda: not acceptor.associations, 10)
            ok, out = await _echo_ok(acceptor.port)
        return answer, peak, gone, ok, out

    answer, peak, gone, ok, out = asyncio.run(main())
    assert answer == ABORT_PROVIDER + bytes((pdu.ABORT_REASON_INVALID_PARAMETER,))
    assert peak < 8 * 1024 * 1024
    assert gone
    assert ok, out


def test_pdv_overrunning_its_pdu_during_association():
    """A PDV item whose length exceeds the bytes left in its P-DATA-TF is an invalid PDU (abort reason 6)."""

    async def main():
        log = StoreLog()
        async with serving(log.services(), config=NetConfig(artim_timeout=3)) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            writer.write(associate_rq())
            head = await reader.readexactly(6)
            await reader.readexactly(int.from_bytes(head[2:], "big"))
            # P-DATA-TF of 20 bytes holding a PDV that claims 1,000
            writer.write(header(pdu.P_DATA_TF, 20) + struct.pack(">LBB", 1000, 1, 3) + bytes(14))
            answer = await asyncio.wait_for(reader.readexactly(10), 10)
            writer.close()
            ok, out = await _echo_ok(acceptor.port)
        return answer, ok, out

    answer, ok, out = asyncio.run(main())
    assert answer == ABORT_PROVIDER + bytes((pdu.ABORT_REASON_INVALID_PARAMETER,))
    assert ok, out


def test_many_garbage_connections_do_not_accumulate():
    async def main():
        log = StoreLog()
        async with serving(log.services(), config=NetConfig(artim_timeout=3)) as acceptor:
            answers = await asyncio.gather(*(_send_and_read(acceptor.port, bytes([i % 256]) * 64 + b"\xff" * 64) for i in range(8, 40)))
            gone = await wait_until(lambda: not acceptor.associations, 15)
            ok, out = await _echo_ok(acceptor.port)
        return answers, gone, ok, out

    answers, gone, ok, out = asyncio.run(main())
    assert all(a[:9] == ABORT_PROVIDER for a in answers), answers
    assert gone
    assert ok, out


@pytest.mark.parametrize(("field", "title", "reason"), [
    ("calling", b" " * 16, 3), ("calling", "\u00e9".encode("latin-1") * 2 + b"SCU", 3),
    ("called", b" " * 16, 7), ("called", b"\xff" * 4, 7),
])
def test_unusable_ae_title_in_rq_is_rejected(field, title, reason):
    """An empty or non-ASCII AE title cannot be echoed in an A-ASSOCIATE-AC: the acceptor answers
    A-ASSOCIATE-RJ (permanent, service user, calling/called AE not recognized) instead of failing
    silently with the connection left open (a finding of fuzz/fuzz_pdu.py)."""
    rq = bytearray(associate_rq())
    at = 6 + 4 if field == "called" else 6 + 20  # called AE: body bytes 4-19, calling AE: 20-35
    rq[at : at + 16] = title.ljust(16, b" ")

    async def main():
        log = StoreLog()
        async with serving(log.services(), config=NetConfig(artim_timeout=3)) as acceptor:
            answer = await _send_and_read(acceptor.port, bytes(rq))
            ok, out = await _echo_ok(acceptor.port)
        return answer, ok, out

    answer, ok, out = asyncio.run(main())
    assert answer[:1] == bytes((pdu.A_ASSOCIATE_RJ,)), answer[:16]
    assert answer[7:10] == bytes((pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, reason)), answer[:16]
    assert ok, out


def test_response_to_a_command_with_an_undecodable_uid_is_still_sent():
    """A request whose Affected SOP Class UID holds non-ASCII bytes is answered (the echoed UID is
    encoded with '?'), not dropped with a traceback (a finding of fuzz/fuzz_pdu.py)."""
    from pacskit.net.dimse import Command

    request = Command.decode(Command({"CommandField": 0x0030, "MessageID": 1, "AffectedSOPClassUID": "1.2.840.10008.1.1",
                                      "CommandDataSetType": 0x0101}).encode().replace(b"1.2.840.10008.1.1",
                                                                                     b"1.2.840.10008.\xff.1"))
    from pacskit.net import dimse

    response = dimse.response_command(request, 0x0000)
    decoded = Command.decode(response.encode())
    assert decoded["AffectedSOPClassUID"] == "1.2.840.10008.?.1"
