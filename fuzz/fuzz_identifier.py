#!/usr/bin/env python3
"""Fuzz the C-FIND identifier translator: identifier bytes -> pydicom -> ``compile_find`` -> SQL.

The first input byte picks how the rest is read: bit 0 the transfer syntax (implicit / explicit VR
little endian, the two every C-FIND peer may use), bit 1 the information model (Patient / Study Root),
bit 2 relational queries. The rest is decoded by pydicom as the engine does for a received identifier
and every element is read once; an input pydicom cannot decode is not ours (the query add-in answers
it 0xC000) and is skipped. Then :func:`pacskit.store.query.compile_find` must either compile it or
refuse it with :class:`~pacskit.store.query.InvalidQuery` (a DIMSE status); a compiled query is run
against a small SQLite store (:func:`~pacskit.store.query.find`, at most 5 answers, where
``TooManyMatches`` is the documented refusal). Any other exception is a finding: an identifier a peer
can send made the translator or the SQL fail in a way the add-in would only report as "cannot decode".

Seeds: identifiers at every level of both models with single values, wildcards (and SQL
metacharacters), UID lists, date and time ranges, a PN with component groups, a sequence key, a
Specific Character Set.

    python fuzz/fuzz_identifier.py -max_total_time=60
"""

from __future__ import annotations

import io
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import main  # noqa: E402

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filebase import DicomFileLike  # noqa: E402
from pydicom.filereader import read_dataset  # noqa: E402
from pydicom.filewriter import write_dataset  # noqa: E402

from pacskit.store import DataStore, FilesystemBlobStore  # noqa: E402
from pacskit.store.query import PATIENT_ROOT, STUDY_ROOT, InvalidQuery, TooManyMatches, compile_find, find  # noqa: E402

_store: DataStore | None = None


def _open_store() -> DataStore:
    """A SQLite store holding two synthetic instances, so compiled queries run against real rows."""
    from pacskit.testing.synth import make_instance

    folder = Path(tempfile.mkdtemp(prefix="pacskit-fuzz-identifier-"))
    store = DataStore.open(f"sqlite:///{folder}/index.db", blobs=FilesystemBlobStore(folder / "blobs"))
    for i, (pid, name) in enumerate([("PAT%_1", "Doe^John"), ("PAT[2]", "Müller^Hans=ミュラー")]):
        path = make_instance(Path(store.temp_dir) / f"seed{i}.dcm", rows=2, cols=2, patient_id=pid, patient_name=name,
                             attrs={"StudyDate": "2024010" + str(i + 1), "AccessionNumber": f"ACC_{i}",
                                    "SpecificCharacterSet": "ISO_IR 192"})
        store.ingest(path, source_ae="FUZZ")
    return store


def _touch(ds: Dataset) -> None:
    """Read every element (recursively) so pydicom's lazy conversion errors happen here."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _touch(item)
        else:
            _ = elem.value


def decode_identifier(data: bytes, implicit: bool) -> Dataset | None:
    """The identifier as the engine would hand it over, or None if pydicom cannot decode it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(io.BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)
            _touch(ds)
        return ds
    except Exception:  # noqa: BLE001 - pydicom raises many kinds; not the code under test
        return None


def one_input(data: bytes) -> None:
    global _store
    if not data:
        return
    flags, body = data[0], data[1:]
    identifier = decode_identifier(body, implicit=not flags & 1)
    if identifier is None:
        return
    model = STUDY_ROOT if flags & 2 else PATIENT_ROOT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            query = compile_find(identifier, model, relational=bool(flags & 4))
    except InvalidQuery:
        return
    if _store is None:
        _store = _open_store()
    try:
        for _ in find(_store, query, max_results=5):
            pass
    except TooManyMatches:
        pass


# --------------------------------------------------------------------------- seeds


def encode_identifier(keys: dict[str, Any], implicit: bool) -> bytes:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    fp = io.BytesIO()
    out = DicomFileLike(fp)
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, ds)
    return fp.getvalue()


def seeds() -> list[bytes]:
    request = Dataset()
    request.AccessionNumber = "ACC_*"
    request.RequestedProcedureID = ""
    cases: list[tuple[int, dict[str, Any]]] = [
        (0b000, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PAT%*", "PatientName": "doe*"}),
        (0b011, {"QueryRetrieveLevel": "STUDY", "PatientID": "*", "StudyDate": "20240101-20240105",
                 "StudyTime": "1000-", "AccessionNumber": "ACC?0", "StudyInstanceUID": "",
                 "ModalitiesInStudy": ["CT", "M?"], "NumberOfStudyRelatedInstances": ""}),
        (0b010, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ["1.2.3", "1.2.4"], "StudyDescription": "*[1]"}),
        (0b011, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "",
                 "Modality": "CT", "SeriesNumber": "1", "RequestAttributesSequence": [request]}),
        (0b001, {"QueryRetrieveLevel": "IMAGE", "PatientID": "PAT[2]", "StudyInstanceUID": "1.2.3",
                 "SeriesInstanceUID": "1.2.3.1", "SOPInstanceUID": "", "AcquisitionDateTime": "2024-20250101120000+0100"}),
        (0b110, {"SpecificCharacterSet": "ISO_IR 192", "QueryRetrieveLevel": "STUDY",
                 "PatientName": "Müller^Hans=ミュラー", "ReferringPhysicianName": "*^T*"}),
    ]
    return [bytes([flags]) + encode_identifier(keys, implicit=not flags & 1) for flags, keys in cases]


if __name__ == "__main__":
    main("identifier", one_input, seeds)
