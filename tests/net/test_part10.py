"""Reading Part 10 files for sending: the File Meta Information without pydicom, and a small file's
dataset in the same single read (``read_part10``), checked against pydicom's reading of the same files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset

from pacskit.dicom.part10 import read_part10, read_part10_header
from pacskit.testing.synth import make_instance


def test_small_file_read_whole_once(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    make_instance(path, rows=8, cols=8)
    raw = path.read_bytes()
    info, data = read_part10(path, whole_below=len(raw))
    ds = dcmread(path)
    assert (info.sop_class_uid, info.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert info.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert info.file_size == len(raw)
    assert data == raw[info.dataset_offset :]
    assert data[:2] == b"\x08\x00"  # the dataset starts at group 0008
    # one byte over the limit: the meta only, the dataset is left to be streamed
    info2, none = read_part10(path, whole_below=len(raw) - 1)
    assert none is None and info2 == info == read_part10_header(path)


def test_meta_longer_than_the_first_read(tmp_path: Path) -> None:
    """A File Meta Information group bigger than the first read (a 40 KB Private Information element)
    is read on until its end, whether or not the file is read whole."""
    path = tmp_path / "long-meta.dcm"
    make_instance(path, rows=4, cols=4)
    ds = dcmread(path)
    meta = FileMetaDataset(ds.file_meta)
    meta.PrivateInformationCreatorUID = "1.2.3.4"
    meta.PrivateInformation = b"\x01" * 40_000
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    for whole_below in (0, len(raw)):
        info, data = read_part10(path, whole_below=whole_below)
        assert info.sop_instance_uid == ds.SOPInstanceUID
        assert info.dataset_offset > 40_000
        assert raw[info.dataset_offset : info.dataset_offset + 2] == b"\x08\x00"
        assert data == (raw[info.dataset_offset :] if whole_below else None)


@pytest.mark.parametrize("cut", [100, 140, 200])
def test_truncated_or_foreign_files_are_refused(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "a.dcm"
    make_instance(path, rows=4, cols=4)
    raw = path.read_bytes()
    short = tmp_path / "short.dcm"
    short.write_bytes(raw[:cut])  # inside the preamble, or inside the meta group
    for whole_below in (0, 1 << 20):
        with pytest.raises(ValueError, match="not a DICOM Part 10 file|truncated|lacks"):
            read_part10(short, whole_below=whole_below)
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match="no DICM prefix"):
        read_part10(foreign, whole_below=1 << 20)
