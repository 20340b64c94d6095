"""The ingest walk (:func:`scan_instance`) must index exactly what pydicom's parse gives.

Every file of pydicom's corpus (test files and character-set files) is read both ways; the two must
agree field by field, or both refuse the file.
"""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest

from pacskit.net.sinks import read_part10_header
from pacskit.store.extract import InvalidInstance, read_index_attributes, scan_instance
from pacskit.store.nesting import TooDeep

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
    try:
        expected = read_index_attributes(path)
    except InvalidInstance:
        with pytest.raises((InvalidInstance, TooDeep)):
            scan_instance(path, header.dataset_offset, header.transfer_syntax)
        return
    got = scan_instance(path, header.dataset_offset, header.transfer_syntax, expected.source_ae)
    assert got == expected
