"""``pacskit media build`` (from the archive at once) and ``pacskit media create|status|cancel``
(MediaCreationScu against the media add-in, instances found with C-FIND)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from pacskit.cli import app as cli
from pacskit.testing import make_series

from ._archive import image_records, label_text, need, read_barcodes, run
from ._server import AE, ingest, running_server, write_settings

runner = CliRunner()


def archive(tmp_path: Path) -> tuple[Path, str, list[str]]:
    folder = write_settings(tmp_path / "pacs")
    paths = make_series(tmp_path / "in", 3, patient_id="CLI1")
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    study = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    ingest(folder, paths)
    return folder, study, uids


def test_media_build_iso(tmp_path: Path) -> None:
    need("xorriso")
    folder, study, uids = archive(tmp_path)
    iso = tmp_path / "disc.iso"
    result = runner.invoke(cli, ["media", "build", study, "--out", str(iso), "--data-dir", str(folder),
                                 "--label", "CLI disc", "--barcode", "CLI-0001"])
    assert result.exit_code == 0, result.output
    assert str(iso) in result.output and "3 instances" in result.output
    label = tmp_path / "disc_label.pdf"
    assert str(label) in result.output
    assert "CLI disc" in label_text(label) and "ID CLI1" in label_text(label)
    assert read_barcodes(label) == ["CODE-128:CLI-0001"]
    out = tmp_path / "x"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)])
    assert {r[3] for r in image_records(out / "DICOMDIR")} == set(uids)

    missing = runner.invoke(cli, ["media", "build", "1.2.3.4", "--out", str(tmp_path / "b.iso"), "--data-dir", str(folder)])
    assert missing.exit_code == 2 and "not in the archive: 1.2.3.4" in missing.output
    bad = runner.invoke(cli, ["media", "build", study, "--out", str(tmp_path / "c.iso"), "--data-dir", str(folder),
                              "--profile", "STD-NOPE"])
    assert bad.exit_code == 2 and "unsupported media application profile" in bad.output
    ean = runner.invoke(cli, ["media", "build", study, "--out", str(tmp_path / "d.iso"), "--data-dir", str(folder),
                              "--barcode", "ABC", "--barcode-symbology", "EAN13"])
    assert ean.exit_code == 2 and "digits only" in ean.output and not (tmp_path / "d.iso").exists()
    assert not (tmp_path / "b.iso").exists() and not (tmp_path / "c.iso").exists()


def test_media_build_zip_and_folder(tmp_path: Path) -> None:
    folder, study, uids = archive(tmp_path)
    for name in ("usb.zip", "plain"):
        result = runner.invoke(cli, ["media", "build", study, "--out", str(tmp_path / name), "--data-dir", str(folder)])
        assert result.exit_code == 0, result.output
    assert {r[3] for r in image_records(tmp_path / "plain" / "DICOMDIR")} == set(uids)
    import zipfile

    with zipfile.ZipFile(tmp_path / "usb.zip") as zf:
        assert "DICOMDIR" in zf.namelist()


@pytest.mark.pynetdicom
def test_media_create_status_cancel(tmp_path: Path) -> None:
    folder, study, uids = archive(tmp_path)
    with running_server(folder) as server:
        target = f"{AE}@127.0.0.1:{server.port}"
        created = runner.invoke(cli, ["media", "create", target, study, "--label", "by cli", "--wait",
                                      "--priority", "high", "--copies", "1"])
        assert created.exit_code == 0, created.output
        uid = created.output.split()[0]
        assert f"{uid}: DONE (NORMAL), 1 piece(s) of media" in created.output
        assert (folder / "data" / "media" / "out" / f"{uid}.iso").is_file()
        status = runner.invoke(cli, ["media", "status", target, uid])
        assert status.exit_code == 0 and "DONE" in status.output
        cancel = runner.invoke(cli, ["media", "cancel", target, uid])
        assert cancel.exit_code == 1 and "0xC201" in cancel.output

        idle = runner.invoke(cli, ["media", "create", target, study, "--no-initiate"])
        assert idle.exit_code == 0, idle.output
        idle_uid = idle.output.split()[0]
        assert "IDLE" in runner.invoke(cli, ["media", "status", target, idle_uid]).output
        assert runner.invoke(cli, ["media", "cancel", target, idle_uid]).exit_code == 0
        gone = runner.invoke(cli, ["media", "status", target, idle_uid])
        assert gone.exit_code == 1 and "0x0112" in gone.output
        unknown = runner.invoke(cli, ["media", "create", target, "1.2.3.4.5"])
        assert unknown.exit_code == 2 and "not found" in unknown.output
