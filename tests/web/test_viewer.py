"""The Cornerstone3D viewer (web/src/viewer) in a real browser: Debian's Chromium driven by Playwright
opens viewer.html?study=... against a pacskit server with the DICOMweb add-in (WADO-RS metadata and
frames), and the canvas pixels are checked against pydicom's rendering of the same files (modality LUT,
then the linear VOI LUT of PS3.3 C.11.2.1.2.1) for the image's own window, a preset chosen in the
toolbar, a window dragged with the mouse and inversion; scrolling (keyboard, wheel) reaches slice N in
anatomical order; JPEG 2000, JPEG-LS, JPEG lossless, RLE (exact) and JPEG baseline (lossy, within a few
grey levels) are decoded in the browser; the frames of a multi-frame image and cine; a study still
arriving grows in the open viewer; the workstation's own viewer page with a login session.

The image checks run with both of Cornerstone's renderers (WebGL, here SwiftShader, and its canvas
renderer, which "auto" picks without a GPU). Pixel comparisons use the viewer's pixel-exact display (nearest neighbour, ``setSmooth(false)``, the
"Smooth" button) and read the canvas at the centre of every image pixel (``readDisplayedImage``), so the
zoom-to-fit does not matter. The page is served from the built assets (``npm --prefix web run build``)
by a static server; DICOMweb is called cross-origin (``cors_origins``)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacskit.testing.dicomweb import Running, keep_copies, start_server, write_folder
from pacskit.testing.synth import make_dataset
from pacskit.testing.workstation import workstation
from pacskit.testing.viewer import (
    COMPRESSIONS,
    compress,
    ct_phantom,
    expected_grey,
    grey_matrix,
    serve_web_assets,
    write_ct_series,
)

from ._frontend import SCREENSHOTS, ensure_built

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CT_SLICES = 12


@dataclass
class Series:
    uid: str
    datasets: list[Dataset]  # in instance-number order (= the viewer's display order)


@dataclass
class Env:
    pacs: Running
    ui: str
    browser: Any
    study: str
    ct: Series
    compressed: dict[str, Series] = field(default_factory=dict)

    def url(self, study: str | None = None, extra: str = "") -> str:
        return f"{self.ui}viewer.html?study={study or self.study}&dicomweb={self.pacs.url}{extra}"


def _series(paths: list[Path]) -> Series:
    datasets = [dcmread(p) for p in paths]
    for ds in datasets:
        ds.pixel_array  # decoded now, with pydicom's plugins: the reference  # noqa: B018
    return Series(str(datasets[0].SeriesInstanceUID), datasets)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    for tool in ("dcmcjpls", "dcmcjpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"DCMTK's {tool} is needed to write the compressed series")
    assets = ensure_built()
    tmp = tmp_path_factory.mktemp("viewer")
    study = generate_uid()
    ct = write_ct_series(tmp / "ct", CT_SLICES, 128, study_uid=study, series_number=1, description="Axial 1 mm")
    compressed: dict[str, list[Path]] = {}
    for number, kind in enumerate(COMPRESSIONS, start=2):
        paths = write_ct_series(tmp / kind, 2, 64, study_uid=study, series_number=number, seed=number,
                                description=kind)
        compressed[kind] = [compress(p, kind) for p in paths]
    folder = write_folder(tmp, extra='cors_origins = ["*"]\n')
    with start_server(folder) as pacs, serve_web_assets(assets) as ui, sync_api.sync_playwright() as pw:
        shuffled = keep_copies(tmp, ct + [p for paths in compressed.values() for p in paths])
        random.Random(19).shuffle(shuffled)  # stored out of order: the viewer sorts by position
        pacs.ingest(shuffled)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield Env(pacs, ui, browser, study, _series(ct), {k: _series(v) for k, v in compressed.items()})
        finally:
            browser.close()


@pytest.fixture
def page(env: Env) -> Iterator[Any]:
    context = env.browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"errors in the page: {errors}"


def open_viewer(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => { const v = document.querySelector('.pk-viewer');"
                           " return v && (v.dataset.ready === '1' || v.dataset.error); }", timeout=30_000)
    error = page.evaluate("document.querySelector('.pk-viewer').dataset.error")
    assert not error, error


def displayed(page: Any, viewport: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """(grey levels at the image pixel centres, viewport state) once the viewport has rendered."""
    out = page.evaluate("""async (vp) => { const v = window.pacskitViewer; await v.whenRendered(vp);
                           return [v.readDisplayedImage(vp), v.state(vp)]; }""", viewport)
    return grey_matrix(out[0]), out[1]


def assert_shows(grey: np.ndarray, expected: np.ndarray, tolerance: float = 1) -> None:
    assert grey.shape == expected.shape
    assert len(np.unique(expected)) > 20  # not a flat image: the comparison means something
    worst = np.abs(grey - expected).max()
    assert worst <= tolerance, f"displayed image differs from pydicom's by up to {worst} grey levels"


@pytest.mark.parametrize("renderer", ["cpu", "gpu"])
def test_ct_pixels_follow_window_presets_drag_and_invert(env: Env, page: Any, renderer: str) -> None:
    open_viewer(page, env.url(extra=f"&renderer={renderer}"))
    page.click("button[data-action='smooth']")  # pixel-exact display
    first = env.ct.datasets[0]
    grey, state = displayed(page)
    assert state["renderer"] == renderer  # WebGL (SwiftShader without a GPU) or Cornerstone's canvas renderer
    assert state["smooth"] is False and state["index"] == 0 and state["count"] == CT_SLICES
    assert state["sopInstanceUid"] == first.SOPInstanceUID  # instance 1 (the top) first, though stored shuffled
    assert state["window"] == {"center": 40, "width": 400}  # the image's own window
    assert_shows(grey, expected_grey(first, 40, 400))

    # a preset from the toolbar: lung
    page.select_option("select.pk-presets", "Lung")
    grey, state = displayed(page)
    assert state["window"] == {"center": -600, "width": 1500}
    assert_shows(grey, expected_grey(first, -600, 1500))
    assert "W 1500 L -600" in page.inner_text(".pk-viewport .pk-br")

    # a window dragged with the left button (the W/L tool): the display follows what the overlay says
    box = page.locator(".pk-viewport .pk-canvas-host").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 40, cy + 25, steps=5)
    page.mouse.up()
    grey, state = displayed(page)
    window = state["window"]
    assert window != {"center": -600, "width": 1500}
    assert_shows(grey, expected_grey(first, window["center"], window["width"]))

    # invert (key I), then reset (key R): the image's own window again, not inverted
    page.focus(".pk-viewer")
    page.keyboard.press("i")
    grey, state = displayed(page)
    assert state["invert"] is True
    assert_shows(grey, expected_grey(first, window["center"], window["width"], invert=True))
    page.keyboard.press("r")
    page.click("button[data-action='smooth']")
    page.click("button[data-action='smooth']")  # reset keeps the display mode; toggled back to exact
    grey, state = displayed(page)
    assert state["invert"] is False and state["window"] == {"center": 40, "width": 400}
    assert_shows(grey, expected_grey(first, 40, 400))


def test_scroll_to_slice_n_with_keyboard_and_wheel(env: Env, page: Any) -> None:
    open_viewer(page, env.url())
    page.click("button[data-action='smooth']")
    page.focus(".pk-viewer")
    for _ in range(5):
        page.keyboard.press("ArrowDown")
    page.wait_for_function("window.pacskitViewer.state().index === 5")
    grey, state = displayed(page)
    assert state["sopInstanceUid"] == env.ct.datasets[5].SOPInstanceUID
    assert_shows(grey, expected_grey(env.ct.datasets[5], 40, 400))
    assert f"Im: 6 (6/{CT_SLICES})" in page.inner_text(".pk-viewport .pk-bl")

    # the mouse wheel over the image scrolls one slice per notch
    box = page.locator(".pk-viewport .pk-canvas-host").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for notch in range(1, 4):
        page.mouse.wheel(0, 120)
        page.wait_for_function(f"window.pacskitViewer.state().index === {5 + notch}")
    grey, state = displayed(page)
    assert_shows(grey, expected_grey(env.ct.datasets[8], 40, 400))

    page.keyboard.press("End")
    page.wait_for_function(f"window.pacskitViewer.state().index === {CT_SLICES - 1}")
    grey, _ = displayed(page)
    assert_shows(grey, expected_grey(env.ct.datasets[-1], 40, 400))


@pytest.mark.parametrize("kind", list(COMPRESSIONS))
def test_compressed_transfer_syntax_is_decoded_in_the_browser(env: Env, page: Any, kind: str) -> None:
    series = env.compressed[kind]
    open_viewer(page, env.url(extra=f"&series={series.uid}"))
    page.click("button[data-action='smooth']")
    for index, ds in enumerate(series.datasets):
        page.evaluate("(i) => window.pacskitViewer.scrollTo(i)", index)
        grey, state = displayed(page)
        assert state["sopInstanceUid"] == ds.SOPInstanceUID
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        # lossless syntaxes give back the very pixels; baseline JPEG is lossy, and the browser's decoder
        # (libjpeg-turbo) and pydicom's (libjpeg) may round a few values differently
        tolerance = 4 if kind == "jpeg-baseline" else 1
        assert_shows(grey, expected_grey(ds, c, w), tolerance)


def test_series_panel_layouts_overlay_and_measurements(env: Env, page: Any) -> None:
    open_viewer(page, env.url())
    items = page.locator(".pk-series-item")
    assert items.count() == 1 + len(COMPRESSIONS)
    assert "Axial 1 mm" in items.nth(0).inner_text() and f"{CT_SLICES} images" in items.nth(0).inner_text()
    overlay = page.inner_text(".pk-viewport")
    for text in ("PHANTOM CT", "ID: VIEWER1", "CT phantom", "Se: 1 Axial 1 mm", "W 400 L 40", "Zoom:", "128 x 128"):
        assert text in overlay

    # a click in the series panel shows that series in the active viewport
    items.nth(2).click()
    page.wait_for_function(f"window.pacskitViewer.state().seriesUid === '{env.compressed['jpegls'].uid}'")

    # 1x2: the new viewport takes the next series not shown
    page.click("button[data-layout='1x2']")
    page.wait_for_function("document.querySelectorAll('.pk-viewport').length === 2")
    states = page.evaluate("[0, 1].map((i) => window.pacskitViewer.state(i))")
    assert states[0]["seriesUid"] == env.compressed["jpegls"].uid
    assert states[1]["seriesUid"] == env.ct.uid
    page.click("button[data-layout='2x2']")
    page.wait_for_function("document.querySelectorAll('.pk-viewport').length === 4")
    assert len({s["seriesUid"] for s in page.evaluate("[0, 1, 2, 3].map((i) => window.pacskitViewer.state(i))")}) == 4
    page.click("button[data-layout='1x2']")
    page.wait_for_function("document.querySelectorAll('.pk-viewport').length === 2")

    # measurements on the CT (right viewport): a length in mm and a rectangle ROI with its statistics
    page.click(".pk-viewport[data-viewport='1']")
    page.evaluate("async () => { await window.pacskitViewer.scrollTo(6, 1); window.pacskitViewer.applyPreset('Lung', 1); }")
    box = page.locator(".pk-viewport[data-viewport='1'] .pk-canvas-host").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]

    def drag(x0: float, y0: float, x1: float, y1: float) -> None:
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y1, steps=6)
        page.mouse.up()

    page.click("button[data-tool='length']")
    drag(x + w * 0.3, y + h * 0.5, x + w * 0.7, y + h * 0.5)
    page.click("button[data-tool='rectangleRoi']")
    drag(x + w * 0.55, y + h * 0.35, x + w * 0.68, y + h * 0.6)
    page.wait_for_function("() => [...document.querySelectorAll(\".pk-viewport[data-viewport='1'] svg text\")]"
                           ".some((t) => t.textContent.includes('mm'))")
    labels = page.evaluate("() => [...document.querySelectorAll(\".pk-viewport[data-viewport='1'] svg text\")]"
                           ".map((t) => t.textContent).join(' | ')")
    assert "mm" in labels and "mean" in labels.lower(), labels
    # the length drawn is 40% of the viewport width: in mm it is that many image pixels x 0.7 mm
    state = page.evaluate("window.pacskitViewer.state(1)")
    expected_mm = 0.4 * w / state["scale"] * 0.7
    measured = [float(t.split()[0]) for t in labels.split(" | ") if t.strip().endswith(" mm")]
    assert any(abs(m - expected_mm) < 0.05 * expected_mm for m in measured), (labels, expected_mm)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "viewer.png"))


def test_a_study_still_arriving_grows_in_the_open_viewer(env: Env, page: Any, tmp_path: Path) -> None:
    study = generate_uid()
    paths = write_ct_series(tmp_path / "late", 8, 64, study_uid=study, patient_id="LATE1", seed=7)
    last = dcmread(paths[7])
    env.pacs.ingest(paths[:3])
    open_viewer(page, env.url(study, extra="&poll=100"))
    assert page.evaluate("window.pacskitViewer.state().count") == 3
    page.focus(".pk-viewer")
    page.keyboard.press("ArrowDown")
    page.wait_for_function("window.pacskitViewer.state().index === 1")
    shown = page.evaluate("window.pacskitViewer.state().sopInstanceUid")
    env.pacs.ingest(paths[3:])
    page.wait_for_function("window.pacskitViewer.state().count === 8", timeout=20_000)
    state = page.evaluate("window.pacskitViewer.state()")
    assert state["sopInstanceUid"] == shown  # the image on screen stays, the stack grows around it
    assert "8 images" in page.inner_text(".pk-series-item")
    page.keyboard.press("End")
    page.wait_for_function("window.pacskitViewer.state().index === 7")
    page.click("button[data-action='smooth']")
    grey, state = displayed(page)
    assert state["sopInstanceUid"] == last.SOPInstanceUID
    assert_shows(grey, expected_grey(last, 40, 400))


def test_the_workstations_viewer_page_with_a_login_session(env: Env, tmp_path: Path) -> None:
    """Served by the workstation itself (/ui/viewer.html, same origin): DICOMweb answers the session
    cookie; without one the viewer says why it has no images."""
    with workstation(tmp_path, studies=0) as ws:
        study = generate_uid()
        ws.load(write_ct_series(tmp_path / "ct", 3, 96, study_uid=study, patient_id="WS1", seed=5))
        context = env.browser.new_context(viewport={"width": 900, "height": 700})
        try:
            page = context.new_page()
            page.goto(f"{ws.url}/ui/viewer.html?study={study}")
            page.wait_for_function("() => document.querySelector('.pk-viewer')?.dataset.error")
            assert "401" in page.inner_text(".pk-status")

            username, password = ws.users["viewer"]
            login = context.request.post(f"{ws.url}/api/session", data={"username": username, "password": password})
            assert login.ok
            open_viewer(page, f"{ws.url}/ui/viewer.html?study={study}")
            page.click("button[data-action='smooth']")
            grey, state = displayed(page)
            by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in ws.files}
            shown = dcmread(by_uid[state["sopInstanceUid"]])
            assert state["count"] == 3 and state["index"] == 0
            window = state["window"]
            assert_shows(grey, expected_grey(shown, window["center"], window["width"]))
        finally:
            context.close()


def test_multiframe_frames_and_cine(env: Env, page: Any, tmp_path: Path) -> None:
    frames = np.stack([ct_phantom(k, 6, 64, seed=11) for k in range(6)])
    ds = make_dataset(rows=64, cols=64, frames=6, modality="OT", patient_id="MF1", pixel_data=frames.tobytes(),
                      attrs={"BitsStored": 12, "HighBit": 11, "WindowCenter": "1100", "WindowWidth": "600"})
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "mf.dcm"
    ds.save_as(path, enforce_file_format=True)
    reference = dcmread(path)
    env.pacs.ingest([path])
    open_viewer(page, env.url(str(ds.StudyInstanceUID)))
    page.click("button[data-action='smooth']")
    state = page.evaluate("window.pacskitViewer.state()")
    assert (state["count"], state["frames"], state["frame"]) == (6, 6, 1)
    page.evaluate("window.pacskitViewer.scrollTo(4)")
    grey, state = displayed(page)
    assert state["frame"] == 5 and "Fr: 5/6" in page.inner_text(".pk-viewport .pk-bl")
    assert_shows(grey, expected_grey(reference, 1100, 600)[4])

    # cine: the frames run (and wrap around) until it is stopped
    page.click("button[data-action='cine']")
    page.wait_for_function("window.pacskitViewer.state().index === 1", timeout=20_000)  # wrapped past the end
    page.click("button[data-action='cine']")
    page.wait_for_function("!document.querySelector('.pk-viewport').classList.contains('pk-cine')")


def test_an_image_that_cannot_be_loaded_is_reported_and_the_rest_is_shown(env: Env, page: Any) -> None:
    broken = env.ct.datasets[3]
    # the server fails that image's frames (as a server with a lost file would)
    page.route(f"**/instances/{broken.SOPInstanceUID}/frames/**",
               lambda route: route.fulfill(status=500, content_type="application/problem+json",
                                           body='{"title": "lost", "status": 500}'))
    page.goto(env.url())
    page.wait_for_function("() => document.querySelector('.pk-viewer')?.dataset.ready === '1'", timeout=30_000)
    page.wait_for_function("() => document.querySelector('.pk-viewer').dataset.error")  # prefetched after image 1
    assert "image 4 could not be loaded (500)" in page.inner_text(".pk-status")
    page.click("button[data-action='smooth']")
    page.evaluate("window.pacskitViewer.scrollTo(5)")
    grey, state = displayed(page)
    assert state["index"] == 5
    assert_shows(grey, expected_grey(env.ct.datasets[5], 40, 400))
