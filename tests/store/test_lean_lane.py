"""The ingest's lean lane on SQLite (``Index.append_instance``): an instance of a known series is
committed on a connection the index keeps, without a session; anything else, and any failure, goes
the general way with the same outcome."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pacskit.store import DataStore, FilesystemBlobStore, IngestStatus

from ._util import make_instance, new_uid


@pytest.fixture
def store(sqlite_store: DataStore) -> DataStore:
    return sqlite_store  # SQLite only: the parametrized store of conftest.py is not wanted here


def _no_general_path(store: DataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the general path ran")

    monkeypatch.setattr(store.index, "run_write_shared", refused)


def test_an_instance_of_a_known_series_takes_the_lean_lane(store: DataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    study, series = new_uid(), new_uid()
    first = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series), source_ae="A")
    assert first.status == IngestStatus.STORED
    _no_general_path(store, monkeypatch)
    second = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series),
                          source_ae="A")
    assert second.status == IngestStatus.STORED
    inst = store.get_instance(second.sop_instance_uid)
    assert inst is not None and inst.source_ae == "A" and inst.sha256 == second.sha256
    assert inst.received_at.tzinfo is not None  # stored as the general path stores it
    counts = store.counts()
    assert (counts.series, counts.instances) == (1, 2)
    report = store.check()
    assert report.ok, str(report)


def test_a_duplicate_is_left_to_the_general_path(store: DataStore) -> None:
    study, series = new_uid(), new_uid()
    stored = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series))
    attrs = store.index.get_instance(stored.sop_instance_uid)
    assert attrs is not None
    from pacskit.store.index.extract import scan_instance
    from pacskit.dicom.part10 import read_part10_header

    again = make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series,
                          SOPInstanceUID=stored.sop_instance_uid)
    header = read_part10_header(again)
    a = scan_instance(again, header.dataset_offset, header.transfer_syntax)
    assert store.index.append_instance(a, blob_key="x" * 8, size=1, sha256="0" * 64,
                                       received_at=dt.datetime.now(dt.UTC), source_ae=None) is None
    assert store.counts().instances == 1  # nothing of it was kept
    assert store.ingest(again).status == IngestStatus.DUPLICATE_IGNORED


def test_a_broken_connection_falls_back_and_is_replaced(store: DataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    study, series = new_uid(), new_uid()
    for _ in range(2):
        store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series))
    held = store.index._lean_writer
    assert held is not None
    held.raw.close()  # what a connection lost underneath looks like to the lane
    third = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series))
    assert third.status == IngestStatus.STORED  # by the general path
    assert store.index._lean_writer is None
    _no_general_path(store, monkeypatch)
    fourth = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series))
    assert fourth.status == IngestStatus.STORED  # by a new lean connection
    assert store.counts().instances == 4
    assert store.check().ok


def test_close_closes_the_kept_connections(tmp_path: Path) -> None:
    store = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=FilesystemBlobStore(tmp_path / "blobs"))
    study, series = new_uid(), new_uid()
    for _ in range(2):
        done = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series))
    assert store.index.find_instance(done.sop_instance_uid) is not None
    writer, reader = store.index._lean_writer, store.index._lean_readers.held
    assert writer is not None and reader is not None
    store.close()
    for held in (writer, reader):
        with pytest.raises(sqlite3.ProgrammingError):
            held.raw.execute("SELECT 1")


def test_warm_up_leaves_nothing_behind(store: DataStore) -> None:
    store.index.warm_up()
    counts = store.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (0, 0, 0, 0)
    stored = store.ingest(make_instance(store.temp_dir))
    assert stored.status == IngestStatus.STORED and store.check().ok
