"""Interoperability with peers nobody here wrote: Orthanc's DICOMweb plugin as a client of pacskit
(QIDO, WADO-RS retrieve into Orthanc, STOW-RS from Orthanc), and DCMTK for byte identity between the
DIMSE and DICOMweb paths (C-STORE -> WADO-RS, STOW-RS -> C-GET)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from pacskit.testing.dicomweb import (
    Running,
    have_orthanc_dicomweb,
    keep_copies,
    multipart_parts,
    orthanc_dicomweb,
)
from pacskit.testing.peers import count_store_successes, dcmtk_env, dcmtk_tool, have_dcmtk, run_storescu
from pacskit.testing.synth import dataset_bytes, make_series

STUDY = "1.2.826.0.1.3680043.8.498.700"
SERIES = "1.2.826.0.1.3680043.8.498.701"

need_orthanc = pytest.mark.skipif(not have_orthanc_dicomweb(), reason="Orthanc + orthanc-dicomweb not installed")
need_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed")


@need_orthanc
def test_orthanc_dicomweb_client_searches_retrieves_and_stores(pacs: Running, tmp_path: Path) -> None:
    files = make_series(tmp_path / "s", 3, 16, 16, study_uid=STUDY, series_uid=SERIES, patient_id="ORTH",
                        patient_name="Orthanc^Client")
    pacs.ingest(keep_copies(tmp_path, files))
    with orthanc_dicomweb(tmp_path / "orthanc", servers={"pacs": pacs.url}) as orthanc:
        # QIDO through Orthanc's client
        studies = orthanc.post("/dicom-web/servers/pacs/qido", {"Uri": "/studies", "Arguments": {"PatientID": "ORTH"}})
        assert [s["0020000D"]["Value"] for s in studies] == [STUDY]
        instances = orthanc.post("/dicom-web/servers/pacs/qido",
                                 {"Uri": f"/studies/{STUDY}/series/{SERIES}/instances"})
        assert len(instances) == 3
        # WADO-RS: Orthanc retrieves the study into its own store, byte for byte
        orthanc.post("/dicom-web/servers/pacs/retrieve", {"Resources": [{"Study": STUDY}]})
        assert orthanc.instance_count() == 3
        by_uid = {dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
        for oid in orthanc.get("/instances"):
            uid = orthanc.get(f"/instances/{oid}/simplified-tags")["SOPInstanceUID"]
            with httpx.Client() as c:
                got = c.get(f"{orthanc.url}/instances/{oid}/file").content
            (tmp_path / "from-orthanc.dcm").write_bytes(got)
            assert dataset_bytes(tmp_path / "from-orthanc.dcm") == dataset_bytes(by_uid[uid])
        # STOW-RS from Orthanc: new instances uploaded to Orthanc, sent to pacskit (Orthanc's
        # 72-character multipart boundary is accepted)
        new = make_series(tmp_path / "n", 2, 8, 8, study_uid="1.2.826.0.1.3680043.8.498.710")
        ids = [orthanc.post("/instances", f.read_bytes())["ID"] for f in new]
        answer = orthanc.post("/dicom-web/servers/pacs/stow", {"Resources": ids})
        assert answer["InstancesCount"] == "2" or answer.get("InstancesCount") == 2
    assert pacs.server.store.count("instances") == 5
    for f in new:
        uid = dcmread(f, stop_before_pixels=True).SOPInstanceUID
        stored = pacs.server.store.instance_path(uid)
        assert stored is not None and dataset_bytes(stored) == dataset_bytes(f)


@need_dcmtk
def test_cstore_then_wado_rs_is_byte_identical(pacs: Running, tmp_path: Path) -> None:
    """storescu sends the files; WADO-RS (transfer-syntax=*) answers the dataset bytes storescu sent."""
    files = make_series(tmp_path / "c", 2, 32, 32, study_uid=STUDY, series_uid=SERIES)
    out = run_storescu("127.0.0.1", pacs.dicom_port, files, called="PACSKIT")
    assert count_store_successes(out) == 2, out.stdout
    with httpx.Client(base_url=pacs.url) as c:
        for f in files:
            uid = dcmread(f, stop_before_pixels=True).SOPInstanceUID
            r = c.get(f"/studies/{STUDY}/series/{SERIES}/instances/{uid}",
                      headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            (_, body), = multipart_parts(r.headers["content-type"], r.content)
            (tmp_path / "wado.dcm").write_bytes(body)
            assert dataset_bytes(tmp_path / "wado.dcm") == dataset_bytes(f)


@need_dcmtk
def test_stow_rs_then_cget_is_byte_identical(pacs: Running, tmp_path: Path) -> None:
    files = make_series(tmp_path / "g", 2, 32, 32, study_uid="1.2.826.0.1.3680043.8.498.720")
    boundary = "b0undary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    with httpx.Client(base_url=pacs.url) as c:
        r = c.post("/studies", content=body,
                   headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert r.status_code == 200, r.text
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    proc = subprocess.run([dcmtk_tool("getscu"), "-v", "-S", "-aet", "GETSCU", "-aec", "PACSKIT", "-od", str(out_dir),
                           "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.826.0.1.3680043.8.498.720",
                           "127.0.0.1", str(pacs.dicom_port)],
                          capture_output=True, text=True, env=dcmtk_env(), timeout=120, check=False)
    got = sorted(out_dir.iterdir())
    assert len(got) == 2, proc.stdout + proc.stderr
    sent = {dcmread(f, stop_before_pixels=True).SOPInstanceUID: dataset_bytes(f) for f in files}
    for g in got:
        assert dataset_bytes(g) == sent[dcmread(g, stop_before_pixels=True).SOPInstanceUID]
