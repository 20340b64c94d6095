"""Synthetic images for the print tests: known pixel values, a VOI window, MONOCHROME1, RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _base(rows: int, cols: int, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Print^Test"
    ds.PatientID = "PRINT1"
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, cols
    ds.PixelRepresentation = 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def ct_image(rows: int = 120, cols: int = 160, *, seed: int = 0, monochrome1: bool = False,
             window: tuple[float, float] | None = (40.0, 400.0)) -> Dataset:
    """A 12-bit CT-like image (Rescale -1024, 1), signed content in HU: a horizontal ramp from
    -1024 to +1000 HU with a bright disc and a dark square, plus noise; with a Window Center/Width."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    hu = -1024 + (x / (cols - 1)) * 2024
    hu = np.where((x - cols * 0.65) ** 2 + (y - rows * 0.4) ** 2 < (rows * 0.2) ** 2, 300 + 0 * hu, hu)
    hu = np.where((abs(x - cols * 0.25) < cols * 0.1) & (abs(y - rows * 0.7) < rows * 0.12), -200, hu)
    hu = hu + rng.normal(0, 15, hu.shape)
    stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
    ds = _base(rows, cols, CT_IMAGE, "CT")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    return ds


def rgb_image(rows: int = 90, cols: int = 120, *, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    rgb = np.stack([x * 255 // (cols - 1), y * 255 // (rows - 1), (x + y) * 255 // (rows + cols - 2)], axis=2)
    rgb = np.clip(rgb + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)
    ds = _base(rows, cols, SECONDARY_CAPTURE, "OT")
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
