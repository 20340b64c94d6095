"""The burners: folder, optical through xorriso (its image mode ``stdio:`` writes what a drive would
get into a file; ``-dummy`` simulates) and growisofs (``-dry-run``), a failing tool, and the media
add-in burning through the optical burner."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from pacskit.media import MediaOptions, build_media
from pacskit.media.burners import BurnCancelled, BurnError, BurnJob, FolderBurner, OpticalBurner, burner_class, make_burner
from pacskit.media.fileset import SourceFile
from pacskit.testing import make_series

from ._archive import need, run


@pytest.fixture
def iso(tmp_path: Path) -> Path:
    from pydicom import dcmread

    paths = make_series(tmp_path / "in", 3)
    sources = [SourceFile(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID), str(p), p.stat().st_size)
               for p in paths]
    return build_media(sources, tmp_path / "work" / "REQ1.iso", MediaOptions(label="burn test")).paths[0]


def job(volumes: list[Path], copies: int = 1, cancelled: bool = False) -> BurnJob:
    return BurnJob("1.2.3", volumes, "iso", "burn test", copies, logging.getLogger("test"), lambda: cancelled)


def test_folder_burner_moves_the_volumes(iso: Path, tmp_path: Path) -> None:
    made = FolderBurner(str(tmp_path / "out")).burn(job([iso], copies=2))
    assert made == [str(tmp_path / "out" / "REQ1.iso")]
    assert (tmp_path / "out" / "REQ1.iso").is_file() and not iso.exists()
    with pytest.raises(BurnCancelled):
        FolderBurner(str(tmp_path / "out2")).burn(job([tmp_path / "out" / "REQ1.iso"], cancelled=True))


def test_optical_xorriso_image_mode(iso: Path, tmp_path: Path) -> None:
    need("xorriso", "isoinfo")
    drive = tmp_path / "drive.img"
    burner = make_burner("optical", {"device": f"stdio:{drive}", "tool": "xorriso"})
    made = burner.burn(job([iso], copies=2))
    assert made == [f"stdio:{drive} copy 1 volume 1/1", f"stdio:{drive} copy 2 volume 1/1"]
    data = drive.read_bytes()
    assert data[: iso.stat().st_size] == iso.read_bytes()  # the drive got the image (xorriso pads the track)
    assert "Volume id: BURN_TEST" in run(["isoinfo", "-d", "-i", str(drive)]).stdout


def test_optical_dry_runs_write_nothing(iso: Path, tmp_path: Path) -> None:
    need("xorriso")
    drive = tmp_path / "drive.img"
    OpticalBurner(device=f"stdio:{drive}", dry_run=True).burn(job([iso]))
    assert not drive.exists() or drive.stat().st_size == 0
    if shutil.which("growisofs") is None:
        pytest.skip("growisofs is not installed")
    target = tmp_path / "dvd.img"
    target.touch()
    burner = OpticalBurner(device=str(target), tool="growisofs", dry_run=True)
    assert burner.command(iso) == [shutil.which("growisofs"), "-dvd-compat", "-dry-run", "-Z", f"{target}={iso}"]
    assert burner.burn(job([iso])) == [f"{target} copy 1 volume 1/1 (dry run)"]
    assert target.stat().st_size == 0


def test_optical_failure_is_a_burn_error_with_the_reason(iso: Path, tmp_path: Path) -> None:
    need("xorriso")
    burner = OpticalBurner(device=str(tmp_path / "no" / "such" / "drive"))
    with pytest.raises(BurnError, match="xorriso exited with"):
        burner.burn(job([iso]))


def test_burner_names() -> None:
    assert burner_class("folder") is FolderBurner
    assert burner_class("optical") is OpticalBurner
    assert burner_class("pacskit.media.burners:FolderBurner") is FolderBurner
    with pytest.raises(ValueError, match="no burner named 'robot'"):
        burner_class("robot")
    with pytest.raises(ValueError, match="tool must be xorriso or growisofs"):
        make_burner("optical", {"tool": "cdrecord"})
    with pytest.raises(ValueError, match="unexpected keyword"):
        make_burner("folder", {"colour": "red"})


@pytest.mark.pynetdicom
def test_media_addin_with_the_optical_burner(tmp_path: Path) -> None:
    need("xorriso", "isoinfo")
    from pydicom import dcmread

    from ._server import ingest, running_server, write_settings
    from .test_scp import Scu, request

    drive = tmp_path / "drive.img"
    folder = write_settings(tmp_path / "pacs", burner="optical", burner_options={"device": f"stdio:{drive}"})
    paths = make_series(tmp_path / "in", 2)
    refs = [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in (dcmread(p, stop_before_pixels=True) for p in paths)]
    ingest(folder, paths)
    with running_server(folder) as server:
        scu = Scu(server.port)
        try:
            assert scu.create(request(refs, LabelText="optical"), "1.2.826.0.1.3680043.10.99")[0] == 0
            assert scu.action("1.2.826.0.1.3680043.10.99", 1) == 0
            done = scu.wait_for("1.2.826.0.1.3680043.10.99", ("DONE", "FAILURE"))
        finally:
            scu.release()
    assert done.ExecutionStatus == "DONE", done.ExecutionStatusInfo
    assert done.TotalNumberOfPiecesOfMediaCreated == 1
    assert "Volume id: OPTICAL" in run(["isoinfo", "-d", "-i", str(drive)]).stdout
