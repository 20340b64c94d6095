"""The requestor (``pacskit.net.connect``) against misbehaving acceptors played by raw asyncio servers:
nothing listening, silence, A-ABORT / garbage instead of A-ASSOCIATE-AC, a malformed AC, a connection
dropped mid-response. Every case ends in the documented exception, never a hang."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import (
    AssociationAborted,
    ConnectionFailed,
    NetConfig,
    NetError,
    NetTimeout,
    RequestedContext,
    connect,
)
from pacskit.net import pdu

from ._util import LOCALHOST, free_port

ECHO_ONLY = [RequestedContext(VERIFICATION_SOP_CLASS)]
FAST = NetConfig(acse_timeout=2, dimse_timeout=2, artim_timeout=1)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(6)
    return head[0], await reader.readexactly(int.from_bytes(head[2:], "big"))


def good_ac(rq_body: bytes, **changes) -> bytes:
    rq = pdu.AssociateRQ.decode(rq_body)
    ac = pdu.AssociateAC(
        rq.called_ae_title,
        rq.calling_ae_title,
        [pdu.PresentationContextAC(c.id, pdu.PC_ACCEPTANCE, c.transfer_syntaxes[0]) for c in rq.contexts],
        pdu.UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3.4"),
    )
    for key, value in changes.items():
        setattr(ac, key, value)
    return ac.encode()


async def run_against(script: Script, config: NetConfig = FAST) -> BaseException | None:
    """Start a raw server playing ``script`` for one connection; return what connect()+echo() raised."""
    finished = asyncio.Event()

    async def handle(reader, writer):
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            finished.set()
            writer.close()

    server = await asyncio.start_server(handle, LOCALHOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            assoc = await asyncio.wait_for(connect(LOCALHOST, port, called_ae="RAW", contexts=ECHO_ONLY, config=config), 20)
            try:
                await asyncio.wait_for(assoc.echo(), 20)
            finally:
                assoc.abort()
                await asyncio.wait_for(assoc.wait_closed(), 10)
        except NetError as exc:
            return exc
        return None
    finally:
        server.close()
        await server.wait_closed()


def test_nothing_listening():
    port = free_port()

    async def main():
        with pytest.raises(ConnectionFailed) as err:
            await connect(LOCALHOST, port, called_ae="NOBODY", contexts=ECHO_ONLY, config=FAST)
        return err.value

    assert "refused" in str(asyncio.run(main()))


def test_silent_acceptor_times_out():
    async def silent(reader, writer):
        await _read_pdu(reader)
        await asyncio.sleep(10)

    assert isinstance(asyncio.run(run_against(silent)), NetTimeout)


def test_abort_instead_of_ac():
    async def aborts(reader, writer):
        await _read_pdu(reader)
        writer.write(pdu.Abort(2, 0).encode())
        await writer.drain()
        await reader.read()

    exc = asyncio.run(run_against(aborts))
    assert isinstance(exc, AssociationAborted)
    assert "service provider" in str(exc)


def test_close_instead_of_ac():
    async def closes(reader, writer):
        await _read_pdu(reader)

    exc = asyncio.run(run_against(closes))
    assert isinstance(exc, AssociationAborted)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        struct.pack(">BBL", pdu.A_ASSOCIATE_AC, 0, 10) + bytes(10),  # shorter than the fixed part
        struct.pack(">BBL", pdu.A_ASSOCIATE_AC, 0, 0xFFFFFFFF),  # absurd length
        struct.pack(">BBL", pdu.P_DATA_TF, 0, 8) + bytes(8),  # data before AC
        struct.pack(">BBL", pdu.A_ASSOCIATE_RJ, 0, 2) + bytes(2),  # RJ of the wrong size
    ],
    ids=["garbage", "short-ac", "absurd-ac-length", "p-data-first", "bad-rj"],
)
def test_garbage_instead_of_ac(answer):
    received: list[bytes] = []

    async def garbage(reader, writer):
        await _read_pdu(reader)
        writer.write(answer)
        await writer.drain()
        received.append(await asyncio.wait_for(reader.read(10), 10))
        await reader.read()

    exc = asyncio.run(run_against(garbage))
    assert isinstance(exc, AssociationAborted), exc
    # we told the peer why: an A-ABORT from the service provider
    assert received and received[0][:9] == bytes((7, 0, 0, 0, 0, 4, 0, 0, 2))


def test_ac_with_overflowing_item():
    async def bad_ac(reader, writer):
        _, body = await _read_pdu(reader)
        data = bytearray(good_ac(body))
        data[6 + 70 : 6 + 72] = struct.pack(">H", 0xFFF0)  # application context item length
        writer.write(bytes(data))
        await writer.drain()
        await reader.read()

    assert isinstance(asyncio.run(run_against(bad_ac)), AssociationAborted)


def test_ac_accepting_nothing_gives_no_acceptable_context():
    from pacskit.net import NoAcceptableContext

    async def rejects_all(reader, writer):
        _, body = await _read_pdu(reader)
        rq = pdu.AssociateRQ.decode(body)
        contexts = [pdu.PresentationContextAC(c.id, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED) for c in rq.contexts]
        writer.write(good_ac(body, contexts=contexts))
        await writer.drain()
        await reader.read()

    assert isinstance(asyncio.run(run_against(rejects_all)), NoAcceptableContext)


def test_connection_dropped_while_waiting_for_response():
    async def drops(reader, writer):
        _, body = await _read_pdu(reader)
        writer.write(good_ac(body))
        await writer.drain()
        await _read_pdu(reader)  # the C-ECHO-RQ
        # and close without answering

    exc = asyncio.run(run_against(drops))
    assert isinstance(exc, AssociationAborted)
    assert "closed" in str(exc)


def test_release_rp_never_comes():
    async def no_rp(reader, writer):
        _, body = await _read_pdu(reader)
        writer.write(good_ac(body))
        await writer.drain()
        await asyncio.sleep(10)

    async def main():
        finished = asyncio.Event()

        async def handle(reader, writer):
            try:
                await no_rp(reader, writer)
            finally:
                finished.set()
                writer.close()

        server = await asyncio.start_server(handle, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assoc = await connect(LOCALHOST, port, called_ae="RAW", contexts=ECHO_ONLY, config=FAST)
            with pytest.raises(NetTimeout):
                await asyncio.wait_for(assoc.release(), 20)
            await asyncio.wait_for(assoc.wait_closed(), 10)
            return assoc
        finally:
            server.close()
            await server.wait_closed()

    assoc = asyncio.run(main())
    assert assoc.is_aborted
