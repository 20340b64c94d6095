"""``pacskit delete`` end to end: offline (the data-folder lock, the audit table), through a running
server's admin API (DCMTK storescu / findscu as the peers), and kill -9 in the middle of a deletion.

After every step ``pacskit check`` must be clean: no orphan file, no row without its file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from pacskit.config.settings import load_settings
from pacskit.server.datalock import lock_data_folder
from pacskit.server.server import open_store
from pacskit.store.records import AuditRecord
from pacskit.testing.peers import (
    count_store_successes,
    dcmtk_env,
    dcmtk_tool,
    free_port,
    have_dcmtk,
    run_storescu,
    wait_for_port,
)
from pacskit.testing.synth import make_series

STUDIES = ["1.2.826.0.1.3680043.9.7.10", "1.2.826.0.1.3680043.9.7.11", "1.2.826.0.1.3680043.9.7.12"]


def _pacskit(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pacskit", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"pacskit {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _sources(tmp_path: Path) -> Path:
    """Patient DEL1 with three studies (4 + 3 + 2 CT instances), patient DEL2 with one of 2."""
    src = tmp_path / "src"
    for n, (study, count) in enumerate(zip(STUDIES, (4, 3, 2), strict=True)):
        make_series(src / f"s{n}", count, 16, 16, patient_id="DEL1", study_uid=study)
    make_series(src / "other", 2, 16, 16, patient_id="DEL2")
    return src


def _folder(tmp_path: Path, port: int = 0) -> Path:
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text(f'ae_title = "DELPACS"\nport = {port}\n')
    return folder


def _ingest(folder: Path, src: Path) -> None:
    store = open_store(load_settings(folder))
    try:
        for path in sorted(src.rglob("*.dcm")):
            store.ingest(path, source_ae="MOD")
    finally:
        store.close()


def _counts(folder: Path) -> tuple[int, int, int, int]:
    store = open_store(load_settings(folder), recover=False)
    try:
        c = store.counts()
        return c.patients, c.studies, c.series, c.instances
    finally:
        store.close()


def _audit(folder: Path, event_id: str) -> list[str]:
    store = open_store(load_settings(folder), recover=False)
    try:
        with store.index.engine.connect() as conn:
            return list(conn.execute(select(AuditRecord.xml).where(AuditRecord.event_id == event_id)).scalars())
    finally:
        store.close()


def test_offline_dry_run_delete_and_audit(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _ingest(folder, _sources(tmp_path))
    before = _counts(folder)
    assert before == (2, 4, 4, 11)

    dry = _pacskit("delete", "study", STUDIES[0], "9.9.9", "--dry-run", "--json", "--data-dir", str(folder))
    assert dry.returncode == 1, dry.stderr  # 9.9.9 matched nothing
    report = json.loads(dry.stdout)
    assert report["dry_run"] and report["instances"] == 4 and report["not_found"] == ["9.9.9"]
    assert _counts(folder) == before

    done = _pacskit("delete", "series", _series_of(folder, STUDIES[1]), "--data-dir", str(folder), check=True)
    assert "deleted study" in done.stdout and "3 instances" in done.stdout  # the study's only series
    done = _pacskit("delete", "patient", "DEL1", "--reason", "wrong patient", "--data-dir", str(folder), check=True)
    assert "deleted 6 instances" in done.stdout
    assert _counts(folder) == (1, 1, 1, 2)
    assert _pacskit("check", "--data-dir", str(folder)).returncode == 0

    deleted = _audit(folder, "110105")  # DICOM Study Deleted, one per study
    assert len(deleted) == 3
    assert all(any(uid in xml for xml in deleted) for uid in STUDIES)
    assert all("DEL1" in xml for xml in deleted)


def _series_of(folder: Path, study_uid: str) -> str:
    from pacskit.store import Series, Study

    store = open_store(load_settings(folder), recover=False)
    try:
        with store.index.reading() as s:
            return s.scalar(select(Series.series_instance_uid).join(Study).where(Study.study_instance_uid == study_uid))
    finally:
        store.close()


def test_offline_delete_refused_while_the_folder_is_locked(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _ingest(folder, _sources(tmp_path))
    with lock_data_folder(folder, "pacskit serve"):
        proc = _pacskit("delete", "patient", "DEL1", "--data-dir", str(folder))
    assert proc.returncode == 1
    assert f"in use by pid {os.getpid()}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _counts(folder) == (2, 4, 4, 11)


def test_unknown_level_is_a_usage_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    proc = _pacskit("delete", "frame", "1.2.3", "--data-dir", str(folder))
    assert proc.returncode == 2 and "level must be one of" in proc.stderr


@pytest.mark.dcmtk
def test_delete_through_the_running_server(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    src = _sources(tmp_path)
    port = free_port()
    folder = _folder(tmp_path, port)
    server = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", port, timeout=30, proc=server)
        sent = run_storescu("127.0.0.1", port, src, called="DELPACS")
        assert count_store_successes(sent) == 11, sent.stdout
        # The server holds the folder's lock: the command can only succeed through its admin API.
        with pytest.raises(Exception, match="in use by pid"):
            lock_data_folder(folder, "test")
        proc = _pacskit("delete", "study", STUDIES[0], STUDIES[2], "--data-dir", str(folder), check=True)
        assert "deleted 6 instances" in proc.stdout
        found = subprocess.run(
            [dcmtk_tool("findscu"), "-S", "-aec", "DELPACS", "-k", "QueryRetrieveLevel=STUDY",
             "-k", "PatientID=DEL1", "-k", "StudyInstanceUID", "127.0.0.1", str(port)],
            capture_output=True, text=True, env=dcmtk_env(), timeout=60)
        answered = found.stdout + found.stderr
        assert STUDIES[1] in answered and STUDIES[0] not in answered and STUDIES[2] not in answered
        again = run_storescu("127.0.0.1", port, src / "s0", called="DELPACS")  # the study can come back
        assert count_store_successes(again) == 4
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert _counts(folder) == (2, 3, 3, 9)
    assert _pacskit("check", "--data-dir", str(folder)).returncode == 0
    deleted = _audit(folder, "110105")
    assert len(deleted) == 2 and any(STUDIES[0] in xml for xml in deleted)


_CHILD = textwrap.dedent("""
    import sys
    from pacskit.config.settings import load_settings
    from pacskit.server.server import open_store
    from pacskit.store.deletion import Deleter

    store = open_store(load_settings(sys.argv[1]))
    where = sys.argv[2]
    if where == "between-files":
        real = store.blobs.delete
        calls = []
        def delete(key):
            real(key)
            calls.append(key)
            if len(calls) == 6:  # the second study's files: one gone, the others not yet
                print("paused", flush=True)
                sys.stdin.readline()
        store.blobs.delete = delete
    def committed(part):
        if where == "after-commit" and part.study_instance_uid == sys.argv[3]:
            print("paused", flush=True)
            sys.stdin.readline()
    Deleter(store).delete("patient", ["DEL1"], on_study=committed)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("where", ["after-commit", "between-files"])
def test_kill_9_during_a_delete_leaves_no_orphan_and_no_dangling_row(tmp_path: Path, where: str) -> None:
    folder = _folder(tmp_path)
    _ingest(folder, _sources(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder), where, STUDIES[1]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "paused"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    # Study 0 is gone; study 1's rows are gone and its files are listed for deletion; study 2 is whole.
    store = open_store(load_settings(folder), recover=False)  # inspect only, as `pacskit check` on main
    try:
        report = store.check()
    finally:
        store.close()
    assert report.ok, str(report)
    assert report.pending_deletion == (3 if where == "after-commit" else 1)
    assert _counts(folder) == (2, 2, 2, 4)
    assert _pacskit("check", "--data-dir", str(folder)).returncode == 0
    # The next command that opens the folder for writing finishes it; the retry deletes the rest.
    _pacskit("delete", "patient", "DEL1", "--data-dir", str(folder), check=True)
    checked = _pacskit("check", "--data-dir", str(folder))
    assert checked.returncode == 0 and "being deleted" not in checked.stdout, checked.stdout
    assert _counts(folder) == (1, 1, 1, 2)
    files = list(folder.rglob("*.dcm"))  # the blobs (nothing else in the folder is a .dcm)
    assert len(files) == 2
    for path in files:
        assert pydicom.dcmread(path, stop_before_pixels=True).PatientID == "DEL2"
