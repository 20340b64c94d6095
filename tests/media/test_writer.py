"""The media writer (pacskit.media) checked with tools nobody here wrote: DCMTK (dcmdump, dcmmkdir in
its check-only mode, dcmgpdir on the same files), dicom3tools (dcdirdmp, dciodvfy), xorriso and
isoinfo for the ISO 9660 image; the files on the media byte-identical to the archive's, or to their
documented re-encoding (Explicit VR Little Endian, same data)."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from pacskit.media import (
    DoesNotFit,
    MediaOptions,
    UnknownProfile,
    build_media,
    get_profile,
    select_sources,
)

from ._archive import Archive, image_records, make_archive, need, run

pytestmark = pytest.mark.usefixtures("need_dcmtk")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return make_archive(tmp_path_factory.mktemp("archive"))


def all_sources(archive: Archive):  # type: ignore[no-untyped-def]
    sources, missing = select_sources(archive.store, studies=list(archive.studies.values()))
    assert not missing
    return sources


def check_media_files(archive: Archive, root: Path) -> int:
    """Every file the DICOMDIR references is on the media, byte-identical to the archive's when the
    stored syntax is Explicit VR Little Endian, else the same data in Explicit VR Little Endian."""
    records = image_records(root / "DICOMDIR")
    assert records
    for _pid, _study, _series, uid, file_id, ts in records:
        on_media = root / file_id
        stored = archive.path(uid)
        if archive.syntax[uid] == ExplicitVRLittleEndian:
            assert on_media.read_bytes() == stored.read_bytes(), file_id
        else:
            assert ts == ExplicitVRLittleEndian
            a, b = dcmread(stored), dcmread(on_media)
            assert b.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert b.SOPInstanceUID == a.SOPInstanceUID == uid
            assert np.array_equal(a.pixel_array, b.pixel_array)
            for elem in a:
                if elem.tag != 0x7FE00010:
                    assert b[elem.tag].value == elem.value, (file_id, elem.tag)
    return len(records)


def test_folder_dicomdir_valid_by_dcmtk_and_dicom3tools(archive: Archive, tmp_path: Path) -> None:
    need("dcdirdmp", "dciodvfy")
    out = tmp_path / "disc"
    result = build_media(all_sources(archive), out, MediaOptions(fmt="folder", label="Test media"))
    assert result.paths == [out]
    assert result.instances == len(archive.syntax) == 11
    assert result.transcoded == 5  # the Implicit VR and the RLE study
    assert check_media_files(archive, out) == 11
    assert (out / "README.TXT").is_file()
    # 8-character upper-case File IDs
    for path in out.rglob("*"):
        if path.name != "README.TXT":
            assert len(path.name) <= 8 and path.name == path.name.upper(), path

    dump = run(["dcmdump", "-q", str(out / "DICOMDIR")])
    assert "MediaStorageDirectoryStorage" in dump.stdout and dump.stderr == ""
    vfy = run(["dciodvfy", str(out / "DICOMDIR")], check=False)
    assert "BasicDirectory" in vfy.stderr + vfy.stdout
    assert "Error" not in vfy.stderr + vfy.stdout, vfy.stderr
    proc = run(["dcdirdmp", str(out / "DICOMDIR")])
    dirdmp = proc.stdout + proc.stderr  # dcdirdmp writes its listing to stderr
    referenced = {line.split("->")[1].strip().replace("\\", "/") for line in dirdmp.splitlines() if "->" in line}
    assert referenced == {r[4] for r in image_records(out / "DICOMDIR")}
    assert dirdmp.count("PATIENT") == 2 and dirdmp.count("STUDY") == 3

    # dcmmkdir's check of every file against STD-GEN-CD, writing nothing (-w), on a copy
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file() and p.name not in ("DICOMDIR", "README.TXT"))
    run(["dcmmkdir", "-Pgp", "-w", "-nb", "+id", str(copy)] + files, cwd=copy)
    # dcmgpdir building its own DICOMDIR from the same files lists the same records
    (copy / "DICOMDIR").unlink(missing_ok=True)  # dcmmkdir -w removes it (it would write a new one)
    (copy / "README.TXT").unlink()
    run(["dcmgpdir", "+r", "+id", str(copy), "+D", str(copy / "DICOMDIR")], cwd=copy)
    assert image_records(copy / "DICOMDIR") == image_records(out / "DICOMDIR")


def test_dcmmkdir_check_fails_on_the_archive_files(archive: Archive, tmp_path: Path) -> None:
    """The check above can fail: the stored Implicit VR file is not STD-GEN-CD."""
    implicit = next(uid for uid, ts in archive.syntax.items() if ts == "1.2.840.10008.1.2")
    shutil.copyfile(archive.path(implicit), tmp_path / "IM000000")
    proc = run(["dcmmkdir", "-Pgp", "-w", "-nb", "+id", str(tmp_path), "IM000000"], cwd=tmp_path, check=False)
    assert proc.returncode != 0


def test_iso_extracts_byte_identical(archive: Archive, tmp_path: Path) -> None:
    need("xorriso", "isoinfo")
    iso = tmp_path / "disc.iso"
    result = build_media(all_sources(archive), iso, MediaOptions(label="CT head 2026"))
    assert result.paths == [iso]
    assert not list(tmp_path.glob(".*"))  # no partial file, no work folder left
    listing = run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"]).stdout.split()
    names = {n.strip("'") for n in listing}
    assert "/DICOMDIR" in names and "/README.TXT" in names and len(names) == 13
    out = tmp_path / "x"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)])
    assert check_media_files(archive, out) == 11
    # isoinfo: the volume label, Joliet and Rock Ridge names, and a file read through the ISO 9660 names
    pvd = run(["isoinfo", "-d", "-i", str(iso)]).stdout
    assert "Volume id: CT_HEAD_2026" in pvd and "Joliet" in pvd and "Rock Ridge" in pvd
    assert run(["isoinfo", "-J", "-f", "-i", str(iso)]).stdout.split() == run(
        ["isoinfo", "-R", "-f", "-i", str(iso)]).stdout.split()
    primary = run(["isoinfo", "-f", "-i", str(iso)]).stdout.split()
    assert "/DICOMDIR.;1" in primary
    some = next(p for p in primary if p.endswith("IM000000.;1"))
    raw = subprocess_bytes(["isoinfo", "-i", str(iso), "-x", some])
    assert raw == (out / some[1:].replace(".;1", "")).read_bytes()


def subprocess_bytes(argv: list[str]) -> bytes:
    import subprocess

    return subprocess.run(argv, capture_output=True, check=True).stdout


def test_zip_for_usb(archive: Archive, tmp_path: Path) -> None:
    dest = tmp_path / "usb.zip"
    build_media(all_sources(archive), dest, MediaOptions(fmt="zip", profile="STD-GEN-USB-JPEG"))
    out = tmp_path / "x"
    with zipfile.ZipFile(dest) as zf:
        assert zf.testzip() is None
        assert "DICOMDIR" in zf.namelist()
        zf.extractall(out)
    assert check_media_files(archive, out) == 11


def test_split_over_volumes_keeps_studies_whole(archive: Archive, tmp_path: Path) -> None:
    from pacskit.media.fileset import VOLUME_OVERHEAD

    # room for about 6 instances per volume: no study (2..6 instances) is cut
    capacity = VOLUME_OVERHEAD + 16384 + 6 * (10240 + 512)
    result = build_media(all_sources(archive), tmp_path / "disc.iso",
                         MediaOptions(fmt="folder", capacity=capacity, label="split"))
    assert [p.name for p in result.paths] == ["disc_1of2.iso", "disc_2of2.iso"]
    seen: dict[str, set[int]] = {}
    total = 0
    for number, path in enumerate(result.paths, 1):
        records = image_records(path / "DICOMDIR")
        total += check_media_files(archive, path)
        for r in records:
            seen.setdefault(r[1], set()).add(number)
        fsid = dcmread(path / "DICOMDIR").FileSetID
        assert fsid.endswith(f"_{number}OF2")
        assert f"Volume {number} of 2" in (path / "README.TXT").read_text()
    assert total == 11
    assert all(len(v) == 1 for v in seen.values())  # every study on one volume


def test_study_larger_than_a_volume_is_split_between_instances(archive: Archive, tmp_path: Path) -> None:
    from pacskit.media.fileset import VOLUME_OVERHEAD

    capacity = VOLUME_OVERHEAD + 16384 + 2 * (10240 + 512)
    result = build_media(all_sources(archive), tmp_path / "d", MediaOptions(fmt="folder", capacity=capacity))
    assert len(result.paths) == 6
    assert sum(check_media_files(archive, p) for p in result.paths) == 11


def test_no_split_allowed(archive: Archive, tmp_path: Path) -> None:
    from pacskit.media.fileset import VOLUME_OVERHEAD

    with pytest.raises(DoesNotFit, match="splitting is not allowed"):
        build_media(all_sources(archive), tmp_path / "disc.iso",
                    MediaOptions(capacity=VOLUME_OVERHEAD + 50000, allow_split=False))
    assert os.listdir(tmp_path) == []


def test_j2k_lossless_option(archive: Archive, tmp_path: Path) -> None:
    pytest.importorskip("openjpeg")
    out = tmp_path / "d"
    build_media(all_sources(archive), out, MediaOptions(fmt="folder", profile="STD-GEN-DVD-J2K", lossless=True))
    records = image_records(out / "DICOMDIR")
    assert {r[5] for r in records} == {JPEG2000Lossless}
    for _p, _st, _se, uid, file_id, _ts in records:
        assert np.array_equal(dcmread(out / file_id).pixel_array, dcmread(archive.path(uid)).pixel_array)
    proc = run(["dcmmkdir", "-Pd2", "-w", "-nb", "+id", str(out)] + [r[4] for r in records], cwd=out, check=False)
    assert proc.returncode == 0, proc.stderr


def test_unknown_profile_and_missing_study(archive: Archive, tmp_path: Path) -> None:
    with pytest.raises(UnknownProfile, match="STD-GEN-CD"):
        get_profile("STD-FOO")
    sources, missing = select_sources(archive.store, studies=["1.2.3.4"], instances=["1.2.3.5"])
    assert sources == [] and missing == ["1.2.3.4", "1.2.3.5"]


def test_interrupted_write_leaves_nothing(archive: Archive, tmp_path: Path) -> None:
    """A source file vanishing while the image is written: an error, no image, no partial file."""
    from pacskit.media.fileset import SourceFile

    victim = tmp_path / "victim.dcm"
    sources = all_sources(archive)
    shutil.copyfile(sources[0].path, victim)
    sources[0] = SourceFile(sources[0].sop_instance_uid, str(victim), sources[0].size)
    calls = []

    def progress(stage: str, n: int) -> None:
        calls.append(stage)
        if stage == "dicomdir":
            victim.unlink()

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError):
        build_media(sources, out / "disc.iso", MediaOptions(), progress=progress)
    assert os.listdir(out) == []


def test_failed_iso_write_leaves_no_partial_image(archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pycdlib

    def broken_write(self, filename, *args, **kwargs):  # type: ignore[no-untyped-def]
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 100000)  # half an image...
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pycdlib.PyCdlib, "write", broken_write)
    with pytest.raises(OSError, match="No space"):
        build_media(all_sources(archive), tmp_path / "disc.iso", MediaOptions())
    assert os.listdir(tmp_path) == []
