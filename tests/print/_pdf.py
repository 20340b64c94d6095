"""PDF pages rendered with poppler's pdftoppm, and the images we expect on them, computed
independently of pacskit with pydicom's Modality LUT / VOI LUT and numpy."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut


def have_pdftoppm() -> bool:
    return shutil.which("pdftoppm") is not None


def render(pdf: Path, dpi: int, *, color: bool = False, renderer: str = "pdftoppm") -> list[np.ndarray]:
    """Every page of ``pdf`` at ``dpi``: (rows, cols) uint8 gray, or (rows, cols, 3) RGB.

    ``pdftoppm`` (poppler's Splash rasteriser) blends a few columns/rows of an image drawn 1:1 on
    whole device pixels with their neighbours (about 0.05 % of the pixels); ``pdftocairo`` copies
    such an image exactly, so the strict comparisons use it as well."""
    with tempfile.TemporaryDirectory() as folder:
        argv = [renderer, "-r", str(dpi), "-png"] + ([] if color or renderer == "pdftocairo" else ["-gray"])
        argv += [str(pdf), f"{folder}/p"]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        pages = sorted(Path(folder).glob("p-*.png"), key=lambda p: int(p.stem.split("-")[-1]))
        return [np.asarray(Image.open(p).convert("RGB" if color else "L")) for p in pages]


def page_count(pdf: Path) -> int:
    out = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    return int(next(line.split()[-1] for line in out.splitlines() if line.startswith("Pages:")))


def expected_gray(ds: Dataset) -> np.ndarray:
    """What a printed grayscale image must look like (0 black .. 255 white): pydicom's Modality LUT
    and VOI LUT (first window), normalised over pydicom's output range, MONOCHROME1 inverted."""
    values = apply_modality_lut(ds.pixel_array, ds)
    windowed = apply_voi_lut(values, ds).astype(np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    low, high = intercept, (2 ** int(ds.BitsStored) - 1) * slope + intercept  # pydicom's windowing range
    out = (windowed - low) * 255.0 / (high - low)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def expected_rgb(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.uint8)


def fitted(cell: tuple[float, float, float, float], rows: int, cols: int) -> tuple[float, float, int, int]:
    """An image fitted into a cell (left, top, width, height in pixels), aspect kept, centred:
    (left, top, width, height) of the image."""
    left, top, width, height = cell
    scale = min(width / cols, height / rows)
    w, h = int(cols * scale), int(rows * scale)
    return left + (width - w) / 2, top + (height - h) / 2, w, h


def replicate(expected: np.ndarray, w: int, h: int) -> np.ndarray:
    """``expected`` magnified to ``w`` x ``h`` by pixel replication (nearest neighbour)."""
    rows, cols = expected.shape[:2]
    ys = np.minimum(((np.arange(h) + 0.5) * rows / h).astype(int), rows - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * cols / w).astype(int), cols - 1)
    return expected[ys][:, xs]


def find_image(page: np.ndarray, expected: np.ndarray, left: float, top: float, w: int, h: int,
               search: int = 3) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The printed image: the ``w`` x ``h`` crop of ``page`` near (left, top) (within ``search``
    pixels) closest to ``expected`` magnified by replication. Returns (crop, magnified expected,
    dx, dy)."""
    up = replicate(expected, w, h)
    best: tuple[float, np.ndarray, int, int] | None = None
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            y0, x0 = int(round(top)) + dy, int(round(left)) + dx
            if y0 < 0 or x0 < 0 or y0 + h > page.shape[0] or x0 + w > page.shape[1]:
                continue
            crop = page[y0:y0 + h, x0:x0 + w]
            score = float(np.abs(crop.astype(np.int16) - up.astype(np.int16)).mean())
            if best is None or score < best[0]:
                best = (score, crop, dx, dy)
    assert best is not None, "the image does not fit on the page where expected"
    return best[1], up, best[2], best[3]


def outside_neighbourhood(printed: np.ndarray, up: np.ndarray, tolerance: int = 1) -> float:
    """Fraction of printed pixels whose value is not within ``tolerance`` of the values of the
    magnified expected image in their 3 x 3 neighbourhood (replication boundaries may fall one
    printer pixel apart; interpolation gives values between neighbours)."""
    padded = np.pad(up.astype(np.int16), [(1, 1), (1, 1)] + [(0, 0)] * (up.ndim - 2), mode="edge")
    h, w = up.shape[:2]
    shifts = [padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
    low, high = np.min(shifts, axis=0), np.max(shifts, axis=0)
    p = printed.astype(np.int16)
    bad = (p < low - tolerance) | (p > high + tolerance)
    return float(bad.mean())


def differences(printed: np.ndarray, expected: np.ndarray) -> tuple[float, float, int]:
    """(mean, 99th percentile, max) of the absolute pixel differences."""
    diff = np.abs(printed.astype(np.int16) - expected.astype(np.int16))
    return float(diff.mean()), float(np.percentile(diff, 99)), int(diff.max())


def outside_source_range(printed: np.ndarray, expected: np.ndarray, tolerance: int = 2) -> float:
    """For a magnification that interpolates (BILINEAR, CUBIC): fraction of printed pixels not within
    ``tolerance`` of the values of the expected image's 3 x 3 neighbourhood around the source pixel
    they map to."""
    padded = np.pad(expected.astype(np.int16), [(1, 1), (1, 1)] + [(0, 0)] * (expected.ndim - 2), mode="edge")
    rows, cols = expected.shape[:2]
    shifts = [padded[dy:dy + rows, dx:dx + cols] for dy in range(3) for dx in range(3)]
    h, w = printed.shape[:2]
    low, high = replicate(np.min(shifts, axis=0), w, h), replicate(np.max(shifts, axis=0), w, h)
    p = printed.astype(np.int16)
    return float(((p < low - tolerance) | (p > high + tolerance)).mean())
