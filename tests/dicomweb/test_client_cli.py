"""pacskit.client.dicomweb and the CLI verbs against a DICOMweb peer (pacskit's add-in here; the
client is also exercised against Orthanc's DICOMweb server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from pacskit.client.dicomweb import DicomWebClient, DicomWebClientError
from pacskit.testing.dicomweb import Running, have_orthanc_dicomweb, orthanc_dicomweb
from pacskit.testing.synth import dataset_bytes, make_series

STUDY = "1.2.826.0.1.3680043.8.498.900"
SERIES = "1.2.826.0.1.3680043.8.498.901"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.run([sys.executable, "-c", "from pacskit.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_client_store_search_retrieve(pacs: Running, tmp_path: Path) -> None:
    files = make_series(tmp_path / "s", 3, 16, 16, study_uid=STUDY, series_uid=SERIES, patient_id="CLI")
    with DicomWebClient(pacs.url) as client:
        result = client.store(files)
        assert result.status == 200 and len(result.stored) == 3 and not result.failed
        assert [s["0020000D"]["Value"][0] for s in client.search("studies", {"PatientID": "CLI"})] == [STUDY]
        assert len(client.search(f"studies/{STUDY}/instances", limit=2)) == 2
        paths = client.retrieve(STUDY, into=tmp_path / "got")
        assert sorted(dataset_bytes(p) for p in paths) == sorted(dataset_bytes(f) for f in files)
        one = client.retrieve(STUDY, SERIES, dcmread(files[0]).SOPInstanceUID, into=tmp_path / "one")
        assert len(one) == 1 and dataset_bytes(one[0]) == dataset_bytes(files[0])
        assert client.metadata(STUDY, SERIES)[0]["0020000E"]["Value"] == [SERIES]
        with pytest.raises(DicomWebClientError, match="404"):
            client.retrieve("1.2.3.4", into=tmp_path / "none")


def test_cli_verbs_take_a_dicomweb_url(pacs: Running, tmp_path: Path) -> None:
    files = make_series(tmp_path / "c", 2, 8, 8, study_uid=STUDY, patient_id="CLIV")
    r = _cli("store", pacs.url, str(tmp_path / "c"))
    assert r.returncode == 0 and "2 stored, 0 failed" in r.stdout, r.stdout + r.stderr
    r = _cli("find", pacs.url, "-k", "PatientID=CLIV", "--json")
    assert r.returncode == 0, r.stderr
    assert [m["0020000D"]["Value"][0] for m in json.loads(r.stdout)] == [STUDY]
    r = _cli("get", pacs.url, "-k", f"StudyInstanceUID={STUDY}", "--into", str(tmp_path / "into"))
    assert r.returncode == 0 and "2 instance(s)" in r.stdout, r.stdout + r.stderr
    assert sorted(dataset_bytes(p) for p in (tmp_path / "into").iterdir()) == sorted(dataset_bytes(f) for f in files)
    r = _cli("get", pacs.url, "--into", str(tmp_path / "x"))
    assert r.returncode == 2 and "StudyInstanceUID" in r.stderr
    r = _cli("find", "http://127.0.0.1:1/dicom-web")
    assert r.returncode == 3 and "error:" in r.stderr


@pytest.mark.skipif(not have_orthanc_dicomweb(), reason="Orthanc + orthanc-dicomweb not installed")
def test_client_against_orthanc(tmp_path: Path) -> None:
    files = make_series(tmp_path / "o", 2, 8, 8, study_uid=STUDY, series_uid=SERIES, patient_id="ORTHC")
    with orthanc_dicomweb(tmp_path / "orthanc") as orthanc, DicomWebClient(f"{orthanc.url}/dicom-web") as client:
        assert client.store(files).status == 200
        assert orthanc.instance_count() == 2
        assert len(client.search("studies", {"PatientID": "ORTHC"})) == 1
        paths = client.retrieve(STUDY, into=tmp_path / "got")
        assert sorted(dataset_bytes(p) for p in paths) == sorted(dataset_bytes(f) for f in files)


