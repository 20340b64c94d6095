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
            rows, cols = page.evaluate("[document.getElementById('view').height, document.getElementById('view').width]")
            grey = page.evaluate("""() => {
                const c = document.getElementById('view');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                const out = [];
                for (let i = 0; i < d.length; i += 4) out.push(d[i]);
                return out; }""")
        finally:
            browser.close()
    expected = pydicom_rendering(disc / first[4])
    assert (rows, cols) == expected.shape == (48, 40)
    canvas = np.array(grey, dtype=np.float64).reshape(rows, cols)
    assert np.abs(canvas - expected).max() <= 1
    assert len(np.unique(expected)) > 100  # the image is not flat: the comparison means something
