"""Sequence nesting deeper than 64 (DCMTK's limit) is refused before anything decodes the dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacskit.net.sinks import read_part10_header
from pacskit.store import DataStore, FilesystemBlobStore, InvalidInstance
from pacskit.store.nesting import TooDeep, check_nesting
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
