"""DCMTK's attribute matching test vectors, run against the query engine on every backend.

Ported from DCMTK ``dcmdata/tests/tmatch.cc`` (test ``dcmdata_attribute_matching``,
https://github.com/DCMTK/dcmtk/blob/master/dcmdata/tests/tmatch.cc): the (query, candidate, matches?)
vectors of its wildcard, date, time, UID, single value and PN checks, and its date/time query
validity checks. Each candidate value is stored in a study of its own (StudyDescription, StudyDate,
StudyTime, StudyInstanceUID or PatientName), and the query is a real C-FIND identifier; a vector passes
when the candidate's study is (or is not) among the matches.

Intentional differences, each marked ``DIFFERENCE`` below:

* ``"Hello*world!"`` against ``"Hello world!"``: DCMTK's *single value* primitive compares literally; in a
  C-FIND identifier ``*`` is a wildcard, so the engine matches it.
* ``"2017.05.12"`` and ``"12:00:00"``: DCMTK's validity checks refuse the ACR-NEMA forms while its range
  matching accepts them (``"1987.08.02"``, ``"11:23:17.123456"``); the engine accepts them everywhere.
* The date-time (DT) vectors are not ported: no DT attribute is indexed, so none is matched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pacskit.store import DataStore
from pacskit.store.query import STUDY_ROOT, InvalidQuery, compile_find
from pacskit.testing.synth import make_instance

from ._corpus import ROOT
from ._helpers import identifier, run
from .conftest import open_backend_store
from store.conftest import BACKENDS

WILDCARD = [  # StudyDescription "hello world"
    ("", True), ("*", True), ("?", False), ("?*", True), ("?ell*??l?", True), ("?ell***?*?l??", False),
    ("?ell*?**?l?*", True),
]
DATE = [  # (query, candidate StudyDate, matches)
    ("", "20170224", True), ("1987.08.02", "19870802", True), ("-20000101", "20000101", True),
    ("-20000101", "19990531", True), ("-20000101", "20010101", False), ("20000101-", "20010101", True),
    ("20000101-", "19991231", False), ("19990101-20000305", "20000101", True),
    ("19990101-20000305", "19980107", False), ("19990101-20000305", "20000306", False),
    ("19990101-20000305", "122713.114122", False), ("20160101-20181231", "20170713", True),
]
TIME = [  # (query, candidate StudyTime, matches)
    ("", "120224", True), ("11:23:17.123456", "112317.123456", True), ("-12", "120000", True),
    ("-12", "113059.654321", True), ("-12", "120000.000001", False), ("1200-", "120000.000000", True),
    ("12-", "115959.999999", False), ("11-121428.234763", "12", True),
    ("11-121428.234763", "105959.999999", False), ("11-121428.234763", "121428.234764", False),
    ("11-121428.234763", "20140909", False), ("-12", "11", True),
]
UID_CANDIDATE = "123.456.789.10"
UIDS = [
    ("", True), ("123.456.789.10", True), ("456.789.10", False), ("456.789.10\\123.456.789.10", True),
    ("456.789.10\\123.456.789.10\\456.123.789.10", True), ("456.789.10\\123.456.79.10\\456.123.789.10", False),
]
SINGLE = [  # (query, candidate StudyDescription, matches)
    ("", "Hello world!", True), ("Hello world!", "Hello world!", True), ("Hello*world!", "Hello*world!", True),
    ("Hello*world!", "Hello world!", True),  # DIFFERENCE: '*' is a wildcard in C-FIND
]
PN = [("M?ller", "^Martin", False)]
DATE_QUERIES = [
    ("17000101", True), ("30001010", True), ("-12000101", True), ("12451210-", True), ("20451210-29110114", True),
    ("204512101-29110114", False), ("20451210-29110134", False), ("3124", False),
    ("2017.05.12", True),  # DIFFERENCE: ACR-NEMA date accepted
]
TIME_QUERIES = [
    ("12", True), ("49", False), ("12:00:00", True),  # DIFFERENCE: ACR-NEMA time accepted
    ("122413.123456-13", True), ("29-13", False), ("04-25", False), ("-231211", True), ("124222-", True),
]


def _candidates() -> dict[str, dict[str, str]]:
    """study name -> attributes of the study holding one candidate value."""
    out: dict[str, dict[str, str]] = {"W": {"StudyDescription": "hello world"}}
    for i, (_, value, _) in enumerate(SINGLE):
        out[f"S{i}"] = {"StudyDescription": value}
    for value in sorted({c for _, c, _ in DATE}):
        out[f"D{value}"] = {"StudyDate": value}
    for value in sorted({c for _, c, _ in TIME}):
        out[f"T{value}"] = {"StudyTime": value}
    for _, value, _ in PN:
        out[f"N{value}"] = {"PatientName": value}
    return out


CANDIDATES = _candidates()


def _uid(name: str) -> str:
    return f"{ROOT}.99.{sorted(CANDIDATES).index(name) + 1}" if name != "U" else UID_CANDIDATE


@pytest.fixture(scope="module", params=BACKENDS)
def vectors_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataStore]:
    folder = tmp_path_factory.mktemp(f"tmatch-{request.param}")
    store = open_backend_store(request, request.param, folder)
    try:
        for name, attrs in {**CANDIDATES, "U": {}}.items():
            attrs = dict(attrs)
            patient_name = attrs.pop("PatientName", "VECTOR^PATIENT")
            path = make_instance(folder / "in" / f"{len(name)}-{abs(hash(name))}.dcm", rows=2, cols=2,
                                 study_uid=_uid(name), patient_id=f"V{sorted(CANDIDATES).index(name) if name != 'U' else 'U'}",
                                 patient_name=patient_name, attrs={"StudyDate": "", "StudyTime": "", **attrs})
            store.ingest(path, source_ae="VECTORS")
        yield store
    finally:
        store.close()


def _matches(store: DataStore, study: str, **keys: str) -> bool:
    keys.setdefault("StudyInstanceUID", _uid(study))
    found = {str(ds.StudyInstanceUID) for ds in run(store, STUDY_ROOT, "STUDY", identifier("STUDY", keys))}
    return _uid(study) in found


@pytest.mark.parametrize(("query", "expected"), WILDCARD)
def test_wildcard_vectors(vectors_store: DataStore, query: str, expected: bool) -> None:
    assert _matches(vectors_store, "W", StudyDescription=query) is expected


@pytest.mark.parametrize(("query", "candidate", "expected"), DATE)
def test_date_vectors(vectors_store: DataStore, query: str, candidate: str, expected: bool) -> None:
    assert _matches(vectors_store, f"D{candidate}", StudyDate=query) is expected


@pytest.mark.parametrize(("query", "candidate", "expected"), TIME)
def test_time_vectors(vectors_store: DataStore, query: str, candidate: str, expected: bool) -> None:
    assert _matches(vectors_store, f"T{candidate}", StudyTime=query) is expected


@pytest.mark.parametrize(("query", "expected"), UIDS)
def test_uid_list_vectors(vectors_store: DataStore, query: str, expected: bool) -> None:
    value: str | list[str] = query.split("\\") if "\\" in query else query
    found = {str(ds.StudyInstanceUID) for ds in run(vectors_store, STUDY_ROOT, "STUDY",
                                                    identifier("STUDY", {"StudyInstanceUID": value}))}
    assert (UID_CANDIDATE in found) is expected


@pytest.mark.parametrize(("index", "query", "expected"), [(i, q, e) for i, (q, _, e) in enumerate(SINGLE)])
def test_single_value_vectors(vectors_store: DataStore, index: int, query: str, expected: bool) -> None:
    assert _matches(vectors_store, f"S{index}", StudyDescription=query) is expected


@pytest.mark.parametrize(("query", "candidate", "expected"), PN)
def test_person_name_vectors(vectors_store: DataStore, query: str, candidate: str, expected: bool) -> None:
    assert _matches(vectors_store, f"N{candidate}", PatientName=query) is expected


@pytest.mark.parametrize(("keyword", "query", "valid"),
                         [("StudyDate", q, v) for q, v in DATE_QUERIES] + [("StudyTime", q, v) for q, v in TIME_QUERIES])
def test_query_validity_vectors(keyword: str, query: str, valid: bool) -> None:
    ds = identifier("STUDY", {keyword: query})
    if valid:
        compile_find(ds, STUDY_ROOT)
    else:
        with pytest.raises(InvalidQuery) as err:
            compile_find(ds, STUDY_ROOT)
        assert err.value.status == 0xC000
