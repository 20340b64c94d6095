"""Sequence nesting deeper than 64 (DCMTK's limit) is refused before anything decodes the dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacskit.dicom.part10 import read_part10_header
from pacskit.store import DataStore, FilesystemBlobStore, InvalidInstance
from pacskit.dicom.walker import TooDeep, check_nesting
from pacskit.testing.synth import make_instance

SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]


def _nested(path: Path, depth: int, transfer_syntax: str, undefined: bool) -> Path:
    make_instance(path, transfer_syntax=transfer_syntax)
    ds = dcmread(path)
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ConceptNameCodeSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ConceptNameCodeSequence
    ds.ContentSequence.is_undefined_length = undefined
    ds.save_as(path)
    return path


@pytest.mark.parametrize("transfer_syntax", SYNTAXES)
@pytest.mark.parametrize("undefined", [False, True])
def test_depth_64_passes_and_65_is_refused(tmp_path: Path, transfer_syntax: str, undefined: bool) -> None:
    ok = _nested(tmp_path / "ok.dcm", 64, transfer_syntax, undefined)
    info = read_part10_header(ok)
    check_nesting(ok, info.dataset_offset, info.transfer_syntax)
    deep = _nested(tmp_path / "deep.dcm", 65, transfer_syntax, undefined)
    info = read_part10_header(deep)
    with pytest.raises(TooDeep) as exc:
        check_nesting(deep, info.dataset_offset, info.transfer_syntax)
    assert exc.value.tag == 0x0040A043  # ConceptNameCodeSequence


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "test-SR.dcm", "rtplan.dcm", "ExplVR_BigEnd.dcm",
                                  "MR_small_implicit.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_real_files_pass(name: str) -> None:
    path = get_testdata_file(name)
    info = read_part10_header(path)
    check_nesting(path, info.dataset_offset, info.transfer_syntax)


def test_ingest_refuses_deep_nesting_and_stores_nothing(tmp_path: Path) -> None:
    store = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=FilesystemBlobStore(tmp_path / "blobs"))
    try:
        deep = _nested(tmp_path / "deep.dcm", 70, "1.2.840.10008.1.2.1", True)
        with pytest.raises(InvalidInstance, match="nesting deeper than 64"):
            store.ingest(deep, source_ae="X")
        assert store.count("instances") == 0
        assert not deep.exists()  # consumed, as ingest documents
        assert store.check().ok
    finally:
        store.close()


def _nested_raw(path: Path, depth: int) -> Path:
    """Explicit VR LE, undefined lengths, written byte by byte (pydicom's writer recurses and crashes
    the interpreter long before 300 levels): ContentSequence > item > ConceptNameCodeSequence > ..."""
    import struct

    make_instance(path, transfer_syntax="1.2.840.10008.1.2.1")
    raw = path.read_bytes()
    pixels = raw.index(b"\xe0\x7f\x10\x00OB") if b"\xe0\x7f\x10\x00OB" in raw else raw.index(b"\xe0\x7f\x10\x00OW")
    seq = lambda tag: struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)  # noqa: E731
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    body = seq(0x0040A730) + item + (seq(0x0040A043) + item) * (depth - 1)
    body += struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"X "
    path.write_bytes(raw[:pixels] + body + close * depth + raw[pixels:])
    return path


def test_depth_300_refused_cleanly_through_the_server(tmp_path: Path) -> None:
    """No RecursionError anywhere: the walk refuses it, pydicom never sees it, the server goes on."""
    import asyncio

    from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
    from pacskit.net import RequestedContext, connect
    from pacskit.server.server import Server
    from pacskit.config.settings import load_settings

    deep = _nested_raw(tmp_path / "deep300.dcm", 300)
    info = read_part10_header(deep)
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "DEEPPACS"\nport = 0\ndata_dir = "data"\n')

    async def run() -> tuple[int, str, int, int]:
        async with Server(load_settings(folder)) as server:
            contexts = [RequestedContext(info.sop_class_uid, (info.transfer_syntax,)),
                        RequestedContext(VERIFICATION_SOP_CLASS)]
            async with await connect("127.0.0.1", server.port, called_ae="DEEPPACS", contexts=contexts) as assoc:
                rsp = await assoc.store(deep)
                return rsp.status, rsp.get("ErrorComment", ""), await assoc.echo(), server.store.count()

    status, comment, echo, count = asyncio.run(run())
    assert (status, echo, count) == (0xC000, 0x0000, 0)
    assert "nesting deeper than 64" in comment
