"""``pacskit print``: files, folders and study / series UIDs of the local store to a printer; clear
one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from pacskit.cli import app as cli
from pacskit.config.settings import load_settings
from pacskit.server.server import open_store

from ._images import ct_image, save
from ._server import AE, print_addin, print_server, write_settings

runner = CliRunner()


def test_print_files_and_folders(tmp_path: Path) -> None:
    files = [save(ct_image(40, 40, seed=i), tmp_path / "images" / f"{i}.dcm") for i in range(5)]
    with print_server(tmp_path / "srv") as server:
        target = f"{AE}@127.0.0.1:{server.port}"
        result = runner.invoke(cli, ["print", target, str(files[0]), str(tmp_path / "images"), "--layout", "2,2",
                                     "--film", "14INX17IN", "--copies", "2", "--label", "cli", "--lut", "lin od"])
        assert result.exit_code == 0, result.output
        assert "printed 6 image(s) on 2 film(s) of STANDARD\\2,2" in result.output
        assert len(list(print_addin(server).spool_dir.glob("*.pdf"))) == 2
        jobs = list(print_addin(server).jobs.values())
        assert [j.label for j in jobs] == ["cli", "cli"] and all(j.status == "DONE" for j in jobs)


def test_refused_film_size_says_which_and_what_is_supported(tmp_path: Path) -> None:
    image = save(ct_image(40, 40), tmp_path / "ct.dcm")
    with print_server(tmp_path / "srv", film_sizes=["A4", "14INX17IN"]) as server:
        result = runner.invoke(cli, ["print", f"{AE}@127.0.0.1:{server.port}", str(image), "--film", "8INX10IN"])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: Film Box N-CREATE refused with 0x0106 (invalid attribute value)")
    assert "FilmSizeID" in line and "8INX10IN" in line and "A4, 14INX17IN" in line


def test_usage_errors(tmp_path: Path) -> None:
    image = save(ct_image(40, 40), tmp_path / "ct.dcm")
    bad_layout = runner.invoke(cli, ["print", "P@127.0.0.1:104", str(image), "--layout", "0,2"])
    assert bad_layout.exit_code == 2 and "every count must be" in bad_layout.output
    missing = runner.invoke(cli, ["print", "P@127.0.0.1:104", str(tmp_path / "nope.dcm")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    (tmp_path / "text.dcm").write_text("hello")
    not_dicom = runner.invoke(cli, ["print", "P@127.0.0.1:104", str(tmp_path / "text.dcm")])
    assert not_dicom.exit_code == 2 and "not a DICOM file" in not_dicom.output


def test_print_a_study_of_the_local_store(tmp_path: Path) -> None:
    local = write_settings(tmp_path / "local")
    store = open_store(load_settings(local))
    study = ct_image(40, 40).StudyInstanceUID
    try:
        for i in range(3):
            ds = ct_image(40, 40, seed=i)
            ds.StudyInstanceUID, ds.InstanceNumber = study, 3 - i
            path = save(ds, Path(store.temp_dir) / f"in{i}.dcm")
            store.ingest(path, source_ae="TEST")
    finally:
        store.close()
    with print_server(tmp_path / "srv") as server:
        target = f"{AE}@127.0.0.1:{server.port}"
        result = runner.invoke(cli, ["print", target, study, "--layout", "ROW\\1,2", "--data-dir", str(local)])
        assert result.exit_code == 0, result.output
        assert "printed 3 image(s) on 1 film(s)" in result.output
        unknown = runner.invoke(cli, ["print", target, "1.2.3.999", "--data-dir", str(local)])
        assert unknown.exit_code == 2 and "no study or series" in unknown.output
    shutil.rmtree(local)


def test_all_frames_of_a_multi_frame_image(tmp_path: Path) -> None:
    import numpy as np

    ds = ct_image(30, 30, window=None)
    frames = np.stack([np.full((30, 30), 100 * (i + 1), np.uint16) for i in range(3)])
    frames[:, 0, 0] = 0  # each frame's range starts at 0: full-range VOI maps the frame to a known grey
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    path = save(ds, tmp_path / "mf.dcm")
    with print_server(tmp_path / "srv") as server:
        target = f"{AE}@127.0.0.1:{server.port}"
        first = runner.invoke(cli, ["print", target, str(path)])
        assert first.exit_code == 0 and "printed 1 image(s)" in first.output
        every = runner.invoke(cli, ["print", target, str(path), "--all-frames", "--layout", "3,1"])
        assert every.exit_code == 0 and "printed 3 image(s) on 1 film(s)" in every.output, every.output
