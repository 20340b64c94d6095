"""The P-DATA receive path with unusual but valid framing from a raw socket: several PDVs per PDU, a
command split over PDUs, tiny fragments, one byte per write, an empty last fragment. The dataset must
arrive byte for byte; protocol errors inside P-DATA end in A-ABORT."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from pacskit.net import CommandField, NetConfig
from pacskit.net import pdu
from pacskit.net.dimse import Command, request_command

from ._util import LOCALHOST, SECONDARY_CAPTURE, StoreLog, associate_rq, dataset_bytes, serving, wait_until

EXPLICIT = "1.2.840.10008.1.2.1"
ABORT_PROVIDER = bytes((0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02))


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def p_data_tf(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBL", pdu.P_DATA_TF, 0, len(body)) + body


def store_command(uid: str = "1.2.826.0.1.3680043.9.7777.10") -> bytes:
    return request_command(
        CommandField.C_STORE_RQ, 1, SECONDARY_CAPTURE, has_dataset=True, AffectedSOPInstanceUID=uid, Priority=0
    ).encode()


def dataset(size: int = 5000) -> bytes:
    # a tiny valid dataset: SOP Class / Instance UIDs, then an OB blob (Explicit VR Little Endian)
    def elem(group, el, vr, value):
        if len(value) & 1:
            value += b"\x00"
        if vr in (b"OB",):
            return struct.pack("<HH2sHL", group, el, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", group, el, vr, len(value)) + value

    return (
        elem(0x0008, 0x0016, b"UI", SECONDARY_CAPTURE.encode())
        + elem(0x0008, 0x0018, b"UI", b"1.2.826.0.1.3680043.9.7777.10")
        + elem(0x0009, 0x1010, b"OB", os.urandom(size))
    )


async def _associate(reader, writer) -> int:
    writer.write(associate_rq(abstract_syntaxes=[SECONDARY_CAPTURE], transfer_syntaxes=[EXPLICIT]))
    head = await reader.readexactly(6)
    body = await reader.readexactly(int.from_bytes(head[2:], "big"))
    assert head[0] == pdu.A_ASSOCIATE_AC
    ac = pdu.AssociateAC.decode(body)
    assert ac.contexts[0].result == 0
    return ac.contexts[0].id


async def _read_response(reader) -> Command:
    parts = []
    while True:
        head = await asyncio.wait_for(reader.readexactly(6), 10)
        body = await reader.readexactly(int.from_bytes(head[2:], "big"))
        assert head[0] == pdu.P_DATA_TF, (head, body)
        pos = 0
        while pos < len(body):
            length, _, control = struct.unpack_from(">LBB", body, pos)
            parts.append(body[pos + 6 : pos + 4 + length])
            pos += 4 + length
            if control & 0x02:
                return Command.decode(b"".join(parts))


def _frame(style: str, ctx: int, command: bytes, data: bytes) -> list[bytes]:
    """The same C-STORE message cut up in different valid ways; returns the writes to make."""
    if style == "one-pdu-many-pdvs":
        pieces = [pdv(ctx, 0x03, command)]
        chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
        pieces += [pdv(ctx, 0x00, c) for c in chunks[:-1]] + [pdv(ctx, 0x02, chunks[-1])]
        return [p_data_tf(*pieces)]
    if style == "split-command-tiny-fragments":
        out = [p_data_tf(pdv(ctx, 0x01, command[:5])), p_data_tf(pdv(ctx, 0x01, command[5:20]), pdv(ctx, 0x03, command[20:]))]
        chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
        out += [p_data_tf(pdv(ctx, 0x00, c)) for c in chunks[:-1]] + [p_data_tf(pdv(ctx, 0x02, chunks[-1]))]
        return out
    if style == "empty-last-fragment":
        return [p_data_tf(pdv(ctx, 0x03, command)), p_data_tf(pdv(ctx, 0x00, data)), p_data_tf(pdv(ctx, 0x02, b""))]
    if style == "one-byte-writes":
        stream = p_data_tf(pdv(ctx, 0x03, command)) + p_data_tf(pdv(ctx, 0x00, data[:300]), pdv(ctx, 0x02, data[300:]))
        return [stream[i : i + 1] for i in range(len(stream))]
    raise AssertionError(style)


@pytest.mark.parametrize("style", ["one-pdu-many-pdvs", "split-command-tiny-fragments", "empty-last-fragment", "one-byte-writes"])
def test_valid_framings_deliver_the_dataset_intact(style, tmp_path):
    data = dataset()
    command = store_command()

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            ctx = await _associate(reader, writer)
            for piece in _frame(style, ctx, command, data):
                writer.write(piece)
                if style == "one-byte-writes":
                    await writer.drain()
                    await asyncio.sleep(0)
            await writer.drain()
            rsp = await _read_response(reader)
            writer.write(pdu.RELEASE_RQ_PDU)
            head = await asyncio.wait_for(reader.readexactly(10), 10)
            writer.close()
        return rsp, head, log

    rsp, release_rp, log = asyncio.run(main())
    assert rsp.command_field == CommandField.C_STORE_RSP
    assert rsp.status == 0
    assert rsp["MessageIDBeingRespondedTo"] == 1
    assert release_rp == pdu.RELEASE_RP_PDU
    [stored] = log.stored
    assert dataset_bytes(stored["path"]) == data


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("dataset-before-command", 5),
        ("dataset-on-other-context", 5),
        ("command-on-unaccepted-context", 6),
        ("command-while-dataset-expected", 5),
        ("garbage-command-set", 6),
        ("pdv-length-below-2", 6),
    ],
)
def test_protocol_errors_inside_p_data_abort(name, reason, tmp_path):
    command = store_command()
    data = dataset(100)

    def build(ctx: int) -> bytes:
        if name == "dataset-before-command":
            return p_data_tf(pdv(ctx, 0x02, data))
        if name == "dataset-on-other-context":
            return p_data_tf(pdv(ctx, 0x03, command)) + p_data_tf(pdv(ctx + 2, 0x02, data))
        if name == "command-on-unaccepted-context":
            return p_data_tf(pdv(ctx + 2, 0x03, command))
        if name == "command-while-dataset-expected":
            return p_data_tf(pdv(ctx, 0x03, command)) + p_data_tf(pdv(ctx, 0x00, data[:10])) + p_data_tf(pdv(ctx, 0x03, command))
        if name == "garbage-command-set":
            return p_data_tf(pdv(ctx, 0x03, b"\x08\x00\x16\x00\x02\x00\x00\x00ab"))
        if name == "pdv-length-below-2":
            return struct.pack(">BBL", pdu.P_DATA_TF, 0, 6) + struct.pack(">LBB", 1, ctx, 3)
        raise AssertionError(name)

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(tmp_path), artim_timeout=3)) as acceptor:
            reader, writer = await asyncio.open_connection(LOCALHOST, acceptor.port)
            ctx = await _associate(reader, writer)
            writer.write(build(ctx))
            answer = await asyncio.wait_for(reader.readexactly(10), 10)
            writer.close()
            gone = await wait_until(lambda: not acceptor.associations, 10)
            left = sorted(p.name for p in tmp_path.iterdir())
        return answer, gone, left, log

    answer, gone, left, log = asyncio.run(main())
    assert answer == ABORT_PROVIDER + bytes((reason,))
    assert gone
    assert left == []  # a partially received dataset is removed
    assert log.calls == 0
