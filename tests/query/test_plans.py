"""The statements of the benchmark's query kinds use indexes (SQLite's EXPLAIN QUERY PLAN: no full
SCAN of any table), so they stay fast at 1,000,000 instances. Speed itself is measured by
benchmarks/query.py, never asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy.dialects import sqlite

from pacskit.store import DataStore, FilesystemBlobStore
from pacskit.store.query import STUDY_ROOT, compile_find
from pacskit.testing import bulk


@pytest.fixture(scope="module")
def bulk_store(tmp_path_factory: pytest.TempPathFactory) -> DataStore:
    folder = tmp_path_factory.mktemp("plans")
    store = DataStore.open(f"sqlite:///{folder}/index.db", blobs=FilesystemBlobStore(Path(folder) / "blobs"))
    bulk.bulk_load(store, bulk.BulkShape(patients=3000, studies_per_patient=1, series_per_study=2,
                                         instances_per_series=5))
    with store.index.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    yield store
    store.close()


def _statement(level: str, **keys: str) -> str:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber",
                    "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
    if level == "IMAGE":
        ds.SOPInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    compiled = compile_find(ds, STUDY_ROOT).statement.compile(dialect=sqlite.dialect(),
                                                             compile_kwargs={"literal_binds": True})
    return str(compiled)


@pytest.mark.parametrize(("level", "keys"), [
    ("STUDY", {"PatientID": "BP0000042"}),
    ("STUDY", {"PatientName": "SMITH^J*"}),
    ("STUDY", {"PatientName": "smith^john"}),
    ("STUDY", {"StudyDate": "20100101-20100107"}),
    ("STUDY", {"StudyDate": "20100101-20100107", "StudyTime": "0800-1700"}),
    ("STUDY", {"AccessionNumber": "AN00000042"}),
    ("STUDY", {"AccessionNumber": "AN0000004*"}),
    ("SERIES", {"StudyInstanceUID": bulk.study_uid(42)}),
    ("IMAGE", {"StudyInstanceUID": bulk.study_uid(42), "SeriesInstanceUID": bulk.series_uid(83)}),
], ids=["patient-id", "name-prefix", "name-exact", "date-range", "date-time-range", "accession", "accession-prefix",
        "series-of-study", "instances-of-series"])
def test_query_kinds_use_indexes(bulk_store: DataStore, level: str, keys: dict[str, str]) -> None:
    with bulk_store.index.engine.connect() as conn:
        plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + _statement(level, **keys))]
    assert any(step.startswith("SEARCH") for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan  # a full table scan
