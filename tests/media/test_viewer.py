"""The viewer on the media in a real browser: Debian's Chromium driven by Playwright opens index.html of
the extracted ISO from file://, the study list shows the patients, and after the disc's folder is
opened the canvas shows an image whose pixels match pydicom's rendering (modality LUT + linear VOI
LUT, PS3.3 C.11.2.1.2.1) within 1 grey level."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from pacskit.media import MediaOptions, build_media
from pacskit.media.fileset import SourceFile
from pacskit.testing import make_series

from ._archive import image_records, need, run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def pydicom_rendering(path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    ds = dcmread(path)
    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                 np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0))
    return np.round(y)


#: where the test leaves its screenshot of the viewer (test-artifacts/ is gitignored)
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def test_viewer_lists_patients_and_draws_the_image(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    need("xorriso")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    # a window over the whole range of the (random) pixels: every grey level is exercised
    window = {"WindowCenter": "31744", "WindowWidth": "65536"}
    paths = make_series(tmp_path / "a", 2, 48, 40, patient_id="VIEW1", patient_name="DOE^JANE", attrs=window)
    other = dcmread(paths[1])  # make_series shares one pixel array: flipped, the two images differ
    other.PixelData = np.ascontiguousarray(other.pixel_array[::-1]).tobytes()
    other.save_as(paths[1])
    paths += make_series(tmp_path / "b", 1, 32, 32, patient_id="VIEW2", patient_name="ROE^RICHARD", modality="MR")
    sources = [SourceFile(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID), str(p), p.stat().st_size)
               for p in paths]
    iso = build_media(sources, tmp_path / "disc.iso", MediaOptions(label="viewer", include_viewer=True)).paths[0]
    disc = tmp_path / "disc"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(disc)])
    records = sorted(image_records(disc / "DICOMDIR"), key=lambda r: r[4])
    first = records[0]  # PT000000/ST000000/SE000000/IM000000

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto((disc / "index.html").as_uri())
            text = page.inner_text("#list")
            assert "DOE JANE (VIEW1)" in text and "ROE RICHARD (VIEW2)" in text
            assert text.count("Image ") == 3
            page.set_input_files("#folder", str(disc))
            page.wait_for_selector("body[data-ready='1']")
            page.click(f".image[data-file='{first[4]}']")
            page.wait_for_selector(f"body[data-shown='{first[4]}']")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)  # kept for people to look at (gitignored)
            page.screenshot(path=str(SCREENSHOTS / "media-viewer.png"), full_page=True)
            shown = {first[4]: canvas_pixels(page, 1)}
            # fitted to the pane: the 48 x 40 image is drawn larger than its pixels
            assert page.evaluate("document.getElementById('view').getBoundingClientRect().height") > 200
            # the wheel goes to the next image of the series
            second = records[1]
            page.dispatch_event("#view", "wheel", {"deltaY": 100})
            page.wait_for_selector(f"body[data-shown='{second[4]}']")
            shown[second[4]] = canvas_pixels(page, 1)
        finally:
            browser.close()
    for file_id, canvas in shown.items():
        expected = pydicom_rendering(disc / file_id)
        assert canvas.shape == expected.shape == (48, 40)
        assert np.abs(canvas - expected).max() <= 1
        assert len(np.unique(expected)) > 100  # the image is not flat: the comparison means something
    assert not np.array_equal(*shown.values())


def canvas_pixels(page: object, channels: int) -> np.ndarray:
    """The viewer canvas's own pixels (its native size, whatever CSS scales it to): grey or RGB."""
    rows, cols, data = page.evaluate("""() => {  // type: ignore[attr-defined]
        const c = document.getElementById('view');
        return [c.height, c.width, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }""")
    rgba = np.array(data, dtype=np.float64).reshape(rows, cols, 4)
    return rgba[..., 0] if channels == 1 else rgba[..., :3]


def test_viewer_draws_jpeg_baseline_frames(tmp_path: Path) -> None:
    """A JPEG baseline multi-frame instance (STD-GEN-DVD-JPEG keeps it compressed) is decoded by the
    browser: frame 1, then frame 2 after an arrow key, each within a few levels of pydicom's decoding
    (two JPEG decoders may differ by rounding in the inverse DCT and the colour conversion)."""
    playwright = pytest.importorskip("playwright.sync_api")
    from pydicom.data import get_testdata_file

    need("xorriso")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    src = Path(get_testdata_file("examples_ybr_color.dcm"))  # 30 frames, YBR_FULL_422, JPEG baseline
    ds = dcmread(src)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    iso = build_media([SourceFile(str(ds.SOPInstanceUID), str(src), src.stat().st_size)], tmp_path / "disc.iso",
                      MediaOptions(label="jpeg", include_viewer=True, profile="STD-GEN-DVD-JPEG")).paths[0]
    disc = tmp_path / "disc"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(disc)])
    (record,) = image_records(disc / "DICOMDIR")
    assert record[5] == "1.2.840.10008.1.2.4.50"  # on the media as it is stored
    frames = ds.pixel_array  # RGB (pydicom converts YBR_FULL_422)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto((disc / "index.html").as_uri())
            page.set_input_files("#folder", str(disc))
            page.wait_for_selector("body[data-ready='1']")
            page.click(f".image[data-file='{record[4]}']")
            page.wait_for_selector(f"body[data-shown='{record[4]}'][data-frame='0']")
            first = canvas_pixels(page, 3)
            page.keyboard.press("ArrowDown")
            page.wait_for_selector("body[data-frame='1']")
            second = canvas_pixels(page, 3)
        finally:
            browser.close()
    for canvas, expected in ((first, frames[0]), (second, frames[1])):
        assert canvas.shape == expected.shape == (240, 320, 3)
        diff = np.abs(canvas - expected.astype(np.float64))
        assert diff.mean() < 2 and np.percentile(diff, 99) <= 8, (diff.mean(), diff.max())
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 1  # the frames differ
