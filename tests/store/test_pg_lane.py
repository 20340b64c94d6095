"""The lean ingest lane on PostgreSQL (``pacskit.store.index.pglane``, issues 17 and 23) against the
general path it replaces, on a real PostgreSQL: the same instances indexed by both into two fresh
databases leave the same rows; a duplicate, a stale cache entry and a lost fence leave nothing behind
and go to the general path; a connection the server terminated is replaced, for the lane and for the
pool (which no longer pings at checkout), and the next ingest succeeds; and libpq's protocol trace shows one
round trip per instance of a known series."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from pacskit.store import DataStore, FilesystemBlobStore, IngestStatus
from pacskit.store.cluster import SharedInflight
from pacskit.store.index import pglane
from pacskit.store.index.database import Index
from pacskit.store.index.extract import InstanceAttributes

from ._util import make_instance, new_uid
from .conftest import ServerDatabases
from .test_lean_new_series import _CR, _record, _rows, _through_general_path, _uid, _varied


@pytest.fixture
def two_indexes(postgres_server: ServerDatabases) -> Iterator[tuple[Index, Index]]:
    indexes = [Index.open(postgres_server.create()) for _ in ("lean", "general")]
    try:
        for index in indexes:
            index.migrate()
            assert index._pg_lane is not None and not index.prechecks_duplicates
        yield indexes[0], indexes[1]
    finally:
        for index in indexes:
            index.close()


def _append(index: Index, a: InstanceAttributes, key: str, when: dt.datetime,
            fence: tuple[str, dict[str, Any]] | None = None) -> Any:
    return index.append_instance(a, blob_key=key, size=len(key), sha256=key.ljust(64, "0")[:64],
                                 received_at=when, source_ae=a.source_ae, fence=fence)


def _known_series(instances: list[InstanceAttributes]) -> list[InstanceAttributes]:
    """More instances of series ``instances`` created (the known-series pipeline), in another order."""
    out = []
    for i, a in enumerate(reversed(instances[:20])):
        out.append(InstanceAttributes(sop_instance_uid=_uid(5, i), sop_class_uid=_CR,
                                      study_instance_uid=a.study_instance_uid,
                                      series_instance_uid=a.series_instance_uid, patient_id=a.patient_id,
                                      issuer_of_patient_id=a.issuer_of_patient_id, instance_number=i,
                                      source_ae="MOD2"))
    return out


def test_lane_rows_are_the_general_paths(two_indexes: tuple[Index, Index], caplog: pytest.LogCaptureFixture) -> None:
    lean, general = two_indexes
    instances = _varied() + _known_series(_varied())
    when = dt.datetime(2024, 1, 5, 10, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    caplog.set_level(logging.WARNING, logger="pacskit.store")
    fell_back = []
    for i, a in enumerate(instances):
        rec = _append(lean, a, f"blob{i:04d}", when)
        if rec is None:
            fell_back.append(a.sop_instance_uid)
            rec = _record(lean, a, f"blob{i:04d}", when)
        assert rec.status == IngestStatus.STORED
    lean_warnings = [r.getMessage() for r in caplog.records]
    general_warnings = _through_general_path(general, instances, when, caplog)

    assert fell_back == []  # every instance took the lane: new series and known ones
    assert lean_warnings == general_warnings and len(general_warnings) >= 2  # P9 in P2's study, twice
    lean_rows, general_rows = _rows(lean), _rows(general)
    assert set(lean_rows) >= {"patients", "studies", "series", "series_requests", "instances"}
    for table in general_rows:
        assert lean_rows[table] == general_rows[table], table
    assert len(general_rows["instances"]) == len(instances)


def test_a_duplicate_leaves_nothing_and_the_general_path_applies_the_policy(two_indexes: tuple[Index, Index]) -> None:
    lean, _ = two_indexes
    first, second = _varied()[:2]  # the same series
    now = dt.datetime.now(dt.UTC)
    assert _append(lean, first, "k1", now) is not None
    assert _append(lean, second, "k2", now) is not None
    before = _rows(lean)
    again = dataclasses.replace(second)  # the same instance sent again
    assert _append(lean, again, "k3", now) is None  # its insert failed: the counts' updates are undone too
    assert _rows(lean) == before
    rec = lean.run_write_shared(lambda s: lean.record_instance(
        s, again, blob_key="k3", size=2, sha256="0" * 64, received_at=now, source_ae=None, policy="reject"))
    assert rec.status == IngestStatus.DUPLICATE_REJECTED and rec.blob_key == "k2"
    # a retry of an instance whose commit's answer was lost: found as our own, counted once
    rec = lean.run_write_shared(lambda s: lean.record_instance(
        s, second, blob_key="k2", size=2, sha256="0" * 64, received_at=now, source_ae=None, policy="reject"))
    assert rec.status == IngestStatus.STORED and _rows(lean) == before


def test_a_stale_cache_entry_leaves_nothing_and_falls_back(two_indexes: tuple[Index, Index]) -> None:
    lean, _ = two_indexes
    first, second = _varied()[:2]
    now = dt.datetime.now(dt.UTC)
    assert _append(lean, first, "k1", now) is not None
    with lean.engine.begin() as conn:  # the series is renamed behind the cache's back
        conn.execute(text("UPDATE series SET series_instance_uid = 'moved' WHERE series_instance_uid = :u"),
                     {"u": first.series_instance_uid})
    before = _rows(lean)
    assert _append(lean, second, "k2", now) is None  # the series' guarded count update matched no row
    assert _rows(lean) == before
    assert first.series_instance_uid not in lean._series_refs  # forgotten: the general path relearns it
    assert _record(lean, second, "k2", now).status == IngestStatus.STORED
    assert _append(lean, _known_series([second])[0], "k3", now) is not None


@pytest.mark.parametrize("new_series", [False, True])
def test_the_fence_is_in_the_lanes_transaction(two_indexes: tuple[Index, Index], new_series: bool) -> None:
    lean, _ = two_indexes
    first, second = _varied()[:2]
    if new_series:
        second = InstanceAttributes(sop_instance_uid=_uid(6, 1), sop_class_uid=_CR, study_instance_uid=_uid(6, 2),
                                    series_instance_uid=_uid(6, 3), patient_id="F")
    now = dt.datetime.now(dt.UTC)
    journal = SharedInflight(lean.engine, "me")  # its fence_statement, as the data store passes it
    journal.close()
    with lean.engine.begin() as conn:
        conn.execute(text("INSERT INTO cluster_inflight (blob_key, node_id, started_at) "
                          "VALUES ('k1', 'me', now()), ('k2', 'me', now())"))
    assert _append(lean, first, "k1", now, journal.fence_statement("k1")) is not None
    with lean.engine.begin() as conn:  # another node recovered ours: k2's record is gone
        conn.execute(text("DELETE FROM cluster_inflight WHERE blob_key = 'k2'"))
        assert conn.execute(text("SELECT count(*) FROM cluster_inflight")).scalar() == 0  # k1's went with its commit
    before = _rows(lean)
    assert _append(lean, second, "k2", now, journal.fence_statement("k2")) is None
    assert _rows(lean) == before  # nothing of the instance was kept


@pytest.fixture
def pg_store(postgres_server: ServerDatabases, tmp_path: Path) -> Iterator[DataStore]:
    store = DataStore.open(postgres_server.create(), blobs=FilesystemBlobStore(tmp_path / "blobs"))
    try:
        yield store
    finally:
        store.close()


def _terminate_others(store: DataStore) -> int:
    """``pg_terminate_backend`` every other session on the store's database (waiting until each is
    gone); returns how many. From a connection of its own, not one of the store's pool."""
    admin = create_engine(store.index.engine.url, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid()")).scalars().all()
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})
            conn.rollback()
    finally:
        admin.dispose()
    return len(pids)


def _lane_pid(store: DataStore) -> int:
    return int(store.index._pg_lane._local.held.raw.info.backend_pid)  # type: ignore[union-attr]


def test_ingest_after_the_server_terminated_every_connection(pg_store: DataStore) -> None:
    store = pg_store
    study, series = new_uid(), new_uid()

    def ingest() -> Any:
        return store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series))

    assert ingest().stored and ingest().stored  # the second one took the lane's pipeline
    lane_pid = _lane_pid(store)
    with store.index.engine.connect() as conn:  # a pooled connection, then back to the pool
        pooled_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert _terminate_others(store) >= 2  # the lane's and the pool's
    # the pool's connections were terminated too: a read finds out at checkout (no ping), not on use
    with store.index.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pooled_pid
    done = ingest()
    assert done.stored and _lane_pid(store) != lane_pid  # a new lane connection, not the general path's
    assert store.counts().instances == 3 and store.check().ok


def test_a_connection_lost_silently_is_found_on_use_and_the_ingest_retried(
        pg_store: DataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store = pg_store
    study, series = new_uid(), new_uid()

    def ingest() -> Any:
        return store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series))

    assert ingest().stored and ingest().stored
    lane_pid = _lane_pid(store)
    # as if the goodbye were lost (a network cut): the check before use sees nothing
    monkeypatch.setattr(pglane, "connection_is_dead", lambda raw: raw.closed)
    assert _terminate_others(store) >= 1
    fell_back: list[str] = []
    general = store.index.run_write_shared
    monkeypatch.setattr(store.index, "run_write_shared", lambda work: fell_back.append("x") or general(work))
    assert ingest().stored
    assert fell_back == [] and _lane_pid(store) != lane_pid  # retried once in the lane, on a new connection
    assert store.counts().instances == 3 and store.check().ok


def test_one_round_trip_per_instance_of_a_known_series(pg_store: DataStore, tmp_path: Path) -> None:
    """libpq's own protocol trace of the lane's connection: one Sync (a round trip: the client waits
    for its answer) per instance, and the pool not used at all (no pre-check, no ping)."""
    from sqlalchemy import event

    store = pg_store
    study, series = new_uid(), new_uid()
    files = [make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series) for _ in range(14)]
    for f in files[:8]:  # the series' first instance, then the lane; psycopg prepares at the 5th run
        assert store.ingest(f).stored
    raw = store.index._pg_lane._local.held.raw  # type: ignore[union-attr]
    checkouts: list[int] = []
    event.listen(store.index.engine, "checkout", lambda *args: checkouts.append(1))
    trace = tmp_path / "libpq.trace"
    with open(trace, "w") as fh:
        raw.pgconn.trace(fh.fileno())
        try:
            for f in files[8:]:
                assert store.ingest(f).status == IngestStatus.STORED
        finally:
            raw.pgconn.untrace()
    sent = [line.split("\t") for line in trace.read_text().splitlines()]
    syncs = [parts for parts in sent if len(parts) > 3 and parts[1] == "F" and parts[3].startswith("Sync")]
    assert len(syncs) == 6 and checkouts == []
    assert store.counts().instances == 14 and store.check().ok


def test_one_round_trip_per_instance_of_a_new_study(pg_store: DataStore, tmp_path: Path) -> None:
    """A CR/DX-like load (every instance a study of its own, patients new or known, with request
    items or none): one Sync per instance, as for a known series; a new series of a known study
    takes the multi-statement transaction (more round trips), and the counts and check stay right."""
    from sqlalchemy import event

    store = pg_store
    files = [make_instance(store.temp_dir, StudyInstanceUID=new_uid(), SeriesInstanceUID=new_uid(),
                           PatientID=f"P{i % 3}") for i in range(15)]
    for f in files[:6]:  # psycopg prepares the statement after its 5th run (one more round trip, once)
        assert store.ingest(f).stored
    files = files[6:]
    raw = store.index._pg_lane._local.held.raw  # type: ignore[union-attr]
    checkouts: list[int] = []
    event.listen(store.index.engine, "checkout", lambda *args: checkouts.append(1))
    trace = tmp_path / "libpq.trace"
    with open(trace, "w") as fh:
        raw.pgconn.trace(fh.fileno())
        try:
            for f in files:
                assert store.ingest(f).status == IngestStatus.STORED
        finally:
            raw.pgconn.untrace()
    sent = [line.split("\t") for line in trace.read_text().splitlines()]
    syncs = [parts for parts in sent if len(parts) > 3 and parts[1] == "F" and parts[3].startswith("Sync")]
    assert len(syncs) == 9 and checkouts == []
    known_study = make_instance(store.temp_dir, StudyInstanceUID=store.index.engine.connect().execute(
        text("SELECT study_instance_uid FROM studies ORDER BY pk LIMIT 1")).scalar_one(), SeriesInstanceUID=new_uid())
    assert store.ingest(known_study).status == IngestStatus.STORED
    counts = store.counts()
    assert (counts.studies, counts.series, counts.instances) == (15, 16, 16)
    with store.index.engine.connect() as conn:
        assert conn.execute(text("SELECT num_studies FROM patients WHERE patient_id = 'P1'")).scalar_one() == 5
        assert conn.execute(text("SELECT count(*) FROM patients WHERE patient_id = 'P1'")).scalar_one() == 1
    assert store.check().ok


def test_a_new_study_with_many_request_items_takes_the_transaction(two_indexes: tuple[Index, Index]) -> None:
    """More than eight request items: not one statement text per count, the multi-statement transaction
    instead, with every item kept; eight or fewer: the one statement."""
    lean, _ = two_indexes
    now = dt.datetime.now(dt.UTC)
    for n, study in ((9, 1), (8, 2)):
        a = InstanceAttributes(sop_instance_uid=_uid(7, study), sop_class_uid=_CR, study_instance_uid=_uid(8, study),
                               series_instance_uid=_uid(9, study), patient_id="R",
                               request_attributes=tuple((f"A{i}", f"R{i}", None) for i in range(n)))
        assert _append(lean, a, f"r{study}", now).status == IngestStatus.STORED
        with lean.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM series_requests r JOIN series s ON s.pk = r.series_fk "
                                     "WHERE s.series_instance_uid = :u"), {"u": _uid(9, study)}).scalar_one() == n
    assert [shape[2] for shape in lean._pg_lane._new_study] == [8]  # type: ignore[union-attr]
