"""A-ABORT (or a dropped connection) in the middle of a dataset: nothing is left behind, no handler runs,
and the acceptor keeps serving."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from pathlib import Path

import pytest

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import AssociationAborted, CommandField, NetConfig, RequestedContext, connect
from pacskit.net import pdu
from pacskit.net.dimse import request_command

from ._util import AE, LOCALHOST, SECONDARY_CAPTURE, StoreLog, associate_rq, make_instance, p_data, serving, wait_until

EXPLICIT = "1.2.840.10008.1.2.1"
ABORT_PDU = pdu.Abort(pdu.ABORT_SOURCE_SERVICE_USER, 0).encode()


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(6)
    length = int.from_bytes(header[2:6], "big")
    return header[0], await reader.readexactly(length)


async def _raw_partial_store(port: int, temp_dir: Path, *, finish: str) -> None:
    """Associate over a raw socket, send a C-STORE-RQ and part of its dataset, then abort or close."""
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    writer.write(associate_rq(abstract_syntaxes=[SECONDARY_CAPTURE], transfer_syntaxes=[EXPLICIT]))
    pdu_type, body = await _read_pdu(reader)
    assert pdu_type == pdu.A_ASSOCIATE_AC
    ac = pdu.AssociateAC.decode(body)
    assert ac.contexts[0].result == pdu.PC_ACCEPTANCE
    command = request_command(
        CommandField.C_STORE_RQ, 1, SECONDARY_CAPTURE, has_dataset=True, AffectedSOPInstanceUID="1.2.3.4.5.6", Priority=0
    )
    writer.write(p_data(1, 0x03, command.encode()))
    chunk = os.urandom(8000)
    for _ in range(25):  # 200 kB of a dataset that never ends
        writer.write(p_data(1, 0x00, chunk))
    await writer.drain()
    # the dataset is being streamed into a temporary file...
    assert await wait_until(lambda: any(f.stat().st_size > 150_000 for f in temp_dir.iterdir()), 10), list(temp_dir.iterdir())
    if finish == "abort":
        writer.write(ABORT_PDU)
        await writer.drain()
        # the acceptor closes the connection after an A-ABORT (AA-3)
        assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("finish", ["abort", "close"])
def test_raw_client_aborts_mid_dataset(finish, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    temp_dir = tmp_path / "rx"
    temp_dir.mkdir()

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(temp_dir))) as acceptor:
            await _raw_partial_store(acceptor.port, temp_dir, finish=finish)
            assert await wait_until(lambda: not acceptor.associations, 10)
            left_behind = sorted(os.listdir(temp_dir))
            # still serving
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=[RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
                echo = await assoc.echo()
        gc.collect()
        return log, left_behind, echo

    log, left_behind, echo = asyncio.run(main())
    assert left_behind == []
    assert log.calls == 0
    assert echo == 0
    expected = "aborted by the peer" if finish == "abort" else "connection closed by the peer"
    assert any(expected in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    # an aborted association must not leave an unobserved failed future behind (asyncio logs those)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_pacskit_requestor_aborts_mid_dataset(tmp_path, caplog):
    """Our own requestor driven low level: command + first fragments via dul.send_p_data, then abort()."""
    temp_dir = tmp_path / "rx"
    temp_dir.mkdir()
    source = make_instance(tmp_path / "img.dcm", rows=256, cols=256)

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(temp_dir))) as acceptor:
            assoc = await connect(
                LOCALHOST, acceptor.port, called_ae=AE, contexts=[RequestedContext(SECONDARY_CAPTURE, (EXPLICIT,))]
            )
            ctx = assoc.find_context(SECONDARY_CAPTURE)
            command = request_command(
                CommandField.C_STORE_RQ, 1, SECONDARY_CAPTURE, has_dataset=True, AffectedSOPInstanceUID="1.2.3.4.5.7", Priority=0
            )
            data = source.read_bytes()[-100_000:]
            assert assoc.dul.send_p_data([pdu.p_data_header(len(command.encode()), ctx.id, 0x03), command.encode()])
            assert assoc.dul.send_p_data([pdu.p_data_header(len(data), ctx.id, 0x00), data])
            await assoc.dul.drain()
            assert await wait_until(lambda: any(f.stat().st_size > 90_000 for f in temp_dir.iterdir()), 10)
            [server_side] = list(acceptor.associations)
            assoc.abort()
            await assoc.wait_closed()
            assert assoc.is_aborted
            with pytest.raises(AssociationAborted):
                await assoc.store(source)
            assert await wait_until(lambda: not acceptor.associations, 10)
            left_behind = sorted(os.listdir(temp_dir))
            async with await connect(
                LOCALHOST, acceptor.port, called_ae=AE, contexts=[RequestedContext(SECONDARY_CAPTURE, (EXPLICIT,))]
            ) as again:
                status = (await again.store(source)).status
        gc.collect()
        return log, left_behind, server_side, status

    log, left_behind, server_side, status = asyncio.run(main())
    assert left_behind == []
    assert server_side.is_aborted and not server_side.is_released
    assert status == 0
    # only the complete, second store reached the handler
    assert log.calls == 1
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
