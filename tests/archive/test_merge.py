"""Merging patient A into patient B: studies moved, files rewritten, audited; kill -9 before and
after the commit leaves the archive consistent (`pacskit check` clean) and the merge all-or-nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from pacskit.config.settings import load_settings
from pacskit.server.server import open_store
from pacskit.store.records import AuditRecord
from pacskit.testing.synth import make_series


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "MERGEPACS"\nport = 0\n')
    store = open_store(load_settings(folder))
    for name, pid, pname, count in (("a1", "WRONG1", "DOE^JON", 3), ("a2", "WRONG1", "DOE^JON", 2),
                                    ("b", "RIGHT1", "DOE^JOHN", 2)):
        for path in make_series(tmp_path / name, count, 16, 16, patient_id=pid, patient_name=pname):
            store.ingest(path, source_ae="MOD")
    store.close()
    return folder


def _state(folder: Path) -> tuple[dict[str, int], set[str], bool]:
    """(studies per patient ID in the index, PatientIDs in the files, check ok)."""
    from pacskit.store import Patient

    store = open_store(load_settings(folder), recover=False)
    try:
        with store.index.reading() as s:
            per = dict(s.execute(select(Patient.patient_id, Patient.num_studies)).all())
        ids = {str(pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True).PatientID)
               for k in store.blobs.iter_keys()}
        return per, ids, store.check().ok
    finally:
        store.close()


def test_merge_moves_studies_and_rewrites_files(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "pacskit", "merge-patients", *a, "--data-dir", str(folder)],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    dry = run("WRONG1", "RIGHT1", "--dry-run")
    assert dry.returncode == 0 and "would move 2 studies (5 instances)" in dry.stdout, dry.stderr
    assert _state(folder)[0] == {"WRONG1": 2, "RIGHT1": 1}
    done = run("WRONG1", "RIGHT1", "--reason", "registration desk")
    assert done.returncode == 0 and "moved 2 studies (5 instances)" in done.stdout, done.stderr
    per, ids, ok = _state(folder)
    assert per == {"RIGHT1": 3} and ids == {"RIGHT1"} and ok
    store = open_store(load_settings(folder), recover=False)
    try:
        names = {str(pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True).PatientName)
                 for k in store.blobs.iter_keys()}
        with store.index.engine.connect() as conn:
            audited = list(conn.execute(select(AuditRecord.xml).where(AuditRecord.event_id == "110103")).scalars())
    finally:
        store.close()
    assert names == {"DOE^JOHN"}
    assert len(audited) == 2 and all("RIGHT1" in xml for xml in audited)
    again = run("WRONG1", "RIGHT1")
    assert again.returncode == 1 and "no patient 'WRONG1'" in again.stderr


_CHILD = textwrap.dedent("""
    import sys
    from pacskit.config.settings import load_settings
    from pacskit.server.server import open_store
    from pacskit.store.correction import merge_patients

    store = open_store(load_settings(sys.argv[1]))
    def pause(*_):
        print("paused", flush=True)
        sys.stdin.readline()
    where = sys.argv[2]
    merge_patients(store, "WRONG1", "RIGHT1", before_commit=pause if where == "before-commit" else None,
                   on_study=pause if where == "after-commit" else None)
""")


@pytest.mark.parametrize("where", ["before-commit", "after-commit"])
def test_kill_9_during_a_merge(tmp_path: Path, where: str) -> None:
    folder = _folder(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder), where], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "paused"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    per, _ids, ok = _state(folder)  # inspect only: the journal accounts for the files in flight
    assert ok
    assert per == ({"WRONG1": 2, "RIGHT1": 1} if where == "before-commit" else {"RIGHT1": 3})
    store = open_store(load_settings(folder))  # recovery (as at the next start)
    store.close()
    per, ids, ok = _state(folder)
    assert ok
    if where == "before-commit":
        assert per == {"WRONG1": 2, "RIGHT1": 1} and ids == {"WRONG1", "RIGHT1"}
    else:
        assert per == {"RIGHT1": 3} and ids == {"RIGHT1"}
    store = open_store(load_settings(folder), recover=False)
    try:
        assert sum(1 for _ in store.blobs.iter_keys()) == 7  # neither copy left over
    finally:
        store.close()


@pytest.mark.parametrize("kill", [None, "before-commit"])
def test_move_series_to_another_study(tmp_path: Path, kill: str | None) -> None:
    """The CT series filed under the wrong patient's study moves to the right study (files rewritten);
    the emptied study and patient go. Killed before the commit: nothing moved, check clean."""
    folder = _folder(tmp_path)
    store = open_store(load_settings(folder), recover=False)
    from pacskit.store import Patient, Series, Study

    with store.index.reading() as s:
        series_uid, = s.execute(select(Series.series_instance_uid).join(Study).join(Patient)
                                .where(Patient.patient_id == "WRONG1").order_by(Series.pk).limit(1)).one()
        target, = s.execute(select(Study.study_instance_uid).join(Patient).where(Patient.patient_id == "RIGHT1")).one()
    store.close()
    if kill:
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pacskit.config.settings import load_settings
            from pacskit.server.server import open_store
            from pacskit.store.correction import move_series
            store = open_store(load_settings({str(folder)!r}))
            def pause():
                print("paused", flush=True)
                sys.stdin.readline()
            move_series(store, {series_uid!r}, {target!r}, before_commit=pause)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "paused"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        per, ids, ok = _state(folder)
        assert ok and per == {"WRONG1": 2, "RIGHT1": 1}
        open_store(load_settings(folder)).close()  # recovery
        assert _state(folder) == ({"WRONG1": 2, "RIGHT1": 1}, {"WRONG1", "RIGHT1"}, True)
        return
    proc = subprocess.run([sys.executable, "-m", "pacskit", "move-series", series_uid, target, "--data-dir", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "moved series" in proc.stdout, proc.stderr
    per, _ids, ok = _state(folder)
    assert ok and per == {"WRONG1": 1, "RIGHT1": 1}
    store = open_store(load_settings(folder), recover=False)
    try:
        with store.index.reading() as s:
            study = s.scalars(select(Study).where(Study.study_instance_uid == target)).one()
            assert (study.num_series, study.num_instances) == (2, 5)
        moved = [pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True) for k in store.blobs.iter_keys()]
        assert {(str(d.StudyInstanceUID), str(d.PatientID)) for d in moved if d.SeriesInstanceUID == series_uid} \
            == {(target, "RIGHT1")}
    finally:
        store.close()
