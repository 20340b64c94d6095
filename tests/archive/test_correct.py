"""Study and series attribute corrections (`pacskit correct`, `POST /store/correct`): index and files
agree, the old values are recorded in each file's Original Attributes Sequence, the UID policy (keep,
or new UIDs with a Source Image Sequence reference), audited, forwarded to DCMTK storescp; a kill -9
before and after the commit leaves `pacskit check` clean and the correction all-or-nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.config.settings import load_settings
from pacskit.server.server import open_store
from pacskit.store import Instance, Series, Study
from pacskit.store.correction import CorrectionError, correct_attributes
from pacskit.store.records import AuditRecord
from pacskit.testing.peers import have_dcmtk, storescp
from pacskit.testing.server import running_server
from pacskit.testing.synth import make_series


def _folder(tmp_path: Path) -> tuple[Path, str, list[str]]:
    """A study of two series (3 + 2 CT instances) and another patient's study; (folder, study, series)."""
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "FIXPACS"\nport = 0\nopen_mode = true\n')
    study = pydicom.uid.generate_uid()
    series = [pydicom.uid.generate_uid(), pydicom.uid.generate_uid()]
    store = open_store(load_settings(folder))
    for n, (uid, count) in enumerate(zip(series, (3, 2))):
        for path in make_series(tmp_path / f"s{n}", count, 16, 16, patient_id="FIX1", study_uid=study, series_uid=uid,
                                series_number=n + 1, attrs={"StudyDescription": "WRONG", "AccessionNumber": "A1"}):
            store.ingest(path, source_ae="MOD")
    for path in make_series(tmp_path / "other", 2, 16, 16, patient_id="OTHER"):
        store.ingest(path, source_ae="MOD")
    store.close()
    return folder, study, series


def _files(folder: Path) -> list[pydicom.Dataset]:
    store = open_store(load_settings(folder), recover=False)
    try:
        return [pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True) for k in store.blobs.iter_keys()]
    finally:
        store.close()


def _index(folder: Path) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, str | None], bool]:
    """(study UID -> (description, accession), series UID -> description, check ok)."""
    store = open_store(load_settings(folder), recover=False)
    try:
        with store.index.reading() as s:
            studies = {r[0]: (r[1], r[2]) for r in s.execute(
                select(Study.study_instance_uid, Study.study_description, Study.accession_number))}
            series = dict(s.execute(select(Series.series_instance_uid, Series.series_description)).all())
        return studies, series, store.check().ok
    finally:
        store.close()


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _pacskit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacskit", *args], capture_output=True, text=True, timeout=120)


def test_correct_a_study_keeping_the_uids_from_the_cli(tmp_path: Path) -> None:
    folder, study, _series = _folder(tmp_path)
    dry = _pacskit("correct", "study", study, "StudyDescription=CT CHEST", "AccessionNumber=A2", "--dry-run",
                   "--data-dir", str(folder))
    assert dry.returncode == 0 and "would change 5 instances" in dry.stdout, dry.stderr
    assert _index(folder)[0][study] == ("WRONG", "A1")
    done = _pacskit("correct", "study", study, "StudyDescription=CT CHEST", "AccessionNumber=A2",
                    "--reason", "typo at the modality", "--data-dir", str(folder))
    assert done.returncode == 0 and "changed 5 instances" in done.stdout, done.stderr
    studies, _series_rows, ok = _index(folder)
    assert ok and studies[study] == ("CT CHEST", "A2")
    mine = [ds for ds in _files(folder) if ds.StudyInstanceUID == study]
    assert len(mine) == 5
    for ds in mine:
        assert (ds.StudyDescription, ds.AccessionNumber) == ("CT CHEST", "A2")
        (item,) = ds.OriginalAttributesSequence
        old = item.ModifiedAttributesSequence[0]
        assert (old.StudyDescription, old.AccessionNumber) == ("WRONG", "A1")
        assert item.ReasonForTheAttributeModification == "CORRECT" and item.ModifyingSystem == "PACSKIT"
        assert "SourceImageSequence" not in ds
    others = [ds for ds in _files(folder) if ds.StudyInstanceUID != study]
    assert all(ds.StudyDescription != "CT CHEST" for ds in others)
    store = open_store(load_settings(folder), recover=False)
    try:
        with store.index.engine.connect() as conn:
            audited = list(conn.execute(select(AuditRecord.xml).where(AuditRecord.event_id == "110103")).scalars())
    finally:
        store.close()
    assert len(audited) == 1 and study in audited[0]
    bad = _pacskit("correct", "study", study, "PatientName=X^Y", "--data-dir", str(folder))
    assert bad.returncode == 1 and "update the patient" in bad.stderr, bad.stderr
    store = open_store(load_settings(folder))
    try:
        with pytest.raises(CorrectionError, match="StudyDate"):
            correct_attributes(store, "study", study, {"StudyDate": "2024-01-01"})
        with pytest.raises(CorrectionError, match="no series"):
            correct_attributes(store, "series", study, {"SeriesDescription": "X"})
        with pytest.raises(CorrectionError, match="not a DICOM keyword"):
            correct_attributes(store, "study", study, {"StudyDescriptio": "X"})
    finally:
        store.close()


def test_new_uids_through_the_admin_api_forwarded_to_storescp(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is needed")
    folder, study, series = _folder(tmp_path)
    before = {str(ds.SOPInstanceUID): ds for ds in _files(folder) if ds.SeriesInstanceUID == series[1]}
    with storescp(tmp_path / "dest") as scp, storescp(tmp_path / "routed") as routed_scp:
        FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="WS1", host="127.0.0.1", port=scp.port))
        FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="WS2", host="127.0.0.1", port=routed_scp.port))
        # a routing rule that forwards corrections (and CTs as they arrive: none arrive here)
        (folder / "server.toml").write_text((folder / "server.toml").read_text()
                                            + "[addins.routing]\nenabled = true\nscan_interval = 0.2\n"
                                            'rules = [{name = "ct", modalities = ["CT"], destinations = ["WS2"], '
                                            "forward_corrections = true}]\n")
        with running_server(folder) as server, httpx.Client(
                transport=httpx.HTTPTransport(uds=str(folder / "FIXPACS.sock")), base_url="http://x") as api:
            refused = api.post("/store/correct", json={"level": "series", "uid": series[1],
                                                       "changes": {"SOPInstanceUID": "1.2.3"}})
            assert refused.status_code == 422 and "cannot be corrected" in refused.text
            answer = api.post("/store/correct", json={
                "level": "series", "uid": series[1], "changes": {"SeriesDescription": "AXIAL 1MM"},
                "uid_policy": "new", "forward_to": ["WS1"], "reason": "wrong protocol name", "user": "jane"})
            assert answer.status_code == 200, answer.text
            report = answer.json()
            assert server.store is not None
            routed_dir = tmp_path / "routed"
            _wait_for(lambda: len(list(routed_dir.glob("*.dcm"))) == 2, "the routing add-in to forward the correction")
        assert report["forwarded"] == {"WS1": {"sent": 2, "failed": 0, "errors": []}}
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "dest").glob("*.dcm")]
        routed = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "routed").glob("*.dcm")]
    new_series = report["new_uids"][series[1]]
    assert len(report["new_uids"]) == 3 and study not in report["new_uids"]  # the series and its 2 instances
    _studies, series_rows, ok = _index(folder)
    assert ok and series_rows.get(new_series) == "AXIAL 1MM" and series[1] not in series_rows
    after = [ds for ds in _files(folder) if ds.SeriesInstanceUID == new_series]
    assert len(after) == 2 and not any(str(ds.SOPInstanceUID) in before for ds in after)
    for ds in after:
        source = ds.SourceImageSequence[-1]
        assert source.ReferencedSOPInstanceUID in before
        assert report["new_uids"][source.ReferencedSOPInstanceUID] == ds.SOPInstanceUID
        old = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
        assert old.SeriesInstanceUID == series[1] and old.SOPInstanceUID == source.ReferencedSOPInstanceUID
        assert ds.StudyInstanceUID == study and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert {str(ds.SOPInstanceUID) for ds in received} == {str(ds.SOPInstanceUID) for ds in after}
    assert {str(ds.SOPInstanceUID) for ds in routed} == {str(ds.SOPInstanceUID) for ds in after}
    store = open_store(load_settings(folder), recover=False)
    try:
        with store.index.reading() as s:
            held = set(s.scalars(select(Instance.sop_instance_uid)))
    finally:
        store.close()
    assert not held & set(before)


_CHILD = textwrap.dedent("""
    import sys
    from pacskit.config.settings import load_settings
    from pacskit.server.server import open_store
    from pacskit.store.correction import correct_attributes

    store = open_store(load_settings(sys.argv[1]))
    def pause(*_):
        print("paused", flush=True)
        sys.stdin.readline()
    where = sys.argv[2]
    correct_attributes(store, "study", sys.argv[3], {"StudyDescription": "FIXED"}, uid_policy="new",
                       before_commit=pause if where == "before-commit" else None,
                       on_study=pause if where == "after-commit" else None)
""")


@pytest.mark.parametrize("where", ["before-commit", "after-commit"])
def test_kill_9_during_a_correction(tmp_path: Path, where: str) -> None:
    folder, study, _series = _folder(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder), where, study], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "paused"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert _index(folder)[2]  # inspect only: the journal accounts for the files in flight
    store = open_store(load_settings(folder))  # recovery, as at the next start
    store.close()
    studies, _series_rows, ok = _index(folder)
    assert ok
    descriptions = sorted(ds.StudyDescription for ds in _files(folder) if ds.PatientID == "FIX1")
    if where == "before-commit":
        assert studies[study] == ("WRONG", "A1") and descriptions == ["WRONG"] * 5
    else:
        assert study not in studies and ("FIXED", "A1") in studies.values() and descriptions == ["FIXED"] * 5
    store = open_store(load_settings(folder), recover=False)
    try:
        assert sum(1 for _ in store.blobs.iter_keys()) == 7  # neither copy left over
    finally:
        store.close()


def test_a_series_attribute_is_not_corrected_at_study_level(tmp_path: Path) -> None:
    folder, study, series = _folder(tmp_path)
    store = open_store(load_settings(folder))
    try:
        with pytest.raises(CorrectionError, match="series attribute"):
            correct_attributes(store, "study", study, {"Modality": "MR"})
        report = correct_attributes(store, "series", series[0], {"Modality": "MR", "SeriesNumber": "7"})
        assert report.instances == 3
        with store.index.reading() as s:
            modalities = s.scalar(select(Study.modalities_in_study).where(Study.study_instance_uid == study))
        assert set(str(modalities).split("\\")) == {"CT", "MR"}
        assert store.check().ok
    finally:
        store.close()
