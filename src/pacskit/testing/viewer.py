"""Helpers for driving the web viewer (``web/src/viewer``) in a real browser, shared by
``tests/web/test_viewer*.py`` and ``benchmarks/web_viewer.py``.

* :func:`ct_phantom` / :func:`write_ct_series`: a synthetic CT series whose slices differ from each
  other (a body, lungs, a spine and a slice-dependent disc, with noise so that every window shows
  hundreds of grey levels), 12-bit stored with Rescale Intercept -1024.
* :func:`compress`: re-encode a file into JPEG 2000 (pydicom), JPEG-LS / JPEG lossless / JPEG baseline
  (DCMTK ``dcmcjpls`` / ``dcmcjpeg``) or RLE (pydicom).
* :func:`expected_grey`: the grey levels a viewer must show for a window, computed with pydicom
  (modality LUT, then the linear VOI LUT of PS3.3 C.11.2.1.2.1).
* :func:`web_assets` / :func:`serve_web_assets`: the built front-end (``npm --prefix web run build``)
  and a static HTTP server publishing it under ``/ui/`` on 127.0.0.1, for when no workstation add-in
  serves it.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from pacskit.testing.synth import make_dataset

__all__ = [
    "ASSETS",
    "COMPRESSIONS",
    "compress",
    "ct_phantom",
    "expected_grey",
    "serve_web_assets",
    "web_assets",
    "write_ct_series",
]

#: where ``npm --prefix web run build`` writes the front-end (package data of pacskit)
ASSETS = Path(__file__).resolve().parents[1] / "web_assets"
_WEB = Path(__file__).resolve().parents[3] / "web"

#: transfer syntax name -> (UID, how it is produced)
COMPRESSIONS: dict[str, tuple[str, str]] = {
    "jpeg2000": (str(JPEG2000Lossless), "pydicom"),
    "jpegls": ("1.2.840.10008.1.2.4.80", "dcmcjpls"),
    "jpeg-lossless": ("1.2.840.10008.1.2.4.70", "dcmcjpeg"),
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", "dcmcjpeg"),
    "rle": (str(RLELossless), "pydicom"),
}


def ct_phantom(index: int, count: int, size: int = 128, *, seed: int = 0) -> np.ndarray:
    """Stored values (uint16, 12 bits; HU = value - 1024) of slice ``index`` of ``count``: air around an
    elliptic body (~40 HU), two lungs (~-850 HU), a spine (~700 HU) and a disc whose radius changes with
    the slice (so that every slice differs), all with noise of ~25 HU."""
    rng = np.random.default_rng(seed * 100003 + index)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size - 0.5
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.45) ** 2 + (y / 0.36) ** 2 <= 1] = 40.0
    for cx in (-0.2, 0.2):
        hu[((x - cx) / 0.14) ** 2 + ((y + 0.04) / 0.22) ** 2 <= 1] = -850.0
    hu[(x / 0.06) ** 2 + ((y - 0.24) / 0.06) ** 2 <= 1] = 700.0
    radius = 0.03 + 0.1 * (index + 1) / max(count, 1)
    hu[(x ** 2 + (y + 0.05) ** 2) <= radius ** 2] = 150.0 + 5 * index
    hu += rng.normal(0.0, 25.0, hu.shape)
    return np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)


def write_ct_series(folder: Path, count: int, size: int = 128, *, study_uid: str, series_number: int = 1,
                    patient_name: str = "PHANTOM^CT", patient_id: str = "VIEWER1", seed: int = 0,
                    description: str | None = None) -> list[Path]:
    """Write ``count`` CT slices (Explicit VR Little Endian), instance 1 at the top (highest z), 1 mm
    apart; return their paths in instance-number order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        pixels = ct_phantom(i, count, size, seed=seed)
        ds = make_dataset(
            rows=size, cols=size, bits=16, patient_id=patient_id, patient_name=patient_name,
            study_uid=study_uid, series_uid=series_uid, modality="CT", instance_number=i + 1,
            series_number=series_number, frame_of_reference_uid=frame_uid, pixel_data=pixels.tobytes(),
            attrs={"BitsStored": 12, "HighBit": 11, "WindowCenter": "40", "WindowWidth": "400",
                   "ImagePositionPatient": [-45.0, -45.0, float(count - i)], "SliceLocation": float(count - i),
                   "StudyDescription": "CT phantom", "SeriesDescription": description or f"Phantom {series_number}"},
        )
        ds.file_meta = _file_meta(ds)
        path = folder / f"CT{series_number:02d}_{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _file_meta(ds: Dataset) -> Any:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def compress(path: Path, kind: str) -> Path:
    """Re-encode ``path`` in place with the transfer syntax ``kind`` (a key of :data:`COMPRESSIONS`).
    "jpeg-baseline" first reduces the image to 8 bits (baseline JPEG is 8-bit only): the stored values
    become the grey levels of the file's own window. Returns ``path``."""
    uid, tool = COMPRESSIONS[kind]
    if kind == "jpeg-baseline":
        ds = dcmread(path)
        grey = expected_grey(ds, float(ds.WindowCenter), float(ds.WindowWidth)).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = grey.tobytes()
        ds["PixelData"].VR = "OB"
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.WindowCenter, ds.WindowWidth = "128", "256"
        ds.save_as(path, enforce_file_format=True)
    if tool == "pydicom":
        ds = dcmread(path)
        ds.compress(uid, encoding_plugin="pydicom" if uid == str(RLELossless) else "")
        ds.save_as(path, enforce_file_format=True)
        return path
    if shutil.which(tool) is None:
        raise FileNotFoundError(f"{tool} (DCMTK) is needed to write {kind}")
    option = {"jpegls": ["+el"], "jpeg-lossless": ["+e1"], "jpeg-baseline": ["+eb"]}[kind]
    out = path.with_suffix(".tmp")
    subprocess.run([tool, *option, str(path), str(out)], check=True, capture_output=True, timeout=60)
    out.replace(path)
    written = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if written != uid:
        raise RuntimeError(f"{tool} wrote {written}, not {uid}")
    return path


def expected_grey(ds: Dataset, center: float, width: float, *, invert: bool = False) -> np.ndarray:
    """The 8-bit grey levels (float, rounded) of ``ds`` shown with a window: the modality LUT (rescale),
    then the linear VOI LUT function of PS3.3 C.11.2.1.2.1; ``invert`` flips the output."""
    from pydicom.pixels import apply_modality_lut

    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    c, w = center, width
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                 np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0))
    y = np.round(y)
    return 255.0 - y if invert else y


def _stale(stamp: Path) -> bool:
    if not stamp.exists():
        return True
    built = stamp.stat().st_mtime
    sources = [*(_WEB / "src").rglob("*"), *(_WEB / n for n in ("index.html", "viewer.html", "package.json",
                                                                "vite.config.ts"))]
    return any(p.is_file() and p.stat().st_mtime > built for p in sources)


def web_assets(build: bool = True) -> Path | None:
    """The built front-end folder (with ``viewer.html``); builds it (``npm ci`` when ``web/node_modules``
    is missing, then ``npm run build``) when missing or older than ``web/`` and ``build`` is true.
    None when it cannot be had (no npm, or no ``web/`` in this checkout)."""
    stamp = ASSETS / "viewer.html"
    if not _stale(stamp) or not build:
        return ASSETS if stamp.exists() else None
    npm = shutil.which("npm")
    if npm is None or not (_WEB / "package.json").exists():
        return ASSETS if stamp.exists() else None
    env = {**os.environ, "CI": os.environ.get("CI", "")}
    if not (_WEB / "node_modules").exists():
        subprocess.run([npm, "--prefix", str(_WEB), "ci", "--no-audit", "--no-fund"], check=True, env=env,
                       capture_output=True, timeout=900)
    subprocess.run([npm, "--prefix", str(_WEB), "run", "build"], check=True, env=env, capture_output=True,
                   timeout=900)
    return ASSETS


class _AssetHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".mjs": "text/javascript"}

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        if path.startswith("/ui/"):
            path = path[len("/ui"):]
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the browser, not this log
        pass


@contextlib.contextmanager
def serve_web_assets(folder: Path) -> Iterator[str]:
    """Serve ``folder`` at ``http://127.0.0.1:<port>/ui/`` (a free port) in a thread; yields the base URL
    (``http://127.0.0.1:<port>/ui/``)."""
    handler = functools.partial(_AssetHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ui/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def grey_matrix(displayed: dict[str, Any]) -> np.ndarray:
    """The ``readDisplayedImage()`` answer of the viewer as a (rows, cols) float array."""
    return np.asarray(displayed["grey"], dtype=np.float64).reshape(displayed["rows"], displayed["cols"])


def sorted_paths(paths: Sequence[Path]) -> list[Path]:
    """``paths`` in instance-number order."""
    return sorted(paths, key=lambda p: int(dcmread(p, stop_before_pixels=True).InstanceNumber))
