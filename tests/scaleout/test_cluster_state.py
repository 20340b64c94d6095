"""The shared state of cluster nodes (pacskit.store.cluster) on a real PostgreSQL: leases, the shared
in-flight journal and its fence, recovery of dead nodes (each once, under concurrency), the shared AE
registry, and the ``[cluster]`` settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pacskit.config.aetitles import RemoteAE
from pacskit.config.settings import ServerSettings
from pacskit.store import DataStore, MemoryBlobStore
from pacskit.store.deletion import Deleter
from pacskit.store.cluster import ClusterNode, LeaseLost, SharedAeRegistry, adopt, claim, cluster_nodes, forget_claims
from pacskit.testing.cluster import POSTGRES_URL, fresh_postgres_database
from pacskit.testing.synth import make_instance


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    try:
        with fresh_postgres_database(POSTGRES_URL, prefix="pacskit_cstate") as url:
            yield url
    except Exception as exc:
        if "could not connect" in str(exc).lower() or "connection refused" in str(exc).lower():
            pytest.skip(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}")
        raise


@pytest.fixture
def store(database_url: str) -> Iterator[DataStore]:
    s = DataStore.open(database_url, blobs=MemoryBlobStore())
    with s.index.engine.begin() as conn:
        for table in ("cluster_claims", "cluster_deletions", "cluster_inflight", "cluster_nodes", "cluster_ae_titles", "instances", "series", "studies",
                      "patients"):
            conn.execute(text(f"DELETE FROM {table}"))
    yield s
    s.close()


def _node(store: DataStore, name: str, lease: float = 30.0) -> ClusterNode:
    node = ClusterNode(store.index.engine, name, lease, store.blobs.delete)
    node.start()
    return node


def _expire(store: DataStore, node: ClusterNode) -> None:
    """The node's lease runs out (as if it had stopped renewing it long ago)."""
    with store.index.engine.begin() as conn:
        conn.execute(text("UPDATE cluster_nodes SET lease_until = lease_until - interval '1 hour' WHERE node_id = :n"),
                     {"n": node.node_id})


def test_an_ingest_records_its_key_and_the_commit_takes_the_record_away(store: DataStore, tmp_path: Path) -> None:
    node = _node(store, "a")
    try:
        store.shared_journal = node.inflight
        seen: list[set[str]] = []
        put = store.blobs.put_file

        def put_and_look(src: str, key_hint: str | None = None) -> str:
            seen.append(node.inflight.keys())  # while the blob is written, its key is in flight
            return put(src, key_hint)

        store.blobs.put_file = put_and_look  # type: ignore[method-assign]
        result = store.ingest(make_instance(tmp_path / "1.dcm", rows=4, cols=4))
        assert result.stored
        (during,) = seen
        assert result.blob_key in during  # while the blob is written, its key is in flight
        # the index commit removed it; what is left are keys recorded ahead, never handed out
        assert result.blob_key not in node.inflight.keys()
        assert node.inflight.keys() == node.inflight.unused() and len(during) == node.inflight.batch
        assert store.check().ok
    finally:
        node.stop()
    assert node.inflight.keys() == set(), "leaving removes the keys recorded ahead"


def test_keys_are_recorded_ahead_in_batches_one_statement_each(store: DataStore, tmp_path: Path) -> None:
    from sqlalchemy import event

    node = ClusterNode(store.index.engine, "a", 30.0, store.blobs.delete)
    node.inflight.batch = 4
    node.start()
    inserts: list[str] = []
    event.listen(node.inflight._engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: inserts.append(statement) if "INSERT" in statement else None)
    try:
        store.shared_journal = node.inflight
        results = [store.ingest(make_instance(tmp_path / f"{i}.dcm", rows=4, cols=4)) for i in range(10)]
        assert all(r.stored for r in results) and len({r.blob_key for r in results}) == 10
        assert len(inserts) == 3, "10 ingests, keys recorded 4 at a time: 3 statements"
        assert node.inflight.keys() == node.inflight.unused() and len(node.inflight.unused()) == 2
        node.inflight.max_age = 0.0  # recorded keys grow stale: the next batch drops their rows
        assert store.ingest(make_instance(tmp_path / "late.dcm", rows=4, cols=4)).stored
        assert len(node.inflight.keys()) == 3 and node.inflight.keys() == node.inflight.unused()
        assert store.check().ok
    finally:
        node.stop()


def test_a_node_declared_dead_cannot_commit_what_the_others_recovered(store: DataStore, tmp_path: Path) -> None:
    slow, other = _node(store, "slow"), _node(store, "other")
    try:
        store.shared_journal = slow.inflight
        put = store.blobs.put_file

        def paused_put(src: str, key_hint: str | None = None) -> str:
            key = put(src, key_hint)
            # the node stalls after its upload: its lease runs out and the other node recovers it
            _expire(store, slow)
            # the ingest's key and the others recorded with it
            assert other.recover_dead() == slow.inflight.batch
            return key

        store.blobs.put_file = paused_put  # type: ignore[method-assign]
        with pytest.raises(LeaseLost):
            store.ingest(make_instance(tmp_path / "1.dcm", rows=4, cols=4))
        assert store.count("instances") == 0  # nothing indexed, nothing acknowledged
        assert list(store.blobs.iter_keys()) == []  # the blob went with the recovery
        assert {n["name"] for n in cluster_nodes(store.index.engine)} == {"other"}
        slow.renew()  # it wakes up: registers again, and ingests work again
        store.blobs.put_file = put  # type: ignore[method-assign]
        assert store.ingest(make_instance(tmp_path / "2.dcm", rows=4, cols=4)).stored
        assert {n["name"] for n in cluster_nodes(store.index.engine)} == {"other", "slow"}
    finally:
        slow.stop()
        other.stop()


def test_a_dead_nodes_ingests_in_flight_are_removed_once_by_one_of_many(store: DataStore) -> None:
    survivors = [_node(store, f"s{i}") for i in range(4)]
    deads = [_node(store, f"dead{i}") for i in range(3)]
    keys = [store.blobs.put_bytes(b"never acknowledged") for _ in range(30)]
    for i, key in enumerate(keys):
        deads[i % 3].inflight.begin(key)
    for dead in deads:
        dead._stop.set()  # it stops renewing (its thread ends) without leaving: a kill -9
        _expire(store, dead)
    try:
        counts: list[int] = []  # four survivors recover three dead nodes at once
        barrier = threading.Barrier(len(survivors))

        def recover(node: ClusterNode) -> None:
            barrier.wait()
            counts.append(node.recover_dead())

        threads = [threading.Thread(target=recover, args=(n,)) for n in survivors]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        recovered = sum(n.recovered_blobs for n in survivors)
        assert recovered == len(keys), "each in-flight record recovered exactly once"
        assert list(store.blobs.iter_keys()) == []
        assert {n["name"] for n in cluster_nodes(store.index.engine)} == {"s0", "s1", "s2", "s3"}
    finally:
        for n in survivors:
            n.stop()
        for dead in deads:
            dead.inflight.close()


def _intents(store: DataStore) -> dict[str, set[str]]:
    """node id -> the blob keys of its deletion intents (cluster_deletions)."""
    with store.index.engine.connect() as conn:
        rows = conn.execute(text("SELECT node_id, blob_key FROM cluster_deletions")).all()
    found: dict[str, set[str]] = {}
    for node_id, key in rows:
        found.setdefault(node_id, set()).add(key)
    return found


def _study(store: DataStore, tmp_path: Path, n: int = 3) -> tuple[str, set[str]]:
    """A study of ``n`` instances ingested; (its UID, its blob keys)."""
    study_uid = "1.2.826.0.1.3680043.8.498.77." + str(abs(hash(tmp_path)) % 10**9)
    keys = {store.ingest(make_instance(tmp_path / f"{i}.dcm", rows=4, cols=4, study_uid=study_uid)).blob_key
            for i in range(n)}
    return study_uid, keys


def test_a_cluster_deletion_keeps_its_intent_in_the_shared_database_until_its_blobs_are_gone(
        store: DataStore, tmp_path: Path) -> None:
    a = _node(store, "a")
    try:
        store.shared_journal = a.inflight
        study_uid, keys = _study(store, tmp_path)
        seen: list[tuple[dict[str, set[str]], bool, int]] = []
        delete = store.blobs.delete

        def look_then_delete(key: str) -> None:
            # while the blobs go: the rows are gone, the intent is committed (another connection sees
            # it), and the node's own finishing round leaves a running deletion alone
            seen.append((_intents(store), store.index.is_blob_referenced(key), a.finish_deletions()))
            delete(key)

        store.blobs.delete = look_then_delete  # type: ignore[method-assign]
        report = Deleter(store).delete("study", [study_uid])
        assert report.instances == 3 and report.blobs_deleted == 3
        assert [s for s in seen if s != ({a.node_id: keys}, False, 0)] == []
        assert len(seen) == 3
        assert _intents(store) == {}, "the blobs are gone: the intent went with them"
        assert list(store.blobs.iter_keys()) == []
        assert store.check().ok
    finally:
        a.stop()


def test_a_dead_nodes_interrupted_deletion_is_finished_by_the_node_that_recovers_it(
        store: DataStore, tmp_path: Path) -> None:
    a, b = _node(store, "a"), _node(store, "b")
    try:
        store.shared_journal = a.inflight
        study_uid, keys = _study(store, tmp_path / "deleted")
        kept_uid, kept = _study(store, tmp_path / "kept")
        delete = store.blobs.delete
        calls = 0

        def failing_delete(key: str) -> None:  # node a stops after the rows committed, before any blob went
            nonlocal calls
            calls += 1
            raise OSError("injected: the object store is away")

        store.blobs.delete = failing_delete  # type: ignore[method-assign]
        with pytest.raises(OSError, match="injected"):
            Deleter(store).delete("study", [study_uid])
        assert calls == 1
        store.blobs.delete = delete  # type: ignore[method-assign]
        assert store.count("instances") == 3 and not any(store.index.is_blob_referenced(k) for k in keys)
        assert set(store.blobs.iter_keys()) == keys | kept
        assert _intents(store) == {a.node_id: keys}, "the failed deletion keeps its intent"
        report = store.check()
        assert report.ok and report.pending_deletion == 3, "listed keys are a deletion in progress, not orphans"
        assert b.finish_deletions() == 0, "a live node's intents are its own"
        a._stop.set()  # node a dies (its thread ends, it never leaves) and its lease runs out
        _expire(store, a)
        b.recover_dead()
        assert _intents(store) == {}
        assert set(store.blobs.iter_keys()) == kept, "no orphan: every listed blob no row references is gone"
        report = store.check()
        assert report.ok and report.pending_deletion == 0 and report.blobs_seen == 3
    finally:
        b.stop()
        a.inflight.close()


def test_a_paused_node_whose_intent_was_taken_over_cannot_delete_the_rows(store: DataStore, tmp_path: Path) -> None:
    a, b = _node(store, "a"), _node(store, "b")
    try:
        store.shared_journal = a.inflight
        study_uid, keys = _study(store, tmp_path)
        remove = store.index.remove_instances

        def paused_remove(session: Any, pks: list[int]) -> Any:
            # node a stalls with its intent recorded and its rows not deleted yet: its lease runs out,
            # node b recovers it and finishes the intent (every blob still referenced: none goes)
            _expire(store, a)
            b.recover_dead()
            return remove(session, pks)

        store.index.remove_instances = paused_remove  # type: ignore[method-assign]
        with pytest.raises(LeaseLost, match="taken over"):
            Deleter(store).delete("study", [study_uid])
        store.index.remove_instances = remove  # type: ignore[method-assign]
        assert store.count("instances") == 3, "the rows' transaction failed: the study is whole"
        assert set(store.blobs.iter_keys()) == keys and _intents(store) == {}
        assert store.check().ok
        a.renew()  # it wakes up, registers again, and deletes
        assert Deleter(store).delete("study", [study_uid]).instances == 3
        assert list(store.blobs.iter_keys()) == [] and _intents(store) == {}
    finally:
        a.stop()
        b.stop()


def test_intents_left_without_a_node_row_are_adopted_and_finished(store: DataStore, tmp_path: Path) -> None:
    a = _node(store, "a")
    key = store.blobs.put_bytes(b"its row was deleted by a deletion of a node that left")
    referenced_uid, referenced = _study(store, tmp_path, n=1)
    with store.index.engine.begin() as conn:  # a node that left with an unfinished intent: no row
        for k in (key, *referenced):
            conn.execute(text("INSERT INTO cluster_deletions (node_id, intent, blob_key, recorded_at) "
                              "VALUES ('gone', 'i1', :k, now())"), {"k": k})
    try:
        a.recover_dead()
        assert _intents(store) == {}
        # the unreferenced blob went; a listed blob that a row refers to again is never deleted
        assert set(store.blobs.iter_keys()) == referenced
        assert store.check().ok
    finally:
        a.stop()


def test_the_shared_ae_registry_is_one_registry_for_every_node(store: DataStore) -> None:
    on_a = SharedAeRegistry(store.index.engine, "a")
    on_b = SharedAeRegistry(store.index.engine, "b")
    ae = RemoteAE(title="MODALITY1", host="10.0.0.5", port=104, allowed_services={"store", "echo"})
    on_a.add(ae)
    assert on_b.get("MODALITY1") == ae
    with pytest.raises(ValueError, match="already registered"):
        on_b.add(ae)
    on_b.add(ae.model_copy(update={"port": 11112}), replace=True)
    assert on_a.get("MODALITY1").port == 11112  # type: ignore[union-attr]
    assert on_a.seed([ae, RemoteAE(title="OTHER", host="10.0.0.6", port=104)]) == 1  # only what is missing
    assert [e.title for e in on_b.all()] == ["MODALITY1", "OTHER"]
    assert on_b.remove("MODALITY1") and not on_a.remove("MODALITY1")
    assert on_a.get("MODALITY1") is None


def test_work_items_are_adopted_from_dead_nodes_once(store: DataStore) -> None:
    a, b, c = _node(store, "a"), _node(store, "b"), _node(store, "c")
    try:
        engine = store.index.engine
        with store.index.engine.begin() as conn:
            for item in (1, 2, 3):
                claim(conn, "commitment", item, "a")
            claim(conn, "commitment", 4, "b")
        assert adopt(engine, "commitment", [1, 2, 3, 4, 5], "c") == [5]  # a and b are alive: only the unclaimed
        assert adopt(engine, "commitment", [1, 2, 3, 4], "a", own=True) == [1, 2, 3]  # a restarted: its own
        a._stop.set()
        _expire(store, a)  # a dies
        results: list[list[int]] = []
        threads = [threading.Thread(target=lambda n=n: results.append(adopt(engine, "commitment", [1, 2, 3, 4], n)))
                   for n in ("b", "c")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(sum(results, [])) == [1, 2, 3], "each of the dead node's items adopted by exactly one node"
        assert forget_claims(engine, "commitment", "SELECT 2") == 4  # only item 2 is still open
    finally:
        for n in (a, b, c):
            n.stop()


def _settings(**data: Any) -> ServerSettings:
    return ServerSettings.model_validate(data)


def test_cluster_settings_are_implied_by_shared_storage_and_refused_without_it() -> None:
    assert not _settings().cluster_enabled  # the single-node default stays as it was
    shared = {"database": {"url": "postgresql://pacs@db/pacs"}, "storage": {"backend": "s3", "options": {"bucket": "b"}}}
    assert _settings(**shared).cluster_enabled
    assert not _settings(**shared, cluster={"enabled": False}).cluster_enabled
    assert _settings(**shared, cluster={"node_name": "pacs-1"}).cluster_node_name == "pacs-1"
    with pytest.raises(ValueError, match="PostgreSQL"):
        _settings(cluster={"enabled": True})
    with pytest.raises(ValueError, match="shared blob store"):
        _settings(database={"url": "postgresql://pacs@db/pacs"}, cluster={"enabled": True})
