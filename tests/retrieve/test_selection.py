"""The retrieve selection (pacskit.store.query.retrieve) on SQLite, PostgreSQL and MariaDB: which instances
an identifier's unique keys select, paging, a frozen selection, and identifier checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacskit.store import DataStore
from pacskit.store.query import retrieve
from pacskit.store.query.retrieve import InvalidIdentifier, RetrieveSelection, parse_identifier
from pacskit.testing.synth import make_instance

from ._util import ingest, populate, study_of


def _ds(level: str | None, **keys: object) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _select(store: DataStore, model: str, level: str, page_size: int = 500, prefetch: bool = False,
            **keys: object) -> RetrieveSelection:
    return RetrieveSelection(store.index, parse_identifier(_ds(level, **keys), model),  # type: ignore[arg-type]
                             page_size=page_size, prefetch=prefetch)


def _uids(sel: RetrieveSelection) -> list[str]:
    return [i.sop_instance_uid for i in sel]


@pytest.mark.parametrize("prefetch", [False, True], ids=["counted", "prefetched"])
def test_selection_at_every_level_of_both_models(store: DataStore, tmp_path: Path, prefetch: bool) -> None:
    archive = populate(store, tmp_path / "src", per_series=3)
    a, b, c = (study_of(archive, i) for i in range(3))
    series_a = list(archive.studies[a])
    sop = sorted(archive.sops(series=series_a[0]))
    cases = [
        ("PATIENT", "PATIENT", {"PatientID": "P1"}, archive.sops(patient="P1")),
        ("PATIENT", "PATIENT", {"PatientID": "P2"}, archive.sops(patient="P2")),
        ("PATIENT", "PATIENT", {"PatientID": "NOBODY"}, set()),
        ("PATIENT", "STUDY", {"PatientID": "P1", "StudyInstanceUID": [a, b]}, archive.sops(study=a) | archive.sops(study=b)),
        ("PATIENT", "STUDY", {"PatientID": "P2", "StudyInstanceUID": a}, set()),  # study A is not P2's
        ("PATIENT", "SERIES", {"PatientID": "P1", "StudyInstanceUID": a, "SeriesInstanceUID": series_a[1]},
         archive.sops(series=series_a[1])),
        ("PATIENT", "IMAGE", {"PatientID": "P1", "StudyInstanceUID": a, "SeriesInstanceUID": series_a[0],
                              "SOPInstanceUID": sop[:2]}, set(sop[:2])),
        ("STUDY", "STUDY", {"StudyInstanceUID": c}, archive.sops(study=c)),
        ("STUDY", "STUDY", {"StudyInstanceUID": [a, c, "1.2.3"]}, archive.sops(study=a) | archive.sops(study=c)),
        ("STUDY", "SERIES", {"StudyInstanceUID": a, "SeriesInstanceUID": series_a}, archive.sops(study=a)),
        ("STUDY", "SERIES", {"StudyInstanceUID": b, "SeriesInstanceUID": series_a[0]}, set()),  # wrong study
        ("STUDY", "SERIES", {"SeriesInstanceUID": series_a[0]}, archive.sops(series=series_a[0])),
        ("STUDY", "IMAGE", {"SOPInstanceUID": sop[2]}, {sop[2]}),
        ("STUDY", "IMAGE", {"StudyInstanceUID": a, "SeriesInstanceUID": series_a[1], "SOPInstanceUID": sop[2]}, set()),
    ]
    for model, level, keys, expected in cases:
        sel = _select(store, model, level, prefetch=prefetch, **keys)
        got = _uids(sel)
        assert set(got) == expected, (model, level, keys)
        assert len(got) == len(expected) == sel.count, (model, level, keys)
    if prefetch:  # the one-value shapes ran on statements compiled once (not the ORM each time)
        compiled = {shape[3:7] for shape in retrieve._PREFETCH_SQL if shape[0] == store.index.engine.dialect.name}
        assert {(False, False, False, True), (False, False, True, False), (True, True, True, False)} <= compiled
    sel = _select(store, "STUDY", "STUDY", prefetch=prefetch, StudyInstanceUID=a)
    items = list(sel)
    assert sel.sop_classes == [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")]
    assert all(i.size > 0 and store.blobs.path(i.blob_key) for i in items)


@pytest.mark.parametrize(("prefetch", "page_size"), [(False, 3), (True, 3), (True, 10)],
                         ids=["counted", "prefetched-larger-than-a-page", "prefetched-one-page"])
def test_selection_pages_and_is_frozen(store: DataStore, tmp_path: Path, prefetch: bool, page_size: int) -> None:
    study, series = generate_uid(), generate_uid()
    for n in range(7):
        ingest(store, make_instance(tmp_path / f"{n}.dcm", study_uid=study, series_uid=series, instance_number=n))
    sel = _select(store, "STUDY", "STUDY", page_size=page_size, prefetch=prefetch, StudyInstanceUID=study)
    assert sel.count == 7
    first = sel.page(0)
    assert len(first) == min(page_size, 7)
    # received after the selection was made: not part of it
    ingest(store, make_instance(tmp_path / "late.dcm", study_uid=study, series_uid=series))
    got = _uids(sel)
    assert len(got) == len(set(got)) == 7
    assert [i.pk for i in sel] == sorted(i.pk for i in sel)
    assert [i.pk for i in sel.page(first[1].pk)] == [i.pk for i in sel][2:2 + page_size]
    assert _select(store, "STUDY", "STUDY", prefetch=prefetch, StudyInstanceUID=study).count == 8


def test_patient_id_matches_every_issuer_and_is_case_sensitive(store: DataStore, tmp_path: Path) -> None:
    for n, (pid, issuer) in enumerate([("ID1", "A"), ("ID1", "B"), ("id1", "A")]):
        ingest(store, make_instance(tmp_path / f"{n}.dcm", patient_id=pid, attrs={"IssuerOfPatientID": issuer}))
    assert _select(store, "PATIENT", "PATIENT", PatientID="ID1").count == 2
    assert _select(store, "PATIENT", "PATIENT", PatientID="id1").count == 1


@pytest.mark.parametrize(
    ("model", "level", "keys", "status", "tag"),
    [
        ("STUDY", None, {"StudyInstanceUID": "1.2.3"}, 0xA900, 0x00080052),
        ("STUDY", "PATIENT", {"PatientID": "X"}, 0xA900, 0x00080052),
        ("PATIENT", "FRAME", {"PatientID": "X"}, 0xA900, 0x00080052),
        ("STUDY", "STUDY", {}, 0xA900, 0x0020000D),
        ("STUDY", "STUDY", {"StudyInstanceUID": ""}, 0xA900, 0x0020000D),
        ("PATIENT", "PATIENT", {"PatientID": ["A", "B"]}, 0xA900, 0x00100020),
        ("PATIENT", "PATIENT", {"PatientID": "A*"}, 0xA900, 0x00100020),
        ("STUDY", "STUDY", {"StudyInstanceUID": "1.2.3", "PatientID": "X"}, 0xA900, 0x00100020),  # not a Study Root key
        ("STUDY", "STUDY", {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.4"}, 0xA900, 0x0020000E),
        ("STUDY", "SERIES", {"StudyInstanceUID": ["1.2.3", "1.2.4"], "SeriesInstanceUID": "1.2.5"}, 0xA900, 0x0020000D),
        ("STUDY", "STUDY", {"StudyInstanceUID": "1.2/03"}, 0xC000, 0x0020000D),  # "1.2.03" is stored, so retrievable
        ("STUDY", "STUDY", {"StudyInstanceUID": "1.2.3.x*"}, 0xC000, 0x0020000D),  # a wildcard ("1.2.3.x" is stored)
        ("STUDY", "IMAGE", {"SOPInstanceUID": ["1.2.3"] * 2 + ["9" * 129]}, 0xC000, 0x00080018),  # 65 is stored
        ("STUDY", "IMAGE", {"SOPInstanceUID": [f"1.2.{n}" for n in range(1001)]}, 0xC000, 0x00080018),
        ("STUDY", "STUDY", {"StudyInstanceUID": "1.2.3", "StudyDate": "20240101-"}, 0xA900, 0x00080020),
    ],
)
def test_invalid_identifiers(model: str, level: str | None, keys: dict, status: int, tag: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we build on purpose
        ds = _ds(level, **keys)
    with pytest.raises(InvalidIdentifier) as info:
        parse_identifier(ds, model)  # type: ignore[arg-type]
    assert info.value.status == status
    assert info.value.tag == tag
    assert str(info.value)


def test_patient_level_in_study_root_when_allowed() -> None:
    keys = parse_identifier(_ds("PATIENT", PatientID="P1"), "STUDY", patient_level_in_study_root=True)
    assert keys.level == "PATIENT" and keys.patient_id == "P1"
    with pytest.raises(InvalidIdentifier):
        parse_identifier(_ds("PATIENT", PatientID="P1"), "STUDY")


def test_tolerated_identifier_elements() -> None:
    """Empty return-key templates, Specific Character Set and repeated UIDs are accepted."""
    ds = _ds("STUDY", StudyInstanceUID=["1.2.3", "1.2.3", "1.2.4"], SpecificCharacterSet="ISO_IR 100",
             PatientName="", StudyDate="", SeriesInstanceUID="")
    keys = parse_identifier(ds, "STUDY")
    assert keys.study_uids == ("1.2.3", "1.2.4") and keys.level == "STUDY"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lower = _ds("study ", StudyInstanceUID="1.2.3")
    keys = parse_identifier(lower, "PATIENT")
    assert keys.level == "STUDY" and keys.patient_id is None
