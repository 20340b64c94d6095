"""Referenced instances the archive lacks are retrieved first (``retrieve_from``): Orthanc holds one of
them, the media add-in finds it there (C-FIND by SOP Instance UID), C-MOVEs it to itself or C-GETs it
(``retrieve_with``) and builds the media with it; an instance nobody has still fails the request with Failure Reason 0x0112."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from pacskit.config.aetitles import AE_FILE, FileAeRegistry, RemoteAE
from pacskit.testing import make_series
from pacskit.testing.peers import have_orthanc, orthanc

from ._archive import image_records, need, run
from ._server import AE, ingest, running_server, write_settings
from .test_scp import CT, Scu, request

pytestmark = [pytest.mark.orthanc, pytest.mark.pynetdicom]


@pytest.mark.parametrize("method", ["C-MOVE", "C-GET"])
def test_missing_instances_are_retrieved_from_orthanc(tmp_path: Path, method: str) -> None:
    if not have_orthanc():
        pytest.skip("Orthanc is not installed")
    need("xorriso")
    folder = write_settings(tmp_path / "pacs", retrieve_from=["ORTHANC"], retrieve_timeout=120.0,
                            retrieve_with=method)
    local, remote = make_series(tmp_path / "local", 2), make_series(tmp_path / "remote", 3, patient_id="REMOTE1")
    refs = [(str(d.SOPClassUID), str(d.SOPInstanceUID))
            for d in (dcmread(p, stop_before_pixels=True) for p in local + remote)]
    ingest(folder, local)  # (consumes the files)
    with running_server(folder) as server:
        with orthanc(tmp_path / "orthanc", modalities={"media": [AE, "127.0.0.1", server.port]}) as peer:
            for p in remote:
                peer.post("/instances", p.read_bytes())
            FileAeRegistry(folder / AE_FILE).add(RemoteAE(title="ORTHANC", host="127.0.0.1", port=peer.dicom_port),
                                                 replace=True)
            scu = Scu(server.port)
            try:
                uid, nobody = generate_uid(), generate_uid()
                assert scu.create(request(refs), uid)[0] == 0
                assert scu.action(uid, 1) == 0
                done = scu.wait_for(uid, ("DONE", "FAILURE"))
                partly = generate_uid()
                assert scu.create(request(refs[:1] + [(CT, nobody)]), partly)[0] == 0
                assert scu.action(partly, 1) == 0
                failed = scu.wait_for(partly, ("DONE", "FAILURE"))
            finally:
                scu.release()
    assert done.ExecutionStatus == "DONE", done.ExecutionStatusInfo
    out = tmp_path / "x"
    run(["xorriso", "-osirrox", "on", "-indev", str(folder / "data" / "media" / "out" / f"{uid}.iso"), "-extract", "/",
         str(out)])
    assert {r[3] for r in image_records(out / "DICOMDIR")} == {i for _c, i in refs}
    assert failed.ExecutionStatus == "FAILURE" and failed.ExecutionStatusInfo == "NO_SUCH_INSTANCE"
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed.FailedSOPSequence] == [(nobody, 0x0112)]
