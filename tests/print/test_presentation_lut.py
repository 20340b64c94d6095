"""Presentation LUTs (PS3.4 H.4.9, PS3.3 C.11.4) on the print SCP: IDENTITY, LIN OD (grey linear in
optical density between Min and Max Density) and tables, referenced by film boxes and image boxes;
and DCMTK's dcmpsprt --lin-od + dcmprscu sending one."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pacskit.client.print import PrintScu, lut_reference
from pacskit.dicom.printing import film_size_mm, image_box_item, prepare_print_image
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, have_dcmtk

from ._images import ct_image, save
from ._pdf import expected_gray, find_image, fitted, have_pdftoppm, outside_neighbourhood, render
from ._server import AE, print_addin, print_server

pytestmark = pytest.mark.skipif(not have_pdftoppm(), reason="poppler-utils (pdftoppm) not installed")

DPI = 144
PX = DPI / 25.4


def lin_od(p_values: np.ndarray, top: float, min_density: int = 20, max_density: int = 320) -> np.ndarray:
    """PS3.3 C.11.4.1 LIN OD: density linear in the P-value, Dmin at 0, Dmax at the top; printed
    grey = reflectance 10 ** -(D - Dmin), on 0..255."""
    density = (min_density + (max_density - min_density) * p_values.astype(float) / top) / 100.0
    return np.round(255 * np.power(10.0, -(density - min_density / 100.0))).astype(np.uint8)


def _cell(index: int, columns: int) -> tuple[float, float, float, float]:
    width_mm, height_mm = film_size_mm("A4")
    area_w, area_h = (width_mm - 10) * PX, (height_mm - 10) * PX
    return 5 * PX + index * area_w / columns, 5 * PX, area_w / columns, area_h


def test_lin_od_table_and_references(tmp_path: Path) -> None:
    images = [ct_image(100, 125, seed=1), ct_image(100, 125, seed=2)]
    with print_server(tmp_path / "srv", dpi=DPI, margin_mm=5.0) as server:
        async def go() -> None:
            async with PrintScu(f"{AE}@127.0.0.1:{server.port}", presentation_lut=True) as scu:
                lin = await scu.create_presentation_lut("LIN OD")
                inverse = await scu.create_presentation_lut(table=[255 - i for i in range(256)], bits=8)
                assert lin.status == 0 and inverse.status == 0
                assert (await scu.create_presentation_lut("SIGMOID")).status == 0x0106
                bad_table = await scu.create_presentation_lut(table=[300] * 256, bits=8)
                assert bad_table.status == 0x0106
                session = (await scu.create_session()).affected_sop_instance_uid
                film = await scu.create_film_box(session, "STANDARD\\2,1", film_size="A4", magnification="REPLICATE",
                                                 ReferencedPresentationLUTSequence=lut_reference(
                                                     lin.affected_sop_instance_uid))
                assert film.result.status == 0
                unknown = await scu.create_film_box(session, "STANDARD\\1,1",
                                                    ReferencedPresentationLUTSequence=lut_reference("1.2.3"))
                assert unknown.result.status == 0x0106
                # box 1: the film box's LIN OD; box 2: its own table (the image box's LUT wins)
                assert (await scu.set_image_box(film.image_boxes[0], prepare_print_image(images[0]), position=1)).status == 0
                request = Dataset()
                request.ImageBoxPosition = 2
                request.BasicGrayscaleImageSequence = DicomSequence([image_box_item(prepare_print_image(images[1]))])
                request.ReferencedPresentationLUTSequence = lut_reference(inverse.affected_sop_instance_uid)
                assert (await scu.n_set_meta_image_box(film.image_boxes[1], request)).status == 0
                # deleting a LUT keeps it for the boxes that reference it
                assert (await scu.n_delete_lut(lin.affected_sop_instance_uid)).status == 0
                assert (await scu.print_film_box(film.uid)).status == 0

        asyncio.run(go())
        (pdf,) = print_addin(server).spool_dir.glob("*.pdf")
    (page,) = render(pdf, DPI)
    expected = [lin_od(expected_gray(images[0]), 255.0), (255 - expected_gray(images[1])).astype(np.uint8)]
    for i, want in enumerate(expected):
        printed, up, dx, dy = find_image(page, want, *fitted(_cell(i, 2), 100, 125))
        assert outside_neighbourhood(printed, up, tolerance=1) < 0.002, i
        assert abs(dx) <= 1 and abs(dy) <= 1


@pytest.mark.dcmtk
@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK is not installed")
def test_dcmprscu_sends_lin_od(tmp_path: Path) -> None:
    from .test_dcmtk import write_config

    images = [ct_image(100, 125, seed=11)]
    files = [save(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(images)]
    with print_server(tmp_path / "srv", dpi=DPI, margin_mm=5.0) as server:
        config = write_config(tmp_path / "dcmtk", OURPRT={"aet": AE, "description": "pacskit print SCP",
                                                           "port": server.port, "kind": "PRINTER"})
        # a printer with Presentation LUTs; LIN OD rendered by the printer, not folded into the pixels
        # by dcmprscu (which would then send IDENTITY: see /etc/dcmtk/dcmpstat.cfg)
        config.write_text(config.read_text().replace(
            "SupportsPresentationLUT = false", "SupportsPresentationLUT = true\nPresentationLUTPreferSCPRendering = true"))
        env = dcmtk_env()
        subprocess.run([dcmtk_tool("dcmpsprt"), "-c", str(config), "-p", "OURPRT", "--layout", "1", "1",
                        "--filmsize", "A4", "--magnification", "REPLICATE", "--lin-od", *map(str, files)],
                       check=True, capture_output=True, env=env, cwd=tmp_path, timeout=60)
        (stored_print,) = sorted((tmp_path / "dcmtk" / "db").glob("SP_*.dcm"))
        proc = subprocess.run([dcmtk_tool("dcmprscu"), "-v", "-c", str(config), "-p", "OURPRT", str(stored_print)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "presentation LUT related print job settings will be ignored" not in output, output
        addin = print_addin(server)
        (pdf,) = addin.spool_dir.glob("*.pdf")
    (page,) = render(pdf, DPI)
    want = lin_od(expected_gray(images[0]), 255.0)
    printed, up, _, _ = find_image(page, want, *fitted(_cell(0, 1), 100, 125))
    assert outside_neighbourhood(printed, up, tolerance=2) < 0.002
