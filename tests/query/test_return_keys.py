"""Return keys: indexed keys from the index (no file read), computed counts, keys read from the stored
headers, unsupported keys empty; the character set of answers; streaming and the result cap."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from pacskit.store import DataStore
from pacskit.store.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    TooManyMatches,
    answer_charset,
    compile_find,
    find,
    set_answer_charset,
)

from ._corpus import ALL_STUDIES, CT, SR, Corpus, uid
from ._helpers import encoded, identifier, names, run

A1 = uid("A1")


class CountingOpen:
    def __init__(self, store: DataStore) -> None:
        self.calls = 0
        self._open = store.blobs.open

    def __call__(self, key: str) -> Any:
        self.calls += 1
        return self._open(key)


@pytest.fixture
def opened(loaded: DataStore, monkeypatch: pytest.MonkeyPatch) -> CountingOpen:
    counter = CountingOpen(loaded)
    monkeypatch.setattr(loaded.blobs, "open", counter)
    return counter


def test_study_counts_and_computed_keys(loaded: DataStore, opened: CountingOpen) -> None:
    (ds,) = run(loaded, STUDY_ROOT, "STUDY", {
        "StudyInstanceUID": A1, "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "",
        "ModalitiesInStudy": "", "SOPClassesInStudy": "", "NumberOfPatientRelatedStudies": "",
        "PatientName": "", "PatientID": "", "StudyDate": "", "StudyTime": "", "AccessionNumber": "",
        "StudyDescription": "", "ReferringPhysicianName": "", "StudyID": "", "PatientBirthDate": "",
        "PatientSex": "", "IssuerOfPatientID": "",
    })
    assert ds.NumberOfStudyRelatedSeries == 2
    assert ds.NumberOfStudyRelatedInstances == 3
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert set(ds.SOPClassesInStudy) == {CT, SR}
    assert ds.NumberOfPatientRelatedStudies == 2
    assert (str(ds.PatientName), ds.PatientID, ds.StudyDate, ds.StudyTime) == ("Doe^John", "PA", "20240105", "093000")
    assert (ds.AccessionNumber, ds.StudyDescription, str(ds.ReferringPhysicianName)) == ("ACC%1", "CT_Head 100%", "Ref^One")
    assert (ds.StudyID, ds.PatientBirthDate, ds.PatientSex, ds.IssuerOfPatientID) == ("1", "19700101", "M", "HOSP")
    assert ds.QueryRetrieveLevel == "STUDY"
    assert opened.calls == 0  # every key came from the index


def test_patient_and_series_counts(loaded: DataStore, opened: CountingOpen) -> None:
    (p,) = run(loaded, PATIENT_ROOT, "PATIENT", {"PatientID": "PA", "NumberOfPatientRelatedStudies": "",
                                                  "NumberOfPatientRelatedSeries": "", "NumberOfPatientRelatedInstances": ""})
    assert (p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedSeries, p.NumberOfPatientRelatedInstances) == (2, 3, 4)
    series = run(loaded, STUDY_ROOT, "SERIES", {"StudyInstanceUID": A1, "NumberOfSeriesRelatedInstances": "",
                                                 "Modality": "", "SeriesNumber": "", "SeriesDescription": "",
                                                 "BodyPartExamined": ""})
    by_uid = {str(s.SeriesInstanceUID): s for s in series}
    s1 = by_uid[uid("A1.1")]
    assert (s1.NumberOfSeriesRelatedInstances, s1.Modality, s1.SeriesNumber, s1.SeriesDescription, s1.BodyPartExamined) == (
        2, "CT", 1, "axial", "HEAD")
    assert by_uid[uid("A1.2")].NumberOfSeriesRelatedInstances == 1
    images = run(loaded, STUDY_ROOT, "IMAGE", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1"),
                                                "SOPClassUID": "", "InstanceNumber": ""})
    assert sorted((i.InstanceNumber, i.SOPClassUID) for i in images) == [(1, CT), (2, CT)]
    assert opened.calls == 0


@pytest.mark.parametrize(("model", "level", "keys", "key", "expected"), [
    (PATIENT_ROOT, "PATIENT", {"PatientID": "PA"}, "PatientAge", "055Y"),
    (STUDY_ROOT, "STUDY", {"StudyInstanceUID": A1}, "InstitutionName", "Synthetic Hospital"),
    (STUDY_ROOT, "SERIES", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1")}, "Manufacturer", "pacskit"),
    (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1"), "SOPInstanceUID": uid("A1.1.2")},
     "ImagePositionPatient", [-125.0, -125.0, 2.0]),
])
def test_keys_not_indexed_come_from_the_stored_header(loaded: DataStore, opened: CountingOpen, model: str, level: str,
                                                       keys: dict[str, str], key: str, expected: Any) -> None:
    (ds,) = run(loaded, model, level, {**keys, key: ""})
    value = ds[key].value
    assert (list(value) if isinstance(expected, list) else value) == expected
    assert opened.calls == 1


def test_header_values_decoded_with_the_files_character_set(loaded: DataStore) -> None:
    # chrH31.dcm is ISO 2022 IR 87; its InstitutionName is absent, its PatientName indexed
    (ds,) = run(loaded, STUDY_ROOT, "STUDY", {"PatientID": "H31EXAMPLE", "PatientName": "", "InstitutionName": "",
                                               "ReferringPhysicianName": ""})
    assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert ds.InstitutionName in (None, "")


def test_unsupported_keys_are_returned_empty(loaded: DataStore) -> None:
    ds = identifier("STUDY", {"StudyInstanceUID": A1, "SOPInstanceUID": "", "ReferencedStudySequence": []})
    ds.add_new(0x00090010, "LO", "")  # private
    ds.add_new(0x00091001, "LO", "")
    query = compile_find(ds, STUDY_ROOT)
    assert query.unsupported
    (answer,) = list(find(loaded, query))
    assert set(answer.keys()) == set(ds.keys())
    assert answer.SOPInstanceUID in (None, "")  # a key of a lower level
    assert answer[0x00091001].value in (None, "")
    assert len(answer.ReferencedStudySequence) == 0


def test_only_indexed_keys_is_supported(loaded: DataStore) -> None:
    assert not compile_find(identifier("STUDY", {"PatientName": "doe*", "InstitutionName": ""}), STUDY_ROOT).unsupported
    assert compile_find(identifier("STUDY", {"InstitutionName": "Synth*"}), STUDY_ROOT).unsupported


def _roundtrip(ds: Dataset) -> Dataset:
    fp = io.BytesIO()
    out = DicomFileLike(fp)
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    fp.seek(0)
    return read_dataset(fp, is_implicit_VR=False, is_little_endian=True)


@pytest.mark.parametrize(("query_charset", "patient_id", "expected"), [
    (None, "PB", None),  # ASCII: the default repertoire
    ("ISO_IR 100", "SCSGERM", "ISO_IR 100"),  # fits the peer's own character set
    ("ISO_IR 100", "SCSGREEK", "ISO_IR 192"),  # does not fit: UTF-8
    (None, "H31EXAMPLE", "ISO_IR 192"),
    ("ISO_IR 144", "SCSRUSS", "ISO_IR 144"),
    (["", "ISO 2022 IR 87"], "H31EXAMPLE", "ISO_IR 192"),
])
def test_answer_character_set(loaded: DataStore, query_charset: Any, patient_id: str, expected: str | None) -> None:
    q = identifier("STUDY", {"PatientID": patient_id, "PatientName": ""}, charset=query_charset)
    query = compile_find(encoded(q) if query_charset else q, STUDY_ROOT)
    (answer,) = list(find(loaded, query))
    name = str(answer.PatientName)
    set_answer_charset(answer, query.charset)
    assert answer.get("SpecificCharacterSet") == expected
    assert answer_charset(answer, query.charset) == expected
    assert str(_roundtrip(answer).PatientName) == name  # what the peer decodes is what we hold


def test_streamed_in_pages_gives_the_same_answers(loaded: DataStore, corpus: Corpus) -> None:
    assert names(corpus, "STUDY", run(loaded, STUDY_ROOT, "STUDY", {}, page_size=2)) == ALL_STUDIES
    assert names(corpus, "IMAGE", run(loaded, STUDY_ROOT, "IMAGE", {"SOPClassUID": ""}, relational=True,
                                      page_size=1)) == set(corpus.names["IMAGE"].values())


def test_result_cap_refuses_before_the_first_answer(loaded: DataStore) -> None:
    query = compile_find(identifier("STUDY", {}), STUDY_ROOT)
    answers = find(loaded, query, max_results=len(ALL_STUDIES) - 1)
    with pytest.raises(TooManyMatches):
        next(answers)
    assert len(list(find(loaded, query, max_results=len(ALL_STUDIES)))) == len(ALL_STUDIES)


def test_closing_the_stream_early_releases_the_cursor(loaded: DataStore) -> None:
    query = compile_find(identifier("IMAGE", {}), STUDY_ROOT, relational=True)
    for _ in range(20):  # more than the pool would allow if connections leaked
        stream = find(loaded, query, page_size=1)
        next(stream)
        stream.close()
    assert loaded.index.engine.pool.checkedout() == 0


FAST_QUERIES = [
    (PATIENT_ROOT, "PATIENT", {"PatientID": "", "PatientName": "", "PatientBirthDate": "", "PatientSex": "",
                               "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedInstances": ""}, None),
    (STUDY_ROOT, "STUDY", {"PatientName": "", "PatientID": "", "StudyDate": "", "StudyTime": "", "AccessionNumber": "",
                           "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": "", "StudyDescription": "",
                           "ReferringPhysicianName": "", "RetrieveAETitle": ""}, None),
    (STUDY_ROOT, "STUDY", {"PatientName": "", "StudyDescription": ""}, "ISO_IR 100"),
    (STUDY_ROOT, "STUDY", {"PatientName": "", "StudyDescription": ""}, "ISO_IR 144"),
    (STUDY_ROOT, "STUDY", {"PatientName": "", "StudyDescription": ""}, ["", "ISO 2022 IR 87"]),
    (STUDY_ROOT, "SERIES", {"Modality": "", "SeriesNumber": "", "SeriesDescription": "", "BodyPartExamined": "",
                            "NumberOfSeriesRelatedInstances": "", "StudyInstanceUID": ""}, None),
    (STUDY_ROOT, "IMAGE", {"SOPClassUID": "", "InstanceNumber": "", "StudyInstanceUID": "", "SeriesInstanceUID": "",
                           "PatientName": ""}, None),
]


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
@pytest.mark.parametrize(("model", "level", "keys", "charset"), FAST_QUERIES)
def test_direct_encoding_is_byte_identical_to_pydicom(loaded: DataStore, model: str, level: str,
                                                      keys: dict[str, str], charset: Any, transfer_syntax: str) -> None:
    from pacskit.dicom.codec import encode_dataset
    from pacskit.store.query import find_encoded
    from pacskit.store.query.encode import _FastEncoder

    q = identifier(level, keys, charset=charset)
    query = compile_find(encoded(q) if charset else q, model, relational=True)
    fixed = {0x00080054: "QRPACS"}
    assert _FastEncoder.make(query, transfer_syntax, fixed) is not None  # the fast path is taken
    fast = sorted(find_encoded(loaded, query, transfer_syntax, fixed=fixed))
    slow = []
    for ds in find(loaded, query):
        if 0x00080054 in ds:
            ds[0x00080054].value = "QRPACS"
        slow.append(encode_dataset(set_answer_charset(ds, query.charset), transfer_syntax))
    assert len(fast) > 1
    assert fast == sorted(slow)


def test_header_keys_take_the_pydicom_path(loaded: DataStore) -> None:
    from pacskit.store.query import find_encoded
    from pacskit.store.query.encode import _FastEncoder

    query = compile_find(identifier("STUDY", {"StudyInstanceUID": A1, "InstitutionName": ""}), STUDY_ROOT)
    assert _FastEncoder.make(query, "1.2.840.10008.1.2.1", {}) is None
    (data,) = find_encoded(loaded, query, "1.2.840.10008.1.2.1")
    assert b"Synthetic Hospital" in data


def test_received_query_values_decode_without_pydicom_warnings(loaded: DataStore, corpus: Corpus) -> None:
    """``C*``, ``20240105-`` or ``09:30-`` are valid C-FIND values though not valid CS/DA/TM values: the
    engine must not make pydicom warn (and log) for every such query."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # building the test identifier with pydicom does warn
        received = encoded(identifier("STUDY", {"ModalitiesInStudy": "C*", "StudyDate": "20240105-",
                                                "StudyTime": "09:30-", "StudyDescription": "*"}, charset="ISO_IR 100"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = list(find(loaded, compile_find(received, STUDY_ROOT)))
    assert [str(w.message) for w in caught] == []
    assert names(corpus, "STUDY", answers) == {"A1", "B1"}  # CT/CR from 5 January 09:30 on


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_indexed_key_sent_with_a_wrong_vr_is_answered_in_its_own_vr(loaded: DataStore, transfer_syntax: str) -> None:
    """Explicit VR lets a peer send ModalitiesInStudy as IS (a fuzz finding): the answer is built from
    the index, so it is encoded in the key's dictionary VR (CS), not the caller's (IS "CT" would not encode)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from pacskit.dicom.codec import encode_dataset
    from pacskit.store.query import find_encoded

    q = identifier("STUDY", {"StudyInstanceUID": A1})
    q[0x00080061] = RawDataElement(Tag(0x00080061), "IS", 0, b"", 0, False, True)  # ModalitiesInStudy as IS
    q[0x00200010] = RawDataElement(Tag(0x00200010), "DS", 2, b"1 ", 0, False, True)  # StudyID (SH) as DS
    query = compile_find(encoded(q), STUDY_ROOT)
    (ds,) = list(find(loaded, query))
    assert (ds["ModalitiesInStudy"].VR, list(ds.ModalitiesInStudy)) == ("CS", ["CT", "SR"])
    assert (ds["StudyID"].VR, ds.StudyID) == ("SH", "1")
    (data,) = find_encoded(loaded, query, transfer_syntax)
    assert data == encode_dataset(set_answer_charset(ds, query.charset), transfer_syntax)
    back = read_dataset(io.BytesIO(data), is_implicit_VR=transfer_syntax.endswith(".2"), is_little_endian=True)
    assert list(back.ModalitiesInStudy) == ["CT", "SR"]
