"""Association establishment on the acceptor: what the A-ASSOCIATE-AC says, and every built-in reason to
send A-ASSOCIATE-RJ (plus the ``on_associate`` hook)."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from pacskit.net import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    REJECT_CALLING_AE,
    AssociationRejected,
    NetConfig,
    RequestedContext,
    Services,
    connect,
)
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import pdu

from ._util import AE, LOCALHOST, associate_rq, serving, wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"


def echo_services() -> Services:
    services = Services()
    services.register("C-ECHO", lambda req: 0)
    return services


async def _exchange(port: int, *writes: bytes) -> tuple[int, bytes]:
    """Send the A-ASSOCIATE-RQ (possibly in several writes); return the answer PDU (type, body)."""
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    try:
        for piece in writes:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        head = await asyncio.wait_for(reader.readexactly(6), 10)
        body = await reader.readexactly(int.from_bytes(head[2:], "big"))
        if head[0] == pdu.A_ASSOCIATE_AC:
            writer.write(pdu.RELEASE_RQ_PDU)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(10), 10) == pdu.RELEASE_RP_PDU
        return head[0], body
    finally:
        writer.close()


def test_associate_ac_contents():
    rq = associate_rq(
        called=AE,
        calling="RAWSCU",
        abstract_syntaxes=[VERIFICATION_SOP_CLASS, CT, "1.2.3.4.999"],
        transfer_syntaxes=["1.2.840.10008.1.2"],
    )

    async def main():
        async with serving(echo_services(), config=NetConfig(max_pdu_length=65536)) as acceptor:
            # the RQ arrives in three pieces, cut inside the PDU header and inside an item
            return await _exchange(acceptor.port, rq[:3], rq[3:90], rq[90:])

    pdu_type, body = asyncio.run(main())
    assert pdu_type == pdu.A_ASSOCIATE_AC
    ac = pdu.AssociateAC.decode(body)
    assert (ac.called_ae_title, ac.calling_ae_title) == (AE, "RAWSCU")
    assert ac.application_context == pdu.APPLICATION_CONTEXT_NAME
    assert ac.user_info.max_pdu_length == 65536
    assert ac.user_info.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert ac.user_info.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert ac.user_info.async_ops is None  # not asked, not answered
    results = {c.id: (c.result, c.transfer_syntax) for c in ac.contexts}
    assert results == {
        1: (pdu.PC_ACCEPTANCE, "1.2.840.10008.1.2"),
        3: (pdu.PC_ACCEPTANCE, "1.2.840.10008.1.2"),
        5: (pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
    }


def _raw_rq(**changes) -> bytes:
    rq = pdu.AssociateRQ(
        AE,
        "RAWSCU",
        [pdu.PresentationContextRQ(1, VERIFICATION_SOP_CLASS, ["1.2.840.10008.1.2"])],
        pdu.UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3.4"),
    )
    for key, value in changes.items():
        setattr(rq, key, value)
    return rq.encode()


@pytest.mark.parametrize(
    ("name", "rq", "config", "expected"),
    [
        ("protocol-version-2", _raw_rq(protocol_version=2), {}, (1, 2, 2)),
        ("application-context", _raw_rq(application_context="1.2.3.4.5"), {}, (1, 1, 2)),
        ("called-ae", _raw_rq(called_ae_title="NOBODY"), {}, (1, 1, 7)),
        (
            "too-many-contexts",
            _raw_rq(contexts=[pdu.PresentationContextRQ(2 * i + 1, VERIFICATION_SOP_CLASS, ["1.2.840.10008.1.2"]) for i in range(3)]),
            {"max_presentation_contexts": 2},
            (1, 1, 1),
        ),
    ],
)
def test_built_in_rejections(name, rq, config, expected, caplog):
    caplog.set_level(logging.WARNING, logger="pacskit.net")

    async def main():
        async with serving(echo_services(), config=NetConfig(artim_timeout=3, **config)) as acceptor:
            answer = await _exchange(acceptor.port, rq)
            gone = await wait_until(lambda: not acceptor.associations, 10)
            # still serving
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=[RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
                echo = await assoc.echo()
        return answer, gone, echo

    (pdu_type, body), gone, echo = asyncio.run(main())
    assert pdu_type == pdu.A_ASSOCIATE_RJ
    rj = pdu.AssociateRJ.decode(body)
    assert (rj.result, rj.source, rj.reason) == expected
    assert gone
    assert echo == 0
    assert any("rejected" in r.getMessage() for r in caplog.records)


def test_version_with_bit_0_set_is_accepted():
    async def main():
        async with serving(echo_services()) as acceptor:
            return await _exchange(acceptor.port, _raw_rq(protocol_version=3))

    assert asyncio.run(main())[0] == pdu.A_ASSOCIATE_AC


def test_called_ae_check_can_be_disabled():
    async def main():
        async with serving(echo_services(), require_called_ae=False) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae="ANY-SCP", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
                return await assoc.echo()

    assert asyncio.run(main()) == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_on_associate_hook_rejects_calling_ae(kind):
    def sync_hook(assoc):
        return None if assoc.remote_ae_title == "FRIEND" else REJECT_CALLING_AE

    async def async_hook(assoc):
        await asyncio.sleep(0)
        return sync_hook(assoc)

    async def main():
        hook = sync_hook if kind == "sync" else async_hook
        async with serving(echo_services(), on_associate=hook) as acceptor:
            with pytest.raises(AssociationRejected) as err:
                await connect(LOCALHOST, acceptor.port, called_ae=AE, calling_ae="STRANGER", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, calling_ae="FRIEND", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
                echo = await assoc.echo()
        return err.value, echo

    exc, echo = asyncio.run(main())
    assert (exc.result, exc.source, exc.reason) == (1, 1, 3)
    assert echo == 0


def test_on_associate_hook_failure_rejects_without_reason(caplog):
    def hook(assoc):
        raise RuntimeError("directory service down")

    async def main():
        async with serving(echo_services(), on_associate=hook) as acceptor:
            with pytest.raises(AssociationRejected) as err:
                await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
        return err.value

    exc = asyncio.run(main())
    assert (exc.result, exc.source, exc.reason) == (1, 1, 1)
    assert any("association hook failed" in r.getMessage() for r in caplog.records)


def test_second_associate_rq_on_established_association_aborts():
    async def main():
        async with serving(echo_services(), config=NetConfig(artim_timeout=3)) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            writer.write(_raw_rq())
            head = await reader.readexactly(6)
            await reader.readexactly(int.from_bytes(head[2:], "big"))
            assert head[0] == pdu.A_ASSOCIATE_AC
            writer.write(_raw_rq())
            answer = await asyncio.wait_for(reader.readexactly(10), 10)
            writer.close()
            gone = await wait_until(lambda: not acceptor.associations, 10)
        return answer, gone

    answer, gone = asyncio.run(main())
    assert answer == pdu.Abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, pdu.ABORT_REASON_UNEXPECTED_PDU).encode()
    assert gone


def test_peer_closing_instead_of_waiting_for_ac_is_harmless():
    """The peer gives up while a slow hook decides: no AC is sent into a dead connection, nothing crashes."""
    decided = asyncio.Event()

    async def slow_hook(assoc):
        await asyncio.sleep(0.3)
        decided.set()
        return None

    async def main():
        async with serving(echo_services(), on_associate=slow_hook) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            writer.write(_raw_rq())
            await writer.drain()
            writer.close()
            await asyncio.wait_for(decided.wait(), 10)
            gone = await wait_until(lambda: not acceptor.associations, 10)
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=[RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
                echo = await assoc.echo()
        return gone, echo

    gone, echo = asyncio.run(main())
    assert gone
    assert echo == 0


def test_associate_rq_with_ae_title_padding():
    raw = bytearray(_raw_rq())
    raw[10:26] = b"  " + AE.encode().ljust(14)  # called AE with leading spaces: not significant

    async def main():
        async with serving(echo_services()) as acceptor:
            return await _exchange(acceptor.port, bytes(raw))

    pdu_type, body = asyncio.run(main())
    assert pdu_type == pdu.A_ASSOCIATE_AC
    assert struct.unpack(">H", body[:2])[0] == 1
