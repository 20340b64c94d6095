"""The ingest walk (:func:`scan_instance`) must index exactly what pydicom's parse gives.

Every file of pydicom's corpus (test files and character-set files) is read both ways; the two must
agree field by field, or both refuse the file; the files that do not parse to their end
(test_parse_to_end.UNPARSEABLE) are refused by the walk, whatever pydicom makes of them.
"""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest

from pacskit.dicom.part10 import read_part10_header
from pacskit.dicom.walker import TooDeep
from pacskit.store.index.extract import InvalidInstance, UnparseableDataset, read_index_attributes, scan_instance

from .test_parse_to_end import UNPARSEABLE

_ROOT = Path(pydicom.data.__file__).parent
_CORPUS = sorted(p for p in [*(_ROOT / "test_files").rglob("*"), *(_ROOT / "charset_files").rglob("*")]
                 if p.is_file() and p.suffix.lower() in (".dcm", "") and not p.name.startswith("."))


def _part10(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _has_meta(path: Path) -> bool:
    """Files whose File Meta lacks the UIDs are refused before either reader runs."""
    try:
        read_part10_header(path)
    except ValueError:
        return False
    return True


_FILES = [p for p in _CORPUS if _part10(p) and _has_meta(p)]


def test_corpus_is_there() -> None:
    assert len(_FILES) > 60


@pytest.mark.parametrize("path", _FILES, ids=lambda p: str(p.relative_to(_ROOT)))
def test_walk_indexes_what_pydicom_reads(path: Path) -> None:
    header = read_part10_header(path)
    if path.name in UNPARSEABLE:  # pydicom reads what is there; the walk proves the dataset is incomplete
        with pytest.raises(UnparseableDataset):
            scan_instance(path, header.dataset_offset, header.transfer_syntax)
        return
    try:
        expected = read_index_attributes(path)
    except InvalidInstance:
        with pytest.raises((InvalidInstance, TooDeep)):
            scan_instance(path, header.dataset_offset, header.transfer_syntax)
        return
    got = scan_instance(path, header.dataset_offset, header.transfer_syntax, expected.source_ae)
    assert got == expected


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
@pytest.mark.parametrize("undefined_length", [True, False])
def test_walk_collects_the_request_attributes_sequence(tmp_path: Path, transfer_syntax: str,
                                                       undefined_length: bool) -> None:
    """The walk hands back a top-level sequence's items, however its length is encoded and whatever
    follows or nests in it; ingest then indexes the same items pydicom reads."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from pacskit.testing.synth import make_instance

    def item(accession: str | None, requested: str, step: str | None) -> Dataset:
        ds = Dataset()
        if accession is not None:
            ds.AccessionNumber = accession
        ds.RequestedProcedureID = requested
        if step is not None:
            ds.ScheduledProcedureStepID = step
        code = Dataset()  # a nested sequence the walk must step through
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X1", "99TEST", "test"
        ds.RequestedProcedureCodeSequence = Sequence([code])
        return ds

    path = make_instance(tmp_path / "req.dcm", rows=4, cols=4, transfer_syntax=transfer_syntax, attrs={
        "RequestAttributesSequence": Sequence([item("ACC1", "RP1", "SPS1"), item(None, "RP2", None)]),
        "AcquisitionDateTime": "20240105103000",
    })
    ds = dcmread(path)
    for elem in (ds["RequestAttributesSequence"], *(i["RequestedProcedureCodeSequence"] for i in ds.RequestAttributesSequence)):
        elem.is_undefined_length = undefined_length
    for it in ds.RequestAttributesSequence:
        it.is_undefined_length_sequence_item = undefined_length
    ds.save_as(path, enforce_file_format=True)

    header = read_part10_header(path)
    from pacskit.store.index.extract import REQUEST_ATTRIBUTES_SEQUENCE, WALK_TAGS
    from pacskit.dicom.walker import check_nesting

    walk = check_nesting(path, header.dataset_offset, header.transfer_syntax, collect=WALK_TAGS)
    assert walk.complete and REQUEST_ATTRIBUTES_SEQUENCE in walk.values  # the walk itself, not pydicom's fallback
    walked = scan_instance(path, header.dataset_offset, header.transfer_syntax)
    expected = (("ACC1", "RP1", "SPS1"), (None, "RP2", None))
    assert walked.request_attributes == expected
    assert read_index_attributes(path).request_attributes == expected
    assert walked == read_index_attributes(path)  # and nothing after the sequence was lost
    assert walked.acquisition_datetime == "20240105103000"
