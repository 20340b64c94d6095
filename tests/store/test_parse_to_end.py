"""Ingest proves that a dataset parses to its last byte in its transfer syntax (issue 15, items 1 and 11).

A dataset cut short (inside Pixel Data, a value, a header, an open sequence) or encoded in another
syntax than the one negotiated (Implicit VR bytes on an Explicit VR context) is refused with
``UnparseableDataset`` (the Storage add-in answers 0xC000) and nothing of it is kept. The walk agrees
with DCMTK's parser over pydicom's corpus. Deflated Image Frame Compression (1.2.840.10008.1.2.8.1) is
an Explicit VR Little Endian dataset with deflated frames (PS3.5 A.4.11), walked as such; a deflated
dataset (1.2.840.10008.1.2.1.99) whose deflate stream is cut short is refused.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.sequence import Sequence

from pacskit.dicom.uids import DEFLATED_IMAGE_FRAME_COMPRESSION
from pacskit.dicom.part10 import encode_file_meta, read_part10_header
from pacskit.store import (
    DataStore,
    FilesystemBlobStore,
    InvalidInstance,
    UnparseableDataset,
)
from pacskit.store.index.extract import scan_instance
from pacskit.dicom.walker import TooDeep, check_nesting
from pacskit.testing.peers import dcmtk_tool, have_dcmtk
from pacskit.testing.synth import make_dataset

_ROOT = Path(pydicom.data.__file__).parent
EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: Files of pydicom's corpus that do not parse to their end. DCMTK refuses the first three too;
#: DICOMDIR-nooffset's last directory record claims 248 bytes where 224 remain (DCMTK's dcmdump
#: reads the short item without a word). No C-STORE carries a DICOMDIR.
UNPARSEABLE = {"MR_truncated.dcm", "SC_rgb_jpeg.dcm", "rtplan_truncated.dcm", "DICOMDIR-nooffset"}
DCMTK_READS = {"DICOMDIR-nooffset"}


def _corpus() -> list[Path]:
    files = []
    for p in sorted([*(_ROOT / "test_files").rglob("*"), *(_ROOT / "charset_files").rglob("*")]):
        if not p.is_file():
            continue
        try:
            read_part10_header(p)
        except ValueError:
            continue
        files.append(p)
    return files


CORPUS = _corpus()


def _parses(path: Path) -> bool:
    info = read_part10_header(path)
    try:
        scan_instance(path, info.dataset_offset, info.transfer_syntax)
    except UnparseableDataset:
        return False
    except (InvalidInstance, TooDeep):  # parses, but lacks what the index needs
        pass
    return True


def test_the_walk_refuses_exactly_the_corpus_files_that_do_not_parse() -> None:
    assert len(CORPUS) > 100
    assert {p.name for p in CORPUS if not _parses(p)} == UNPARSEABLE


@pytest.mark.dcmtk
@pytest.mark.usefixtures("need_dcmtk")
def test_the_walk_agrees_with_dcmtk_over_the_corpus() -> None:
    dcmdump = dcmtk_tool("dcmdump")
    disagree = set()
    for path in CORPUS:
        dcmtk_ok = subprocess.run([dcmdump, "-q", str(path)], capture_output=True, timeout=60, check=False).returncode == 0
        if dcmtk_ok != _parses(path):
            disagree.add(path.name)
    assert disagree == DCMTK_READS


# ------------------------------------------------------------------------------ files cut anywhere


def _with_sequences(transfer_syntax: str) -> Dataset:
    ds = make_dataset(rows=4, cols=4, bits=16)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X1", "99TEST", "test"
    item = Dataset()
    item.AccessionNumber = "ACC1"
    item.RequestedProcedureCodeSequence = Sequence([code])
    ds.RequestAttributesSequence = Sequence([item, Dataset()])
    ds.ProcedureCodeSequence = Sequence([code])  # defined length, below
    ds["RequestAttributesSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    return ds


def _encode(ds: Dataset, transfer_syntax: str) -> tuple[bytes, list[int]]:
    """The dataset's bytes and the offsets where each top-level element starts or the data ends:
    cutting there leaves a shorter but well-formed dataset, cutting anywhere else does not."""
    implicit, little = transfer_syntax == IMPLICIT_LE, transfer_syntax != EXPLICIT_BE
    whole = DicomBytesIO()
    whole.is_implicit_VR, whole.is_little_endian = implicit, little
    write_dataset(whole, ds)
    boundaries, pos = [0], 0
    for elem in ds:
        one = DicomBytesIO()
        one.is_implicit_VR, one.is_little_endian = implicit, little
        write_data_element(one, elem)
        pos += len(one.getvalue())
        boundaries.append(pos)
    data = whole.getvalue()
    assert pos == len(data)
    return data, boundaries


def _part10(path: Path, ds: Dataset, transfer_syntax: str, data: bytes) -> Path:
    path.write_bytes(encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax, "1.2.3.4") + data)
    return path


def _deflated_frames(ds: Dataset, frames: int = 2) -> Dataset:
    """Deflated Image Frame Compression: each frame a raw deflate stream, encapsulated (PS3.5 A.4.11)."""
    ds.NumberOfFrames = frames
    pieces = []
    for n in range(frames):
        raw = (np.arange(int(ds.Rows) * int(ds.Columns), dtype="<u2") + n).tobytes()
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        pieces.append(deflater.compress(raw) + deflater.flush())
    ds.PixelData = encapsulate(pieces)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


@pytest.mark.parametrize("transfer_syntax", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_IMAGE_FRAME_COMPRESSION])
def test_a_dataset_cut_inside_any_element_is_refused(tmp_path: Path, transfer_syntax: str) -> None:
    ds = _with_sequences(transfer_syntax)
    if transfer_syntax == DEFLATED_IMAGE_FRAME_COMPRESSION:
        ds = _deflated_frames(ds)
    encoding = EXPLICIT_LE if transfer_syntax == DEFLATED_IMAGE_FRAME_COMPRESSION else transfer_syntax
    data, boundaries = _encode(ds, encoding)
    whole = _part10(tmp_path / "whole.dcm", ds, transfer_syntax, data)
    offset = read_part10_header(whole).dataset_offset
    walked = check_nesting(whole, offset, transfer_syntax)
    assert walked.complete and walked.problem is None
    refused = 0
    for cut in range(1, len(data)):
        part = _part10(tmp_path / "cut.dcm", ds, transfer_syntax, data[:cut])
        walked = check_nesting(part, offset, transfer_syntax)
        if cut in boundaries:
            assert walked.complete, (cut, walked.problem)
        else:
            assert not walked.complete and walked.problem is not None, cut
            assert walked.problem.offset <= cut
            refused += 1
    assert refused == len(data) - len(boundaries) + 1


def test_truncated_inside_pixel_data_names_the_element(tmp_path: Path) -> None:
    path = Path(pydicom.data.get_testdata_file("MR_truncated.dcm"))
    info = read_part10_header(path)
    with pytest.raises(UnparseableDataset) as exc:
        scan_instance(path, info.dataset_offset, info.transfer_syntax)
    assert str(exc.value) == "dataset truncated in (7FE0,0010) PixelData"  # the Error Comment, <= 64
    assert exc.value.tag == 0x7FE00010
    assert "8192 bytes, 8130 left" in exc.value.detail and "Explicit VR Little Endian" in exc.value.detail


def test_implicit_vr_bytes_on_an_explicit_vr_context_are_refused(tmp_path: Path) -> None:
    ds = _with_sequences(IMPLICIT_LE)
    implicit, _ = _encode(ds, IMPLICIT_LE)
    explicit, _ = _encode(ds, EXPLICIT_LE)
    for claimed, data in [(EXPLICIT_LE, implicit), ("1.2.840.10008.1.2.4.50", implicit), (IMPLICIT_LE, explicit),
                          (EXPLICIT_BE, explicit), (EXPLICIT_LE, _encode(ds, EXPLICIT_BE)[0])]:
        path = _part10(tmp_path / "x.dcm", ds, claimed, data)
        walked = check_nesting(path, read_part10_header(path).dataset_offset, claimed)
        assert walked.problem is not None, claimed
    path = Path(pydicom.data.get_testdata_file("SC_rgb_jpeg.dcm"))  # Implicit VR, its meta says JPEG Baseline
    info = read_part10_header(path)
    with pytest.raises(UnparseableDataset, match=r"not Explicit VR: bad VR in \(0008,0008\) ImageType"):
        scan_instance(path, info.dataset_offset, info.transfer_syntax)


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _seq(tag: int, length: int = 0xFFFFFFFF) -> bytes:
    return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, b"SQ", 0, length)


def _item(length: int = 0xFFFFFFFF, elem: int = 0xE000) -> bytes:
    return struct.pack("<HHL", 0xFFFE, elem, length)


@pytest.mark.parametrize("body, reason", [
    (_seq(0x00081110) + _item() + _element(0x00081150, b"UI", b"1.2\x00"), "dataset truncated"),  # never closed
    (_seq(0x00081110) + _item() + _element(0x00081150, b"UI", b"1.2\x00") + _item(0, 0xE0DD),
     "unexpected delimiter"),  # the item is never closed: a sequence delimiter inside it is no element
    (_seq(0x00081110, 8 + 12) + _item(16) + _element(0x00081150, b"UI", b"1.2\x00") + _element(0x00204000, b"LT", b"ok"),
     "length overruns"),
    (_seq(0x00081110, 8) + _element(0x00081150, b"UI", b"1.2\x00"), "no item in sequence"),
    (_item(0, 0xE0DD), "unexpected delimiter"),  # a sequence delimiter at the top level (DCMTK refuses it too)
    (_seq(0x00081110, 20) + _item(12) + _element(0x00081150, b"UI", b"1.2\x00") + _item(0, 0xE0DD),
     "unexpected delimiter"),  # one after a defined-length sequence (DCMTK refuses it too)
    (struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + _item(0) + _item(100) + b"\x00" * 8
     + _item(0, 0xE0DD), "dataset truncated"),  # a fragment longer than what is left
    (struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + _item(0) + _item(4) + b"\x00" * 4,
     "dataset truncated"),  # no sequence delimiter after the fragments
    (struct.pack("<HH2sHL", 0x0008, 0x0119, b"UT", 0, 0xFFFFFFFF), "undefined length"),
])
def test_structure_errors_are_refused(tmp_path: Path, body: bytes, reason: str) -> None:
    ds = make_dataset(rows=2, cols=2)
    head, _ = _encode(ds, EXPLICIT_LE)
    path = _part10(tmp_path / "bad.dcm", ds, EXPLICIT_LE, head + body)
    walked = check_nesting(path, read_part10_header(path).dataset_offset, EXPLICIT_LE)
    assert walked.problem is not None and walked.problem.reason.startswith(reason), walked.problem


@pytest.mark.parametrize("body", [
    _item(0, 0xE00D),  # an item delimiter with no item to close
    _seq(0x00081110, 28) + _item(20) + _element(0x00081150, b"UI", b"1.2\x00") + _item(0, 0xE00D),  # in a defined item
    b"\x00" * 8,  # NUL padding after the last element
    b"\x00" * 32,
    _element(0x00104000, b"LT", b"abc")[:-1] + b"c",  # an odd value length (3)
    struct.pack("<HH2sHL", 0x0009, 0x1010, b"XX", 0, 2) + b"ab",  # an unknown VR: 32-bit length, as DCMTK
], ids=["stray-item-delimiter", "item-delimiter-in-defined-item", "nul-padding", "odd-nul-padding",
        "odd-length", "unknown-vr"])
def test_sloppy_but_harmless_datasets_are_accepted(tmp_path: Path, body: bytes) -> None:
    """What DCMTK reads too (checked when it is installed). Fewer than 8 NUL bytes after the last element
    are refused (a header cut short, as DCMTK says too)."""
    ds = make_dataset(rows=2, cols=2)
    head, _ = _encode(ds, EXPLICIT_LE)
    path = _part10(tmp_path / "sloppy.dcm", ds, EXPLICIT_LE, head + body)
    walked = check_nesting(path, read_part10_header(path).dataset_offset, EXPLICIT_LE)
    assert walked.complete, walked.problem
    if have_dcmtk():
        assert subprocess.run([dcmtk_tool("dcmdump"), "-q", str(path)], capture_output=True, timeout=60,
                              check=False).returncode == 0


@pytest.mark.parametrize("transfer_syntax", [EXPLICIT_LE, EXPLICIT_BE])
def test_an_undefined_length_un_sequence_is_walked_as_implicit_vr_little_endian(tmp_path: Path,
                                                                                transfer_syntax: str) -> None:
    """PS3.5 6.2.2: whatever the transfer syntax, an UN value of undefined length is Implicit VR LE."""
    ds = make_dataset(rows=2, cols=2)
    head, _ = _encode(ds, transfer_syntax)
    fmt = ">" if transfer_syntax == EXPLICIT_BE else "<"
    inner = struct.pack("<HHL", 0x0008, 0x1150, 4) + b"1.2\x00"  # implicit LE inside
    un = struct.pack(f"{fmt}HH2sHL", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF) + _item() + inner + _item(0, 0xE00D) \
        + _item(0, 0xE0DD)
    path = _part10(tmp_path / "un.dcm", ds, transfer_syntax, head + un)
    walked = check_nesting(path, read_part10_header(path).dataset_offset, transfer_syntax)
    assert walked.complete, walked.problem


def test_ingest_of_an_unparseable_dataset_keeps_nothing(tmp_path: Path) -> None:
    store = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=FilesystemBlobStore(tmp_path / "blobs"))
    try:
        for name in ("MR_truncated.dcm", "SC_rgb_jpeg.dcm", "rtplan_truncated.dcm"):
            staged = Path(store.temp_dir) / f"rx-{name}.part"
            staged.write_bytes(Path(pydicom.data.get_testdata_file(name)).read_bytes())
            with pytest.raises(UnparseableDataset):
                store.ingest(staged, source_ae="X")
            assert not staged.exists()
        assert store.count("instances") == 0
        assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
        assert store.check().ok
    finally:
        store.close()


# ----------------------------------------------------------------------------- deflated variants


def test_a_deflated_dataset_whose_stream_is_cut_short_is_refused(tmp_path: Path) -> None:
    ds = make_dataset(rows=8, cols=8)
    data, _ = _encode(ds, EXPLICIT_LE)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(data) + deflater.flush()
    whole = _part10(tmp_path / "whole.dcm", ds, DEFLATED, stream)
    info = read_part10_header(whole)
    assert scan_instance(whole, info.dataset_offset, DEFLATED).sop_instance_uid == ds.SOPInstanceUID
    cut = _part10(tmp_path / "cut.dcm", ds, DEFLATED, stream[: len(stream) // 2])
    with pytest.raises(InvalidInstance, match="cut short|truncated"):
        scan_instance(cut, info.dataset_offset, DEFLATED)
    assert not list(tmp_path.glob("*.inflated"))


def test_deflated_image_frames_are_an_explicit_vr_dataset(tmp_path: Path) -> None:
    """1.2.840.10008.1.2.8.1 is walked like Explicit VR Little Endian (values collected by the walk,
    nesting guarded), not inflated as a whole (PS3.5 A.4.11, PS3.6 Table A-1)."""
    ds = _deflated_frames(make_dataset(rows=8, cols=8))
    data, _ = _encode(ds, EXPLICIT_LE)
    path = _part10(tmp_path / "dfl.dcm", ds, DEFLATED_IMAGE_FRAME_COMPRESSION, data)
    info = read_part10_header(path)
    walked = check_nesting(path, info.dataset_offset, DEFLATED_IMAGE_FRAME_COMPRESSION, collect={0x00080018})
    assert walked.complete and walked.values[0x00080018][1].rstrip(b"\x00").decode() == ds.SOPInstanceUID
    attrs = scan_instance(path, info.dataset_offset, DEFLATED_IMAGE_FRAME_COMPRESSION)
    assert attrs.transfer_syntax_uid == DEFLATED_IMAGE_FRAME_COMPRESSION
    # the frames inflate back to the pixels (the file is what PS3.5 A.4.11 describes)
    from pydicom.encaps import generate_frames

    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    assert zlib.decompress(frames[1], -zlib.MAX_WBITS) == (np.arange(64, dtype="<u2") + 1).tobytes()

    # nesting is guarded as for any walked dataset
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(65):
        outer = Dataset()
        outer.ConceptNameCodeSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ConceptNameCodeSequence
    deep = _part10(tmp_path / "deep.dcm", ds, DEFLATED_IMAGE_FRAME_COMPRESSION, _encode(ds, EXPLICIT_LE)[0])
    with pytest.raises(TooDeep):
        check_nesting(deep, info.dataset_offset, DEFLATED_IMAGE_FRAME_COMPRESSION)


# ------------------------------------------------------------------- through the server, real peers


def _good_copies(folder: Path, n: int) -> list[Path]:
    """Complete instances of MR_truncated.dcm's study (its pixel data made whole, new SOP UIDs)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out = []
    for i in range(n):
        ds = dcmread(pydicom.data.get_testdata_file("MR_truncated.dcm"))
        ds.PixelData = bytes(int(ds.Rows) * int(ds.Columns) * 2)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = 100 + i
        path = folder / f"good{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


@pytest.mark.dcmtk
@pytest.mark.pynetdicom
@pytest.mark.usefixtures("need_dcmtk")
def test_unparseable_c_store_is_refused_the_association_goes_on_and_the_study_moves(
        tmp_path: Path) -> None:
    """pynetdicom sends MR_truncated.dcm (cut inside Pixel Data) and SC_rgb_jpeg.dcm (Implicit VR bytes on a
    JPEG Baseline context) exactly as they are on disk, between two good instances of the first one's study,
    on one association (DCMTK's storescu refuses to send either file). Each bad one gets 0xC000 with an
    Error Comment naming the place and a log line; the association keeps serving (C-ECHO, the next
    C-STORE); nothing of them is stored. DCMTK movescu then moves the study to DCMTK storescp: the two
    good instances, Success."""
    import asyncio
    import logging

    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom import _config as pnd_config

    from pacskit.net.sinks import temp_files
    from pacskit.config.aetitles import AE_FILE, FileAeRegistry, RemoteAE
    from pacskit.server.server import Server
    from pacskit.config.settings import load_settings
    from pacskit.testing.peers import dcmtk_env, storescp

    truncated = pydicom.data.get_testdata_file("MR_truncated.dcm")
    mis_encoded = pydicom.data.get_testdata_file("SC_rgb_jpeg.dcm")
    good = _good_copies(tmp_path, 2)
    study = str(dcmread(truncated, stop_before_pixels=True).StudyInstanceUID)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "server.toml").write_text('ae_title = "PARSEPACS"\nport = 0\ndata_dir = "data"\n')
    settings = load_settings(tmp_path / "srv")

    async def movescu(port: int, keys: list[str]) -> str:
        args = ["-v", "-S", "-aet", "MOVESCU", "-aec", settings.ae_title, "-aem", "STORESCP"]
        for k in keys:
            args += ["-k", k]
        proc = await asyncio.create_subprocess_exec(
            dcmtk_tool("movescu"), *args, "127.0.0.1", str(port), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=dcmtk_env())
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return out.decode(errors="replace")

    def send(port: int) -> list[tuple[str, int, str]]:
        ae = AE(ae_title="PYNDSCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.4.50")
        ae.add_requested_context("1.2.840.10008.1.1")
        old = pnd_config.STORE_SEND_CHUNKED_DATASET
        pnd_config.STORE_SEND_CHUNKED_DATASET = True  # the dataset bytes as on disk, never re-encoded
        try:
            assoc = ae.associate("127.0.0.1", port, ae_title=settings.ae_title)
            assert assoc.is_established
            out = []
            for name, path in [("good0", good[0]), ("truncated", truncated), ("mis-encoded", mis_encoded)]:
                rsp = assoc.send_c_store(str(path))
                out.append((name, int(rsp.Status), str(rsp.get("ErrorComment", ""))))
            echo = assoc.send_c_echo()
            out.append(("echo", int(echo.Status), ""))
            rsp = assoc.send_c_store(str(good[1]))
            out.append(("good1", int(rsp.Status), ""))
            assoc.release()
            return out
        finally:
            pnd_config.STORE_SEND_CHUNKED_DATASET = old

    async def run() -> None:
        async with Server(settings) as server:
            records: list[logging.LogRecord] = []
            handler = logging.Handler(logging.WARNING)
            handler.emit = records.append  # type: ignore[method-assign]
            addin_log = logging.getLogger("pacskit.addin.storage")  # the add-in's own logger (base.log)
            addin_log.addHandler(handler)
            level, addin_log.level = addin_log.level, logging.WARNING  # whatever earlier tests configured
            try:
                answers = await asyncio.to_thread(send, server.port)
            finally:
                addin_log.removeHandler(handler)
                addin_log.level = level
            assert answers == [
                ("good0", 0x0000, ""),
                ("truncated", 0xC000, "dataset truncated in (7FE0,0010) PixelData"),
                ("mis-encoded", 0xC000, "not Explicit VR: bad VR in (0008,0008) ImageType"),
                ("echo", 0x0000, ""),
                ("good1", 0x0000, ""),
            ]
            logged = [r.getMessage() for r in records if "refused (0xC000)" in r.getMessage()]
            assert len(logged) == 2
            assert "8192 bytes, 8130 left" in logged[0] and "byte 1154 of the dataset" in logged[0]
            assert "does not parse as JPEG Baseline" in logged[1]
            store = server.store
            assert store.count("instances") == 2
            assert store.get_instance(str(dcmread(mis_encoded, stop_before_pixels=True).SOPInstanceUID)) is None
            blobs = list(Path(store.blobs.root).rglob("*.dcm"))  # type: ignore[attr-defined]
            assert len(blobs) == 2
            left = {str(p) for p in Path(store.temp_dir).iterdir()}
            assert not left - temp_files(store.temp_dir).spare_paths()  # nothing but empty spares
            assert store.check().ok
            with storescp(tmp_path / "scp") as scp:
                FileAeRegistry(settings.folder / AE_FILE).add(RemoteAE(title="STORESCP", host="127.0.0.1",
                                                                       port=scp.port), replace=True)
                out = await movescu(server.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"])
                assert "Received Final Move Response (Success)" in out, out
                received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                            for p in Path(scp.out_dir).glob("*.dcm")}
            assert received == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in good}

    asyncio.run(run())
