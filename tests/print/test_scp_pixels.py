"""Our Print SCU against our Print SCP: each film box becomes a PDF page whose images, rendered by
poppler's pdftoppm at the printer's resolution, match the images computed independently with pydicom
(Modality LUT + VOI LUT) and numpy, in the cells of the display format."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pacskit.client.print import PrintScu

from ._images import ct_image, rgb_image
from ._pdf import (
    differences,
    expected_gray,
    expected_rgb,
    find_image,
    fitted,
    have_pdftoppm,
    outside_neighbourhood,
    outside_source_range,
    page_count,
    render,
)
from ._server import AE, print_addin, print_server

pytestmark = pytest.mark.skipif(not have_pdftoppm(), reason="poppler-utils (pdftoppm) not installed")

DPI = 144  # 2 printer pixels per PDF point: image positions fall on whole device pixels exactly
MARGIN = 5.0
PX = DPI / 25.4


def cells(layout: str, film_mm: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    """The cells of ``layout`` in printer pixels (left, top, width, height), in image position order,
    as PS3.3 C.13.8 defines them (STANDARD\\C,R: C columns, R rows; ROW: images per row; COL: per column)."""
    left, top = MARGIN * PX, MARGIN * PX
    width, height = (film_mm[0] - 2 * MARGIN) * PX, (film_mm[1] - 2 * MARGIN) * PX
    kind, _, numbers = layout.partition("\\")
    counts = [int(n) for n in numbers.split(",")]
    out = []
    if kind == "STANDARD":
        columns, rows = counts
        for r in range(rows):
            for c in range(columns):
                out.append((left + c * width / columns, top + r * height / rows, width / columns, height / rows))
    elif kind == "ROW":
        for r, n in enumerate(counts):
            for c in range(n):
                out.append((left + c * width / n, top + r * height / len(counts), width / n, height / len(counts)))
    else:
        for c, n in enumerate(counts):
            for r in range(n):
                out.append((left + c * width / len(counts), top + r * height / n, width / len(counts), height / n))
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with print_server(tmp_path_factory.mktemp("print") / "srv", dpi=DPI, margin_mm=MARGIN) as srv:
        yield srv


def _new_pdfs(server: Any, before: set[Path]) -> list[Path]:
    return sorted(set(print_addin(server).spool_dir.glob("*.pdf")) - before)


def _print(server: Any, datasets: list[Any], **kwargs: Any) -> tuple[list[Path], Any]:
    before = set(print_addin(server).spool_dir.glob("*.pdf"))
    color = kwargs.pop("color", False)

    async def go() -> Any:
        async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="PRINTSCU", color=color) as scu:
            return await scu.print_images(datasets, **kwargs)

    result = run(go())
    return _new_pdfs(server, before), result


LAYOUTS = [
    # layout, film size, orientation, magnification, images (rows, cols), strict
    ("STANDARD\\2,2", "A4", "PORTRAIT", "REPLICATE", (100, 125), True),  # 4x, whole printer pixels
    ("STANDARD\\1,1", "A4", "PORTRAIT", "REPLICATE", (100, 125), True),  # 8x
    ("ROW\\1,2", "A4", "LANDSCAPE", "BILINEAR", (120, 160), False),
    ("COL\\2,1", "14INX17IN", "PORTRAIT", "CUBIC", (90, 70), False),
    ("STANDARD\\3,2", "8INX10IN", "LANDSCAPE", "REPLICATE", (64, 64), False),
]


@pytest.mark.parametrize(("layout", "film", "orientation", "magnification", "shape", "strict"), LAYOUTS,
                         ids=[x[0].replace("\\", "-") + "-" + x[1] for x in LAYOUTS])
def test_grayscale_layouts(server: Any, layout: str, film: str, orientation: str, magnification: str,
                           shape: tuple[int, int], strict: bool) -> None:
    from pacskit.dicom.printing import film_size_mm, parse_display_format

    boxes = parse_display_format(layout).image_boxes
    images = [ct_image(*shape, seed=i, monochrome1=(i == 1), window=(40.0 + 30 * i, 400.0 + 100 * i))
              for i in range(boxes)]
    pdfs, result = _print(server, images, layout=layout, film_size=film, orientation=orientation,
                          magnification=magnification)
    assert result.film_boxes == 1 and result.images == boxes and not result.warnings
    assert len(pdfs) == 1 and page_count(pdfs[0]) == 1
    (page,) = render(pdfs[0], DPI)
    (exact,) = render(pdfs[0], DPI, renderer="pdftocairo", color=True)
    exact = exact[..., 0]  # gray: R = G = B
    film_mm = film_size_mm(film, orientation)
    # the film size (pdftoppm may round the page up by one pixel)
    assert abs(page.shape[0] - film_mm[1] * PX) <= 1 and abs(page.shape[1] - film_mm[0] * PX) <= 1
    for ds, cell in zip(images, cells(layout, film_mm)):
        expected = expected_gray(ds)
        printed, up, dx, dy = find_image(page, expected, *fitted(cell, *shape))
        mean, p99, worst = differences(printed, up)
        outside = outside_neighbourhood(printed, up)
        if strict:  # replication: every printer pixel is one of the image's pixels (up to rounding)
            assert outside < 0.002 and mean < 1.5, (layout, mean, p99, worst, outside)
            printed, up, _, _ = find_image(exact, expected, *fitted(cell, *shape))
            assert outside_neighbourhood(printed, up, tolerance=0) == 0, layout  # pdftocairo: exact values
        else:  # interpolated: between neighbouring image pixels (CUBIC may overshoot a little)
            outside = outside_source_range(printed, expected)
            assert outside < 0.01 and mean < 3.0, (layout, mean, p99, worst, outside)
        assert abs(dx) <= 1 and abs(dy) <= 1  # where the layout puts it
    # the film around the images is the border density (BLACK), the margin included
    assert page[:5, :5].max() == 0 and page[-8:-3, -8:-3].max() == 0


def test_polarity_reverse_12_bit_and_empty_boxes(server: Any) -> None:
    from pacskit.dicom.printing import film_size_mm

    ds = ct_image(100, 125, seed=7)
    pdfs, _ = _print(server, [ds], layout="STANDARD\\2,2", film_size="A4", magnification="REPLICATE", bits=12,
                     polarity="REVERSE", empty_image_density="WHITE", border_density="BLACK")
    (page,) = render(pdfs[0], DPI)
    film_mm = film_size_mm("A4")
    grid = cells("STANDARD\\2,2", film_mm)
    printed, up, _, _ = find_image(page, 255 - expected_gray(ds), *fitted(grid[0], 100, 125))
    assert outside_neighbourhood(printed, up) < 0.002  # 12 bits -> 8 on paper: rounding only
    for left, top, width, height in grid[1:]:  # empty image boxes: white cells
        inner = page[int(top) + 2:int(top + height) - 2, int(left) + 2:int(left + width) - 2]
        assert inner.min() == 255


def test_color_session(server: Any) -> None:
    from pacskit.dicom.printing import film_size_mm

    rgb, ct = rgb_image(90, 120), ct_image(100, 125, seed=3)
    pdfs, result = _print(server, [rgb, ct], layout="STANDARD\\1,2", film_size="A4", magnification="REPLICATE",
                          color=True)
    assert result.images == 2
    (page,) = render(pdfs[0], DPI, color=True)
    grid = cells("STANDARD\\1,2", film_size_mm("A4"))
    printed, up, _, _ = find_image(page, expected_rgb(rgb), *fitted(grid[0], 90, 120))
    assert outside_neighbourhood(printed, up) < 0.002
    gray = np.repeat(expected_gray(ct)[..., None], 3, axis=2)  # grayscale on a color film: R = G = B
    printed, up, _, _ = find_image(page, gray, *fitted(grid[1], 100, 125))
    assert outside_neighbourhood(printed, up) < 0.002


def test_session_print_several_film_boxes_and_job_reports(server: Any) -> None:
    """Film Session N-ACTION: one PDF, a page per film box; the Print Job N-EVENT-REPORT (DONE) and
    N-GET (DONE) of the job."""
    from pacskit.dicom.printing import PRINT_JOB, image_box_item, prepare_print_image

    before = set(print_addin(server).spool_dir.glob("*.pdf"))

    async def go() -> tuple[Any, Any, Any]:
        job_reported = asyncio.Event()

        def on_report(report: Any) -> None:
            if report.sop_class_uid == PRINT_JOB:
                job_reported.set()

        async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="PRINTSCU", on_event_report=on_report) as scu:
            session = await scu.create_session(copies=2, label="two films", medium="PAPER")
            assert session.status == 0 and session.dataset.NumberOfCopies == 2
            uid = session.affected_sop_instance_uid
            for layout in ("STANDARD\\1,1", "ROW\\2"):
                film = await scu.create_film_box(uid, layout, film_size="A4")
                assert film.result.status == 0
                for position, box in enumerate(film.image_boxes, start=1):
                    item = image_box_item(prepare_print_image(ct_image(64, 64, seed=position)))
                    assert (await scu.set_image_box(box, item, position=position)).status == 0
            printed = await scu.print_session(uid)
            job_uid = str(printed.dataset.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID)
            job = await scu.print_job(job_uid)
            await asyncio.wait_for(job_reported.wait(), 30)  # it follows the N-ACTION response
            deleted = await scu.delete_session(uid)
            return printed, job, (deleted, list(scu.reports), job_uid)

    printed, job, (deleted, reports, job_uid) = run(go())
    assert printed.status == 0 and deleted.status == 0
    assert job.status == 0 and job.dataset.ExecutionStatus == "DONE" and job.dataset.Originator == "PRINTSCU"
    (report,) = [r for r in reports if r.sop_instance_uid == job_uid]
    assert report.event_type_id == 3  # DONE
    (pdf,) = _new_pdfs(server, before)
    assert page_count(pdf) == 2
    assert print_addin(server).jobs[job_uid].path == str(pdf)


def test_border_density_and_trim(server: Any) -> None:
    """A numeric Border Density is grey between Min Density (white) and Max Density (black); Trim YES
    frames each image: the only difference from the same film without trim is a line on the image's
    edges."""
    from pacskit.dicom.printing import film_size_mm

    ds = ct_image(100, 125, seed=9)
    pages = {}
    for trim in ("NO", "YES"):
        pdfs, _ = _print(server, [ds], layout="STANDARD\\1,1", film_size="A4", magnification="REPLICATE",
                         border_density="170", trim=trim)
        (pages[trim],) = render(pdfs[0], DPI)
    page = pages["NO"]
    assert abs(int(page[2, 2]) - round(255 * (320 - 170) / (320 - 20))) <= 1
    (cell,) = cells("STANDARD\\1,1", film_size_mm("A4"))
    left, top, w, h = fitted(cell, 100, 125)
    changed = np.argwhere(pages["YES"] != pages["NO"])
    assert len(changed) > w + h  # a frame (invisible where the image is as light as the line)
    near_edge = (np.minimum(np.abs(changed[:, 0] - top), np.abs(changed[:, 0] - (top + h))) <= 2) | (
        np.minimum(np.abs(changed[:, 1] - left), np.abs(changed[:, 1] - (left + w))) <= 2)
    assert near_edge.all()


def test_two_printers_at_once(server: Any) -> None:
    """Two associations printing at the same time keep their own film sessions."""
    before = set(print_addin(server).spool_dir.glob("*.pdf"))

    async def one(layout: str, count: int, ae: str) -> Any:
        async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae=ae) as scu:
            return await scu.print_images([ct_image(64, 64, seed=i) for i in range(count)], layout=layout)

    async def both() -> list[Any]:
        return list(await asyncio.gather(one("STANDARD\\2,2", 8, "LEFT"), one("ROW\\3", 3, "RIGHT")))

    left, right = run(both())
    assert (left.film_boxes, left.images) == (2, 8) and (right.film_boxes, right.images) == (1, 3)
    pdfs = _new_pdfs(server, before)
    assert sorted(p.name.split("-")[2] for p in pdfs) == ["LEFT", "LEFT", "RIGHT"]
