"""The worklist and MPPS stores on SQLite, PostgreSQL and MariaDB: matching (one statement, bound
parameters), writes, the MPPS state rules and their effect on the worklist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import text
from sqlalchemy.dialects import mysql, postgresql, sqlite

from pacskit.client import apply_keys
from pacskit.store import Index
from pacskit.store.workflow.mpps import ERROR_ID_NO_LONGER_UPDATABLE, MppsRefused, MppsStore
from pacskit.store.query import InvalidQuery
from pacskit.store.workflow.worklist import (
    InvalidEntry,
    WorklistStore,
    compile_worklist_find,
    entry_from_json,
)
from store.conftest import BACKENDS, mariadb_server, postgres_server  # noqa: F401 - fixtures

SPS = "ScheduledProcedureStepSequence"


def entry(**values: Any) -> Dataset:
    """An entry from keyword=value pairs; SPS_<keyword> go into the step's item."""
    top = {k: v for k, v in values.items() if not k.startswith("SPS_")}
    step = {k[4:]: v for k, v in values.items() if k.startswith("SPS_")}
    return entry_from_json({**top, SPS: [step]})


@pytest.fixture(scope="module", params=BACKENDS)
def workflow_index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    """A migrated database of this module's own on each backend (emptied before every test)."""
    if request.param == "sqlite":
        url: Any = f"sqlite:///{tmp_path_factory.mktemp('wl-store')}/index.db"
    else:
        url = request.getfixturevalue("postgres_server" if request.param == "postgresql" else "mariadb_server").create()
    index = Index.open(url)
    index.migrate()
    try:
        yield index
    finally:
        index.close()


@pytest.fixture
def worklist(workflow_index: Index) -> Iterator[WorklistStore]:
    index = workflow_index
    with index.engine.begin() as conn:
        for table in ("performed_step_links", "performed_procedure_steps", "worklist_station_aes", "worklist_items"):
            conn.execute(text(f"DELETE FROM {table}"))
    store = WorklistStore(index)
    store.add(entry(PatientName="Müller^Anna", PatientID="P1", AccessionNumber="A1", StudyInstanceUID="1.2.3.1",
                    SPS_Modality="CT", SPS_ScheduledStationAETitle="CT1\\CT2", SPS_ScheduledProcedureStepID="S1",
                    SPS_ScheduledProcedureStepStartDate="20261201", SPS_ScheduledProcedureStepStartTime="0900",
                    SPS_ScheduledPerformingPhysicianName="House^Gregory", SPS_ScheduledProcedureStepStatus="SCHEDULED"))
    store.add(entry(PatientName="Doe^John", PatientID="P2", AccessionNumber="A2", StudyInstanceUID="1.2.3.2",
                    SPS_Modality="MR", SPS_ScheduledStationAETitle="MR1", SPS_ScheduledProcedureStepID="S2",
                    SPS_ScheduledProcedureStepStartDate="20261202", SPS_ScheduledProcedureStepStartTime="143000"))
    store.add(entry(PatientName="Doe^Jane", PatientID="P3", AccessionNumber="A%_3", StudyInstanceUID="1.2.3.3",
                    SPS_Modality="CT", SPS_ScheduledStationAETitle="CT2", SPS_ScheduledProcedureStepID="S3",
                    SPS_ScheduledProcedureStepStartDate="20261202", SPS_ScheduledProcedureStepStartTime="080000"))
    yield store


def ids(store: WorklistStore, **keys: Any) -> list[str]:
    q = Dataset()
    apply_keys(q, {"AccessionNumber": "", f"{SPS}[0].ScheduledProcedureStepID": ""})
    apply_keys(q, keys)
    return sorted(str(a[SPS][0].ScheduledProcedureStepID) for a in store.find(compile_worklist_find(q)))


@pytest.mark.parametrize(("keys", "expected"), [
    ({}, ["S1", "S2", "S3"]),
    ({f"{SPS}[0].ScheduledStationAETitle": "CT2"}, ["S1", "S3"]),
    ({f"{SPS}[0].ScheduledStationAETitle": "CT1\\MR1"}, ["S1", "S2"]),
    ({f"{SPS}[0].ScheduledStationAETitle": "C?2"}, ["S1", "S3"]),
    ({f"{SPS}[0].Modality": "CT"}, ["S1", "S3"]),
    ({f"{SPS}[0].ScheduledProcedureStepStartDate": "20261202"}, ["S2", "S3"]),
    ({f"{SPS}[0].ScheduledProcedureStepStartDate": "20261201-20261202",
      f"{SPS}[0].ScheduledProcedureStepStartTime": "1000-1000"}, ["S3"]),
    ({f"{SPS}[0].ScheduledProcedureStepStartTime": "-0900"}, ["S1", "S3"]),
    ({"PatientName": "doe*"}, ["S2", "S3"]),
    ({"PatientName": "MÜLLER*"}, ["S1"]),
    ({f"{SPS}[0].ScheduledPerformingPhysicianName": "house^*"}, ["S1"]),
    ({"AccessionNumber": "A%_3"}, ["S3"]),  # SQL wildcards are literal
    ({"AccessionNumber": "A%*"}, ["S3"]),
    ({"StudyInstanceUID": "1.2.3.1\\1.2.3.3"}, ["S1", "S3"]),
    ({f"{SPS}[0].ScheduledProcedureStepStatus": "SCHEDULED"}, ["S1"]),
    ({"PatientID": "P2", f"{SPS}[0].Modality": "CT"}, []),
])
def test_matching(worklist: WorklistStore, keys: dict[str, str], expected: list[str]) -> None:
    assert ids(worklist, **keys) == expected


def test_statement_binds_every_value() -> None:
    q = Dataset()
    apply_keys(q, {"PatientName": "O'Brien*", f"{SPS}[0].ScheduledStationAETitle": "CT'1"})
    statement = compile_worklist_find(q).statement
    for dialect in (sqlite.dialect(), postgresql.dialect(), mysql.dialect()):
        sql = str(statement.compile(dialect=dialect))
        assert "O'Brien" not in sql and "CT'1" not in sql and "BRIEN" not in sql


@pytest.mark.parametrize(("keys", "status"), [
    ({f"{SPS}[0].ScheduledProcedureStepStartDate": "2026-13-01"}, 0xC000),
    ({f"{SPS}[0].ScheduledProcedureStepStartTime": "25"}, 0xC000),
    ({"StudyInstanceUID": "1.2.*"}, 0xC000),
    ({f"{SPS}[1].Modality": "CT"}, 0xA900),  # two items
])
def test_invalid_identifiers(keys: dict[str, str], status: int) -> None:
    q = Dataset()
    apply_keys(q, keys)
    with pytest.raises(InvalidQuery) as info:
        compile_worklist_find(q)
    assert info.value.status == status and info.value.comment


def test_returns_keys_not_in_columns_and_whole_sequences(worklist: WorklistStore) -> None:
    worklist.add(entry(PatientID="P9", MedicalAlerts="LATEX", SPS_ScheduledProcedureStepID="S9",
                       SPS_ScheduledProtocolCodeSequence=[{"CodeValue": "X1", "CodingSchemeDesignator": "L",
                                                           "CodeMeaning": "Head"}]))
    q = Dataset()
    apply_keys(q, {"PatientID": "P9", "MedicalAlerts": "", "PatientWeight": "", SPS: {}})
    (answer,) = list(worklist.find(compile_worklist_find(q)))
    assert answer.MedicalAlerts == "LATEX" and answer.PatientWeight is None
    assert answer[SPS][0].ScheduledProtocolCodeSequence[0].CodeValue == "X1"  # empty item: the whole item
    q = Dataset()
    apply_keys(q, {"PatientID": "P9", f"{SPS}[0].ScheduledProtocolCodeSequence[0].CodeValue": ""})
    (answer,) = list(worklist.find(compile_worklist_find(q)))
    code = answer[SPS][0].ScheduledProtocolCodeSequence[0]
    assert code.CodeValue == "X1" and "CodeMeaning" not in code  # an item: its keys only


def test_answers_in_the_right_character_set(worklist: WorklistStore) -> None:
    q = Dataset()
    apply_keys(q, {"PatientID": "P1", "PatientName": ""})
    (utf8,) = list(worklist.find(compile_worklist_find(q)))
    assert utf8.SpecificCharacterSet == "ISO_IR 192" and utf8.PatientName == "Müller^Anna"
    q.SpecificCharacterSet = "ISO_IR 100"
    (latin1,) = list(worklist.find(compile_worklist_find(q)))
    assert latin1.SpecificCharacterSet == "ISO_IR 100"
    q = Dataset()
    apply_keys(q, {"PatientID": "P2", "PatientName": ""})
    (ascii_only,) = list(worklist.find(compile_worklist_find(q)))
    assert "SpecificCharacterSet" not in ascii_only


def test_write_operations(worklist: WorklistStore) -> None:
    first = worklist.entries()[0]
    updated = worklist.update(first.id, entry(PatientName="Müller^Anna^Maria", SPS_Modality="MR"))
    assert updated is not None
    assert str(updated.dataset.PatientName) == "Müller^Anna^Maria"
    assert updated.step.Modality == "MR" and updated.step.ScheduledProcedureStepID == "S1"  # merged key by key
    assert ids(worklist, **{f"{SPS}[0].Modality": "MR"}) == ["S1", "S2"]
    assert worklist.update(999999, entry(PatientID="X")) is None
    # replace: the same accession + requested procedure + SPS ID is one step
    again = worklist.add(entry(PatientID="P2", AccessionNumber="A2", SPS_ScheduledProcedureStepID="S2",
                               SPS_Modality="US"), replace=True)
    assert len(worklist.entries()) == 3 and ids(worklist, **{f"{SPS}[0].Modality": "US"}) == ["S2"]
    assert worklist.remove(again[0]) and not worklist.remove(again[0])
    two = worklist.add(entry_from_json({"PatientID": "P5", SPS: [{"ScheduledProcedureStepID": "S5a"},
                                                                {"ScheduledProcedureStepID": "S5b"}]}))
    assert len(two) == 2 and ids(worklist, PatientID="P5") == ["S5a", "S5b"]
    with pytest.raises(InvalidEntry):
        entry_from_json({"NotAKeyword": "x"})
    broken = Dataset()
    broken.add_new(0x00400100, "LO", "not a sequence")
    with pytest.raises(InvalidEntry):
        worklist.add_many([entry(PatientID="P6"), broken])
    assert ids(worklist, PatientID="P6") == []  # all or nothing


def test_mpps_state_rules_move_the_worklist(worklist: WorklistStore) -> None:
    mpps = MppsStore(worklist.index)
    s1 = next(e for e in worklist.entries() if e.step.ScheduledProcedureStepID == "S1")
    create = entry_from_json({
        "PatientID": "P1", "Modality": "CT", "PerformedStationAETitle": "CT1", "PerformedProcedureStepID": "PPS1",
        "PerformedProcedureStepStartDate": "20261201", "PerformedProcedureStepStartTime": "0901",
        "PerformedProcedureStepStatus": "IN PROGRESS",
        "ScheduledStepAttributesSequence": [{"StudyInstanceUID": "1.2.3.1", "AccessionNumber": "A1",
                                             "ScheduledProcedureStepID": "S1"}],
    })
    step = mpps.create("1.2.826.0.1.1", create, calling_ae="CT1")
    assert step.worklist_ids == [s1.id] and worklist.get(s1.id).step.ScheduledProcedureStepStatus == "STARTED"
    with pytest.raises(MppsRefused) as dup:
        mpps.create("1.2.826.0.1.1", create)
    assert dup.value.status == 0x0111
    with pytest.raises(MppsRefused) as missing:
        mpps.update("1.2.826.0.1.1", entry_from_json({"PerformedProcedureStepStatus": "COMPLETED"}))
    assert missing.value.status == 0x0120 and mpps.get("1.2.826.0.1.1").status == "IN PROGRESS"
    done = entry_from_json({"PerformedProcedureStepStatus": "COMPLETED", "PerformedProcedureStepEndDate": "20261201",
                            "PerformedProcedureStepEndTime": "0930",
                            "PerformedSeriesSequence": [{"SeriesInstanceUID": "1.2.3.1.1"}]})
    assert mpps.update("1.2.826.0.1.1", done).status == "COMPLETED"
    assert worklist.get(s1.id).step.ScheduledProcedureStepStatus == "COMPLETED"
    assert ids(worklist, **{f"{SPS}[0].ScheduledProcedureStepStatus": "COMPLETED"}) == ["S1"]
    with pytest.raises(MppsRefused) as final:
        mpps.update("1.2.826.0.1.1", done)
    assert (final.value.status, final.value.error_id) == (0x0110, ERROR_ID_NO_LONGER_UPDATABLE)
    hidden = compile_worklist_find(Dataset(), hide_statuses=["COMPLETED"])
    assert len(list(worklist.find(hidden))) == 2
    assert [p.sop_instance_uid for p in mpps.steps(status="COMPLETED")] == ["1.2.826.0.1.1"]
