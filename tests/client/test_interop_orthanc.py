"""Interoperability with Orthanc 1.10 found in trial use (issue 15 items 5, 6 and 10).

* Orthanc puts the Failed SOP Instance UID List (0008,0058) into the command set of a failed C-GET
  response; `pacskit get` must still get the final status and the failed instances (item 5).
* A C-GET from an Orthanc that holds JPEG 2000 and may not transcode (``TranscodeDicomProtocol``
  false, and Orthanc 1.10 has no JPEG 2000 codec anyway) delivers the instance as stored because we
  propose the compressed syntaxes too; ``--uncompressed`` asks for uncompressed only (item 6).
* A file whose (0002,0002) is empty is refused locally with one line; the rest of the batch is sent
  (item 10). Sent as is, Orthanc aborts the association and the whole batch fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from pacskit.cli import app
from pacskit.client import QueryRetrieveScu, StoreScu
from pacskit.testing import have_orthanc, make_series, orthanc

from .conftest import address

pytestmark = [pytest.mark.orthanc, pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")]

runner = CliRunner()
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def _jpeg2000_file() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_small_jp2klossless.dcm", download=False)
    if path is None:
        pytest.skip("pydicom test file MR_small_jp2klossless.dcm not available offline")
    return Path(path)


@pytest.fixture(scope="module")
def jpeg2000_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One JPEG 2000 lossless MR instance and one uncompressed instance of the same study."""
    j2k = _jpeg2000_file()
    ds = pydicom.dcmread(j2k, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000_LOSSLESS
    study = str(ds.StudyInstanceUID)
    [plain] = make_series(tmp_path_factory.mktemp("plain"), 1, patient_id=str(ds.PatientID), study_uid=study, modality="MR")
    return {"study": study, "j2k": j2k, "j2k_uid": str(ds.SOPInstanceUID), "plain": plain,
            "plain_uid": str(pydicom.dcmread(plain, stop_before_pixels=True).SOPInstanceUID)}


@pytest.fixture(scope="module")
def no_transcoding_orthanc(tmp_path_factory: pytest.TempPathFactory, jpeg2000_study):
    with orthanc(tmp_path_factory.mktemp("orthanc"), extra_config={"TranscodeDicomProtocol": False}) as peer:
        report = StoreScu(address(peer)).store_sync([jpeg2000_study["j2k"], jpeg2000_study["plain"]])
        assert report.ok, report.summary()
        yield peer


def test_get_from_orthanc_with_failed_sub_operations_reports_the_final_status(no_transcoding_orthanc, jpeg2000_study):
    """Every sub-operation refused by our C-STORE handler: Orthanc answers 0xA702 with (0008,0058) in
    the command set. Before: our side aborted on that command set (exit 6, no status)."""
    scu = QueryRetrieveScu(address(no_transcoding_orthanc))
    result = scu.get_sync({"StudyInstanceUID": jpeg2000_study["study"]}, level="STUDY", into=lambda instance: 0xA700)
    assert result.status == 0xA702 and result.failed == 2 and result.completed == 0
    assert sorted(result.failed_instances) == sorted([jpeg2000_study["j2k_uid"], jpeg2000_study["plain_uid"]])


def test_cli_get_stores_jpeg2000_as_received_and_uncompressed_only_on_request(no_transcoding_orthanc, jpeg2000_study, tmp_path):
    target = address(no_transcoding_orthanc)
    study = jpeg2000_study["study"]
    got = invoke("get", target, "-k", f"StudyInstanceUID={study}", "--into", tmp_path / "as-received", "-q")
    assert got.exit_code == 0, got.output
    assert "2 completed, 0 failed" in got.output
    received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in (tmp_path / "as-received").glob("*.dcm")}
    assert set(received) == {jpeg2000_study["j2k_uid"], jpeg2000_study["plain_uid"]}
    kept = pydicom.dcmread(received[jpeg2000_study["j2k_uid"]])
    original = pydicom.dcmread(jpeg2000_study["j2k"])
    assert kept.file_meta.TransferSyntaxUID == JPEG2000_LOSSLESS
    assert kept.PixelData == original.PixelData  # stored as received, not transcoded

    # uncompressed only: Orthanc may not transcode the JPEG 2000 instance, so that sub-operation fails
    # and the final C-GET response (with (0008,0058) in its command set) must still reach us
    strict = invoke("get", target, "-k", f"StudyInstanceUID={study}", "--into", tmp_path / "uncompressed", "--uncompressed", "-q")
    assert strict.exit_code == 1, strict.output
    assert "1 completed, 1 failed" in strict.output
    assert f"failed instance {jpeg2000_study['j2k_uid']}" in strict.output
    [plain] = list((tmp_path / "uncompressed").glob("*.dcm"))
    assert str(pydicom.dcmread(plain).SOPInstanceUID) == jpeg2000_study["plain_uid"]


def _with_empty_sop_class(source: Path, dest: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.file_meta.MediaStorageSOPClassUID = ""
    ds.save_as(dest, enforce_file_format=False)
    return dest


def test_store_refuses_a_file_with_an_empty_sop_class_and_sends_the_rest(tmp_path):
    files = make_series(tmp_path / "good", 2, patient_id="EMPTYCLS")
    folder = tmp_path / "batch"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    bad = _with_empty_sop_class(make_series(tmp_path / "bad", 1, patient_id="EMPTYCLS", prefix="BAD")[0], folder / "AAA-bad.dcm")
    with orthanc(tmp_path / "orthanc") as peer:
        named = invoke("store", address(peer), bad, *files, "-q")
        assert named.exit_code == 1, named.output
        lines = [line for line in named.output.splitlines() if "AAA-bad.dcm" in line]
        assert len(lines) == 1 and "empty Media Storage SOP Class UID (0002,0002)" in lines[0], named.output
        assert "2 succeeded" in named.output
        assert peer.instance_count() == 2
        walked = invoke("store", address(peer), folder, "-q")  # found in a folder: skipped, the rest sent
        assert "2 succeeded" in walked.output, walked.output
        assert sum("AAA-bad.dcm" in line for line in walked.output.splitlines()) == 1
        assert peer.instance_count() == 2
