"""Print management against DCMTK:

- our PrintScu against ``dcmprscp`` (DCMTK's print SCP, which keeps what it receives as Stored Print
  and Hardcopy Grayscale Image objects in its database folder): several layouts, 8 and 12 bits; the
  stored objects are read back and compared with what we meant to print;
- DCMTK's print SCU ``dcmprscu`` against our SCP, driven as its documentation says: ``dcmpsprt``
  renders the images into a print job (Stored Print + Hardcopy Grayscale Images in the database),
  ``dcmprscu`` prints that job; our PDF page, rendered with ``pdftoppm``, is compared with the images
  computed with pydicom's VOI.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from pacskit.client.print import PrintFailed, PrintScu
from pacskit.dicom.printing import film_size_mm, prepare_print_image
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, have_dcmtk, wait_for_port

from ._images import ct_image, save
from ._pdf import expected_gray, find_image, fitted, have_pdftoppm, outside_neighbourhood, render
from ._server import AE, print_addin, print_server

pytestmark = [pytest.mark.dcmtk, pytest.mark.skipif(not have_dcmtk(), reason="DCMTK is not installed")]

PRINTER_SECTION = r"""
[{name}]
Aetitle = {aet}
Description = {description}
Hostname = localhost
Port = {port}
Type = {kind}
BorderDensity = BLACK\WHITE\150\20
DisplayFormat = 1,1\1,2\2,1\2,2\2,3\3,3
EmptyImageDensity = BLACK\WHITE\20
FilmDestination = MAGAZINE\PROCESSOR
FilmSizeID = 8INX10IN\14INX17IN\A4
MagnificationType = REPLICATE\BILINEAR\CUBIC\NONE
MediumType = PAPER\CLEAR FILM\BLUE FILM
MaxDensity = 320
MinDensity = 20
MaxPDU = 32768
ImplicitOnly = false
DisableNewVRs = false
OmitSOPClassUIDFromCreateResponse = false
PresentationLUTMatchRequired = false
PresentationLUTinFilmSession = false
ResolutionID = STANDARD\HIGH
Supports12Bit = true
SupportsDecimateCrop = false
SupportsImageSize = false
SupportsPresentationLUT = false
SupportsTrim = true
"""


def write_config(folder: Path, **printers: dict[str, Any]) -> Path:
    """A dcmpstat.cfg (see /etc/dcmtk/dcmpstat.cfg) with its database and spool in ``folder``."""
    (folder / "db").mkdir(parents=True, exist_ok=True)
    (folder / "spool").mkdir(exist_ok=True)
    text = (f"[[GENERAL]]\n[DATABASE]\nDirectory = {folder / 'db'}\n[PRINT]\nSpooler = dcmprscu\nServer = dcmprscp\n"
            f"Directory = {folder / 'spool'}\nDetailedLog = true\nBinaryLog = false\nSleep = 1\n"
            "DeletePrintJobs = false\nAlwaysDeleteTerminateJobs = false\n[[COMMUNICATION]]\n")
    for name, values in printers.items():
        text += PRINTER_SECTION.format(name=name, **values)
    path = folder / "dcmpstat.cfg"
    path.write_text(text)
    return path


@pytest.fixture
def dcmprscp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK's print SCP on a free port; yields (port, its database folder)."""
    port = free_port()
    config = write_config(tmp_path, DCMPRT={"aet": "DCMPRSCP", "description": "DCMTK print SCP", "port": port,
                                            "kind": "LOCALPRINTER"})
    log = (tmp_path / "dcmprscp.log").open("wb")
    proc = subprocess.Popen([dcmtk_tool("dcmprscp"), "-v", "-c", str(config), "-p", "DCMPRT"], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dcmtk_env())
    try:
        wait_for_port("127.0.0.1", port, 20, proc=proc)
        yield port, tmp_path / "db"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        log.close()


def _stored(db: Path) -> tuple[list[Any], dict[str, Any]]:
    """dcmprscp's Stored Print objects and its Hardcopy Grayscale Images by SOP Instance UID."""
    prints = [dcmread(p) for p in sorted(db.glob("SP_*.dcm"))]
    images = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in db.glob("HG_*.dcm"))}
    return prints, images


@pytest.mark.parametrize(("layout", "count", "bits", "film"), [
    ("STANDARD\\1,1", 1, 8, "A4"),
    ("STANDARD\\2,2", 4, 12, "14INX17IN"),
    ("STANDARD\\2,3", 5, 8, "8INX10IN"),
])
def test_our_scu_against_dcmprscp(dcmprscp: tuple[int, Path], layout: str, count: int, bits: int, film: str) -> None:
    port, db = dcmprscp
    images = [ct_image(80 + 8 * i, 96, seed=i, monochrome1=(i == 1)) for i in range(count)]

    async def go() -> Any:
        async with PrintScu(f"DCMPRSCP@127.0.0.1:{port}", calling_ae="PACSKIT") as scu:
            printer = await scu.printer()
            assert printer.status == "NORMAL"
            return await scu.print_images(images, layout=layout, film_size=film, bits=bits, copies=1,
                                          medium="PAPER", magnification="REPLICATE")

    result = asyncio.run(go())
    assert result.film_boxes == 1 and result.images == count
    (stored_print,), hardcopies = _stored(db)
    film_box = stored_print.FilmBoxContentSequence[0]
    assert film_box.ImageDisplayFormat == layout and film_box.FilmSizeID == film
    assert film_box.MagnificationType == "REPLICATE"
    boxes = sorted(stored_print.ImageBoxContentSequence, key=lambda item: int(item.ImageBoxPosition))
    assert [int(b.ImageBoxPosition) for b in boxes] == list(range(1, count + 1))
    for box, ds in zip(boxes, images):
        hardcopy = hardcopies[str(box.ReferencedImageSequence[0].ReferencedSOPInstanceUID)]
        assert hardcopy.PhotometricInterpretation == "MONOCHROME2" and int(hardcopy.BitsStored) == bits
        sent = prepare_print_image(ds, bits=bits).pixels
        assert np.array_equal(hardcopy.pixel_array, sent)  # what dcmprscp kept is what we sent
        # ...which is the image after its VOI window (MONOCHROME1 inverted), on the printer's bit depth
        voi = expected_gray(ds).astype(np.int32)
        assert np.abs(np.round(sent.astype(np.float64) * 255 / (2**bits - 1)) - voi).max() <= 1


def test_refused_film_size_is_named(dcmprscp: tuple[int, Path]) -> None:
    port, _ = dcmprscp

    async def go() -> None:
        async with PrintScu(f"DCMPRSCP@127.0.0.1:{port}", calling_ae="PACSKIT") as scu:
            await scu.print_images([ct_image()], layout="STANDARD\\1,1", film_size="11INX17IN")

    with pytest.raises(PrintFailed) as caught:
        asyncio.run(go())
    text = str(caught.value)
    assert "Film Box N-CREATE" in text and "0x0106" in text and "FilmSizeID=11INX17IN" in text


@pytest.mark.skipif(not have_pdftoppm(), reason="poppler-utils (pdftoppm) not installed")
def test_dcmprscu_against_our_scp(tmp_path: Path) -> None:
    dpi = 144
    images = [ct_image(100, 125, seed=5), ct_image(100, 125, seed=6, monochrome1=True, window=(-100.0, 900.0))]
    files = [save(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(images)]
    with print_server(tmp_path / "srv", dpi=dpi, margin_mm=5.0) as server:
        config = write_config(tmp_path / "dcmtk", OURPRT={"aet": AE, "description": "pacskit print SCP",
                                                           "port": server.port, "kind": "PRINTER"})
        env = dcmtk_env()
        # 1. dcmpsprt renders the images (their first VOI window) into a print job in the database
        subprocess.run([dcmtk_tool("dcmpsprt"), "-c", str(config), "-p", "OURPRT", "--layout", "2", "1",
                        "--filmsize", "A4", "--magnification", "REPLICATE", "--border", "BLACK",
                        *map(str, files)], check=True, capture_output=True, env=env, cwd=tmp_path, timeout=60)
        (stored_print,) = sorted((tmp_path / "dcmtk" / "db").glob("SP_*.dcm"))
        # 2. dcmprscu prints it on our SCP
        proc = subprocess.run([dcmtk_tool("dcmprscu"), "-v", "-c", str(config), "-p", "OURPRT", str(stored_print)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
        (pdf,) = print_addin(server).spool_dir.glob("*.pdf")
    (page,) = render(pdf, dpi)
    width_mm, height_mm = film_size_mm("A4")
    px = dpi / 25.4
    area_w, area_h = (width_mm - 10) * px, (height_mm - 10) * px
    for i, ds in enumerate(images):  # STANDARD\2,1: two columns, one row
        cell = (5 * px + i * area_w / 2, 5 * px, area_w / 2, area_h)
        expected = expected_gray(ds)
        printed, up, dx, dy = find_image(page, expected, *fitted(cell, 100, 125))
        # DCMTK's VOI into 12 bits, then 8 bits on paper: pydicom's VOI within a grey level (measured:
        # no pixel outside; the allowance is for pdftoppm's blending, see _pdf.render)
        assert outside_neighbourhood(printed, up, tolerance=1) < 0.002
        assert abs(dx) <= 1 and abs(dy) <= 1
