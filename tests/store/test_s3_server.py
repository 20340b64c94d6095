"""A whole ``pacskit serve`` on the S3 blob store (SeaweedFS), driven by DCMTK: storescu stores (a
100 MB instance among them, streamed to the object store with flat memory), findscu finds, movescu
and getscu bring back the very bytes stored; ``pacskit check`` lists the bucket, finds an orphan and (``--delete-orphans``) deletes it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pydicom import dcmread

from net._util import proc_status, reset_peak_rss
from pacskit.dicom.part10 import read_part10_header
from pacskit.store.blobs import new_key
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, have_dcmtk, run_storescu, storescp, wait_for_port
from pacskit.testing.synth import make_instance, make_large_instance

pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

MB = 1 << 20
LARGE = 100 * MB
BUDGET = 60 * MB  # peak RSS growth allowed in the server while the large instance is stored
AE = "S3PACS"


def _dataset_digest(path: Path) -> str:
    """SHA-256 of the dataset after the File Meta (each side writes its own File Meta)."""
    offset = read_part10_header(path).dataset_offset
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(MB):
            h.update(chunk)
    return h.hexdigest()


def _dcmtk(name: str, *args: str) -> str:
    proc = subprocess.run([dcmtk_tool(name), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, env=dcmtk_env(), timeout=300, check=False)
    return proc.stdout.decode(errors="replace")


def _pacskit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "pacskit", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def test_a_server_on_s3_stores_finds_and_retrieves_the_same_bytes(tmp_path: Path, seaweed: Any,
                                                                   s3_options: dict[str, Any]) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    study, series = "1.2.826.0.1.3680043.8.498.77.1", "1.2.826.0.1.3680043.8.498.77.1.1"
    small = [make_instance(tmp_path / "in" / f"{i}.dcm", rows=16, cols=16, study_uid=study, series_uid=series)
             for i in range(3)]
    large = make_large_instance(tmp_path / "large" / "big.dcm", LARGE, study_uid=study, series_uid=series)
    sent = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: _dataset_digest(p) for p in [*small, large]}

    srv = tmp_path / "srv"
    srv.mkdir()
    port = free_port()
    # in_flight_grace = 0: nothing is in flight when check runs below, and an orphan is one at once
    options = {**s3_options, "in_flight_grace": 0}
    (srv / "server.toml").write_text(tomli_w.dumps({
        "ae_title": AE, "port": port, "data_dir": "data", "admin": {"enabled": False},
        "storage": {"backend": "s3", "options": options},
    }))
    with storescp(tmp_path / "scp") as scp:
        added = _pacskit("ae", "add", "STORESCP", "--host", "127.0.0.1", "--port", str(scp.port), "--data-dir", str(srv))
        assert added.returncode == 0, added.stderr
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(srv)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_port("127.0.0.1", port, 60, proc=proc)
            out = run_storescu("127.0.0.1", port, small, called=AE)
            assert out.stdout.count("Received Store Response (Success)") == 3, out.stdout

            assert reset_peak_rss(proc.pid), "cannot reset VmHWM"
            base = proc_status(proc.pid)["VmRSS"]
            out = run_storescu("127.0.0.1", port, large, called=AE)
            store_peak = proc_status(proc.pid)["VmHWM"] - base
            assert "Received Store Response (Success)" in out.stdout, out.stdout
            left = [p for p in (srv / "data" / "files" / "tmp").iterdir() if p.stat().st_size]  # spares are empty
            assert not left, "the received temp file went to the object store"

            # the objects are in the bucket, under the prefix
            listed = seaweed.client().list_objects_v2(Bucket="pacskit-test", Prefix=s3_options["prefix"])
            assert len(listed["Contents"]) == 4
            assert max(o["Size"] for o in listed["Contents"]) >= LARGE

            (tmp_path / "find").mkdir()
            text = _dcmtk("findscu", "-v", "-S", "-aec", AE, "-aet", "FINDSCU", "-X", "-od", str(tmp_path / "find"),
                          "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                          "-k", f"SeriesInstanceUID={series}", "-k", "SOPInstanceUID", "127.0.0.1", str(port))
            assert "Received Final Find Response (Success)" in text, text
            found = {dcmread(p).SOPInstanceUID for p in (tmp_path / "find").glob("rsp*.dcm")}
            assert found == set(sent)

            keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
            text = _dcmtk("movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", AE, "-aem", "STORESCP", *keys,
                          "127.0.0.1", str(port))
            assert "Received Final Move Response (Success)" in text, text
            moved = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: _dataset_digest(p)
                     for p in Path(scp.out_dir).glob("*.dcm")}
            assert moved == sent, "C-MOVE sent back the stored bytes"

            (tmp_path / "get").mkdir()
            text = _dcmtk("getscu", "-v", "-S", "-aet", "GETSCU", "-aec", AE, "-od", str(tmp_path / "get"), *keys,
                          "127.0.0.1", str(port))
            assert "Received C-GET Response (Success)" in text, text
            got = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: _dataset_digest(p)
                   for p in (tmp_path / "get").iterdir()}
            assert got == sent, "C-GET sent back the stored bytes"

            checked = _pacskit("check", "--data-dir", str(srv), "--quiet")
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert "4 instances, 4 blobs: no problem" in checked.stdout, checked.stdout

            # an object in the store that no row refers to (e.g. a node lost between upload and commit)
            orphan = new_key()
            seaweed.client().put_object(Bucket="pacskit-test", Key=f"{s3_options['prefix']}{orphan[:2]}/{orphan[2:4]}/{orphan}.dcm",
                                        Body=b"never acknowledged")
            checked = _pacskit("check", "--data-dir", str(srv), "--quiet")
            assert checked.returncode == 1, checked.stdout + checked.stderr
            assert "4 instances, 5 blobs: 1 problems" in checked.stdout, checked.stdout
            assert f"orphan-blob: blob {orphan} has no index row" in checked.stdout, checked.stdout
            cleaned = _pacskit("check", "--data-dir", str(srv), "--quiet", "--delete-orphans")
            assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
            assert "deleted 1 orphan blobs" in cleaned.stdout, cleaned.stdout
            checked = _pacskit("check", "--data-dir", str(srv), "--quiet")
            assert checked.returncode == 0 and "4 instances, 4 blobs: no problem" in checked.stdout, checked.stdout
        finally:
            proc.terminate()
            proc.wait(30)
    assert store_peak < BUDGET, f"server grew by {store_peak / MB:.1f} MB while a {LARGE // MB} MB instance was stored"
    print(f"server peak RSS growth while storing {LARGE // MB} MB on S3: {store_peak / MB:.1f} MB")
