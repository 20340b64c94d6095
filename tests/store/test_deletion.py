"""Deleting patients, studies, series and instances (pacskit.store.deletion), on every backend.

Rows, counts and files change together; a dry run changes nothing; the interrupted cases (intent
recorded but nothing committed; rows committed but files not yet deleted) are finished by recovery
and are never reported by ``check`` as orphans or dangling rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pacskit.store import DataStore
from pacskit.store.deletion import Deleter, _Intent, finish_interrupted, journal_folder, pending_keys
from pacskit.testing.synth import make_series


def _load(store: DataStore, tmp_path: Path) -> dict[str, list[str]]:
    """Patient P1: study A (CT series a1 of 3, MR series a2 of 2), study B (1); patient P2: study C (2)."""
    uids: dict[str, list[str]] = {}
    study_a, study_b, study_c = "1.2.826.0.1.3680043.9.7.1", "1.2.826.0.1.3680043.9.7.2", "1.2.826.0.1.3680043.9.7.3"
    for name, count, study, patient, modality, series_number in (
        ("a1", 3, study_a, "P1", "CT", 1), ("a2", 2, study_a, "P1", "MR", 2),
        ("b", 1, study_b, "P1", "CT", 1), ("c", 2, study_c, "P2", "CT", 1),
    ):
        paths = make_series(tmp_path / "src" / name, count, 16, 16, patient_id=patient, study_uid=study,
                            modality=modality, series_number=series_number)
        uids[name + "_series"] = [_series_uid(paths[0])]
        uids[name] = []
        for path in paths:
            r = store.ingest(path, source_ae="MOD")
            uids[name].append(r.sop_instance_uid)
    uids["studies"] = [study_a, study_b, study_c]
    return uids


def _series_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _keys(store: DataStore) -> set[str]:
    return set(store.blobs.iter_keys())


def test_dry_run_changes_nothing_and_reports(store: DataStore, tmp_path: Path) -> None:
    uids = _load(store, tmp_path)
    before = (store.counts(), _keys(store))
    report = Deleter(store).delete("patient", ["P1", "NOBODY"], dry_run=True)
    assert (store.counts(), _keys(store)) == before
    assert report.dry_run and report.instances == 6 and report.not_found == ["NOBODY"]
    assert {s.study_instance_uid for s in report.studies} == set(uids["studies"][:2])
    assert all(s.whole_study for s in report.studies)


def test_delete_series_then_study_then_patient(store: DataStore, tmp_path: Path) -> None:
    uids = _load(store, tmp_path)
    deleter = Deleter(store)
    keys_before = _keys(store)

    report = deleter.delete("series", uids["a2_series"])
    assert report.instances == 2 and report.blobs_deleted == 2
    [part] = report.studies
    assert not part.whole_study and part.done and part.sop_classes == {"1.2.840.10008.5.1.4.1.1.4": 2}
    c = store.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (2, 3, 3, 6)
    assert len(_keys(store)) == len(keys_before) - 2
    study_a = store.get_instance(uids["a1"][0]).series.study
    assert study_a.num_series == 1 and study_a.num_instances == 3 and study_a.modalities_in_study == "CT"
    assert store.check().ok

    report = deleter.delete("study", [uids["studies"][0]])
    assert report.instances == 3 and report.studies[0].whole_study
    c = store.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (2, 2, 2, 3)

    report = deleter.delete("instance", [uids["c"][0]])
    assert report.instances == 1 and not report.studies[0].whole_study

    report = deleter.delete("patient", ["P1", "P2"])
    assert report.instances == 2 and report.not_found == []
    c = store.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (0, 0, 0, 0)
    assert _keys(store) == set()
    assert store.check().ok
    assert os.listdir(journal_folder(store)) == []


def test_delete_instance_api_is_the_crash_safe_path(store: DataStore, tmp_path: Path) -> None:
    uids = _load(store, tmp_path)
    assert store.delete_instance(uids["b"][0])
    assert not store.delete_instance(uids["b"][0])
    assert store.counts().studies == 2
    assert store.check().ok


def test_unknown_level_and_empty_request_are_refused(store: DataStore) -> None:
    with pytest.raises(ValueError, match="level"):
        Deleter(store).delete("frame", ["1"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing to delete"):
        Deleter(store).delete("study", [" "])


def test_intent_without_commit_leaves_everything(store: DataStore, tmp_path: Path) -> None:
    """A crash after the intent was recorded, before the transaction: recovery deletes nothing."""
    uids = _load(store, tmp_path)
    folder = journal_folder(store)
    assert folder is not None
    keys = _keys(store)
    crashed = _Intent(folder, sorted(keys), "test")
    os.close(crashed._fd)  # the process is gone: its flock with it
    assert store.check().ok
    assert finish_interrupted(store) == 0
    assert _keys(store) == keys and os.listdir(folder) == []
    assert store.counts().instances == 8
    assert uids


def test_committed_rows_whose_files_remain_are_pending_then_finished(store: DataStore, tmp_path: Path) -> None:
    """A crash after the commit, before the files went: check counts them as being deleted, recovery
    removes them."""
    uids = _load(store, tmp_path)
    folder = journal_folder(store)
    assert folder is not None
    deleter = Deleter(store)
    _studies, rows, _nf = deleter.select("study", [uids["studies"][2]])
    [study_rows] = rows.values()
    keys = [r.blob_key for r in study_rows]
    crashed = _Intent(folder, keys, "test")
    store.index.run_write(lambda s: deleter._remove(s, study_rows, crashed))
    os.close(crashed._fd)  # killed here: rows gone, files and intent file left
    report = store.check()
    assert report.ok, str(report)
    assert report.pending_deletion == 2 and pending_keys(store) == set(keys)
    assert store.recover() == 2
    assert not set(keys) & _keys(store)
    report = store.check()
    assert report.ok and report.pending_deletion == 0 and os.listdir(folder) == []


def test_a_running_deletion_is_not_finished_by_others(store: DataStore, tmp_path: Path) -> None:
    """Another process's recovery leaves an intent file alone while its deletion holds it."""
    _load(store, tmp_path)
    folder = journal_folder(store)
    assert folder is not None
    running = _Intent(folder, sorted(_keys(store)), "test")
    try:
        assert finish_interrupted(store) == 0
        assert os.path.exists(running.path)
    finally:
        running.close()
