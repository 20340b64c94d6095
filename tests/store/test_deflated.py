"""Deflated datasets (PS3.5 A.5): inflated piece by piece and never beyond 256 MiB; nesting guarded.

A deflate bomb — a 300 MiB run of zeros that deflates to about 300 kB — is refused with
``InstanceTooLarge`` (the Storage add-in answers 0xA700) without ever holding the inflated bytes in
memory (peak growth measured with tracemalloc) and leaves nothing behind; a deflated dataset nested 65
deep is refused like an uncompressed one; real deflated files index as pydicom reads them.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from pacskit.dicom.part10 import InflationLimit, encode_file_meta, inflate, read_part10_header
from pacskit.store import DataStore, FilesystemBlobStore, InstanceTooLarge, InvalidInstance
from pacskit.store.index.extract import read_index_attributes, scan_instance

from .test_nesting import _nested

SC = "1.2.840.10008.5.1.4.1.1.7"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) & 1:
        value += b"\x00" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _bomb(path: Path, zeros: int) -> Path:
    """A deflated Secondary Capture whose private OB element holds ``zeros`` zero bytes."""
    uid = generate_uid()
    head = b"".join([
        _element(0x0008, 0x0016, b"UI", SC.encode()),
        _element(0x0008, 0x0018, b"UI", uid.encode()),
        _element(0x0020, 0x000D, b"UI", generate_uid().encode()),
        _element(0x0020, 0x000E, b"UI", generate_uid().encode()),
        struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, zeros),
    ])
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as out:
        out.write(encode_file_meta(SC, uid, DeflatedExplicitVRLittleEndian, "1.2.3", ""))
        out.write(deflater.compress(head))
        chunk = bytes(1 << 20)
        for _ in range(zeros >> 20):
            out.write(deflater.compress(chunk))
        out.write(deflater.flush())
    return path


def test_inflate_stops_at_the_limit() -> None:
    data = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = data.compress(bytes(10 << 20)) + data.flush()
    out: list[bytes] = []
    assert inflate(stream, out.append, 10 << 20) == 10 << 20
    with pytest.raises(InflationLimit):
        inflate(stream, lambda piece: None, (10 << 20) - 1)


def test_deflate_bomb_is_refused_without_inflating_it_in_memory(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.dcm", 300 << 20)
    assert bomb.stat().st_size < 2 << 20
    store = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=FilesystemBlobStore(tmp_path / "blobs"))
    try:
        tracemalloc.start()
        with pytest.raises(InstanceTooLarge, match="inflates beyond"):
            store.ingest(bomb, source_ae="X")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 32 << 20, peak
        assert store.count("instances") == 0
        assert not list(Path(store.temp_dir).iterdir())  # neither the file nor its inflated copy
        assert store.check().ok
    finally:
        store.close()


def test_deflated_nesting_65_refused(tmp_path: Path) -> None:
    deep = _nested(tmp_path / "deep.dcm", 65, ExplicitVRLittleEndian, True)
    ds = dcmread(deep)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deep-deflated.dcm", enforce_file_format=True)
    path = tmp_path / "deep-deflated.dcm"
    info = read_part10_header(path)
    with pytest.raises(Exception, match="nesting deeper than 64"):
        scan_instance(path, info.dataset_offset, info.transfer_syntax)


def test_real_deflated_file_indexes_as_pydicom_reads_it() -> None:
    path = get_testdata_file("image_dfl.dcm")
    info = read_part10_header(path)
    assert info.transfer_syntax == DeflatedExplicitVRLittleEndian
    expected = read_index_attributes(path)
    assert scan_instance(path, info.dataset_offset, info.transfer_syntax, info.source_ae) == expected


def test_corrupt_deflate_stream_is_cannot_understand(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "b.dcm", 1 << 20)
    raw = bytearray(bomb.read_bytes())
    start = read_part10_header(bomb).dataset_offset
    raw[start + 10: start + 40] = b"\xff" * 30
    bomb.write_bytes(bytes(raw))
    with pytest.raises(InvalidInstance):
        scan_instance(bomb, start, DeflatedExplicitVRLittleEndian)


def test_server_answers_a_deflate_bomb_with_out_of_resources(tmp_path: Path) -> None:
    import asyncio

    from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
    from pacskit.net import RequestedContext, connect
    from pacskit.server.server import Server
    from pacskit.config.settings import load_settings

    bomb = _bomb(tmp_path / "bomb.dcm", 300 << 20)
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "BOMBPACS"\nport = 0\ndata_dir = "data"\n')

    async def run() -> tuple[int, str, int]:
        async with Server(load_settings(folder)) as server:
            contexts = [RequestedContext(SC, (DeflatedExplicitVRLittleEndian,)),
                        RequestedContext(VERIFICATION_SOP_CLASS)]
            async with await connect("127.0.0.1", server.port, called_ae="BOMBPACS", contexts=contexts) as assoc:
                rsp = await assoc.store(bomb)
                return rsp.status, rsp.get("ErrorComment", ""), await assoc.echo()

    status, comment, echo = asyncio.run(run())
    assert status == 0xA700, hex(status)
    assert "inflates beyond" in comment
    assert echo == 0x0000
