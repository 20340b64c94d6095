#!/usr/bin/env python3
"""Fuzz what ingest runs on every received file before pydicom sees it: the Part 10 header reader,
the sequence-nesting walker and the one-pass attribute scan.

Each input is written as a file and read exactly as :meth:`pacskit.store.DataStore.ingest` reads it:
:func:`pacskit.dicom.part10.read_part10_header` (documented failure: ``ValueError``), then
:func:`pacskit.dicom.walker.check_nesting` (``TooDeep``) and
:func:`pacskit.store.index.extract.scan_instance` (``InvalidInstance``, ``TooDeep``; deflated datasets are
inflated with a cap). When the header cannot be read, the walk still runs on the bytes after the
128-byte preamble with each transfer syntax, so the walker sees every input. Any other exception,
a ``RecursionError`` included, is a finding.

Seeds (built here with :mod:`pacskit.testing.synth`): small CTs in implicit, explicit little, big
endian and deflated transfer syntaxes, one with a nested sequence of defined and one of undefined
lengths, and one with an encapsulated (JPEG-LS-labelled) pixel data element.

    python fuzz/fuzz_header.py -max_total_time=60
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import main  # noqa: E402

from pacskit.dicom.part10 import read_part10_header  # noqa: E402
from pacskit.store.index.extract import InvalidInstance, scan_instance  # noqa: E402
from pacskit.dicom.walker import TooDeep, check_nesting  # noqa: E402

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
WALKED_SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, BIG_ENDIAN, DEFLATED)

_path = os.path.join(tempfile.mkdtemp(prefix="pacskit-fuzz-header-"), "input.dcm")


def one_input(data: bytes) -> None:
    with open(_path, "wb") as fh:
        fh.write(data)
    try:
        header = read_part10_header(_path)
    except ValueError:
        for syntax in WALKED_SYNTAXES:
            try:
                check_nesting(_path, min(128, len(data)), syntax)
            except TooDeep:
                pass
        return
    offset = min(header.dataset_offset, len(data))
    try:
        check_nesting(_path, offset, header.transfer_syntax)
    except TooDeep:
        pass
    try:
        scan_instance(_path, offset, header.transfer_syntax, header.source_ae)
    except (InvalidInstance, TooDeep):
        pass


def seeds() -> list[bytes]:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from pacskit.testing.synth import make_instance

    def nested(depth: int) -> Sequence:
        item = Dataset()
        item.CodeValue = "X"
        if depth:
            item.ContentSequence = nested(depth - 1)
        return Sequence([item])

    out: list[bytes] = []
    with tempfile.TemporaryDirectory() as folder:
        cases = [
            (IMPLICIT_LE, {}),
            (EXPLICIT_LE, {"ReferencedStudySequence": nested(3), "RequestAttributesSequence": nested(1)}),
            (BIG_ENDIAN, {"ContentSequence": nested(5)}),
            (DEFLATED, {"ContentSequence": nested(2)}),
        ]
        for i, (syntax, attrs) in enumerate(cases):
            path = make_instance(Path(folder) / f"{i}.dcm", rows=2, cols=2, transfer_syntax=syntax, attrs=attrs)
            out.append(path.read_bytes())
        # undefined-length sequence and items, written by pydicom when the lengths are unknown
        import pydicom

        ds = pydicom.dcmread(Path(folder) / "1.dcm")
        ds.ReferencedStudySequence.is_undefined_length = True
        for item in ds.ReferencedStudySequence:
            item.is_undefined_length_sequence_item = True
        ds.save_as(Path(folder) / "undefined.dcm", enforce_file_format=True)
        out.append((Path(folder) / "undefined.dcm").read_bytes())
    return out


if __name__ == "__main__":
    main("header", one_input, seeds)
