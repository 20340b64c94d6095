"""Synthetic, valid DICOM Part 10 files for tests and benchmarks.

Everything here is deterministic in structure and cheap to produce:

* :func:`make_instance` writes one single-frame image (CT Image Storage by default).
* :func:`make_series` writes many instances of one series, reusing one pixel buffer
  and one template dataset, so thousands of files take seconds.
* :func:`make_large_instance` writes a multi-frame instance of (roughly) a requested
  size by streaming the pixel data to disk in chunks; the pixel bytes are never held
  in memory as a whole.
"""

from __future__ import annotations

import datetime as _dt
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "DEFAULT_PATIENT_ID",
    "DEFAULT_PATIENT_NAME",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "make_dataset",
    "make_instance",
    "make_series",
    "make_large_instance",
    "pixel_bytes",
    "dataset_bytes",
]

DEFAULT_PATIENT_ID = "PKT000001"
DEFAULT_PATIENT_NAME = "SYNTHETIC^PATIENT"

UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
#: Transfer syntaxes :func:`make_instance` / :func:`make_series` can write.
#: RLE Lossless is produced with pydicom's native encoder (needs numpy).
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = UNCOMPRESSED_TRANSFER_SYNTAXES + (RLELossless,)

_SOP_CLASS_FOR_MODALITY: dict[str, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
}

_MULTIFRAME_SOP_CLASSES = frozenset({MultiFrameGrayscaleWordSecondaryCaptureImageStorage})

# (7FE0,0010) Pixel Data
_PIXEL_DATA_TAG_LE = struct.pack("<HH", 0x7FE0, 0x0010)


def pixel_bytes(nbytes: int, *, seed: int | None = None) -> bytes:
    """Return ``nbytes`` of random-looking pixel bytes (fast; ``seed`` makes them repeatable)."""
    if nbytes < 0:
        raise ValueError("nbytes must be >= 0")
    if seed is None:
        return os.urandom(nbytes)
    import random

    return random.Random(seed).randbytes(nbytes)


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def make_dataset(
    *,
    rows: int = 64,
    cols: int = 64,
    bits: int = 16,
    frames: int = 1,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str | None = None,
    modality: str = "CT",
    instance_number: int = 1,
    series_number: int = 1,
    frame_of_reference_uid: str | None = None,
    pixel_data: bytes | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Dataset:
    """Build (in memory) a dataset with realistic patient/study/series/image attributes.

    ``pixel_data=None`` fills PixelData with random bytes of the right size; pass
    ``b""`` to omit PixelData entirely. ``attrs`` maps DICOM keywords to values and is
    applied last (overrides anything). No file meta is attached.
    """
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ValueError("rows, cols and frames must be positive")
    modality = modality.upper()
    if sop_class_uid is None:
        if frames > 1:
            sop_class_uid = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
        else:
            sop_class_uid = _SOP_CLASS_FOR_MODALITY.get(modality, SecondaryCaptureImageStorage)
    multiframe = frames > 1 or sop_class_uid in _MULTIFRAME_SOP_CLASSES
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sop_uid = sop_uid or generate_uid()
    date, time = _now()

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality in ("CT", "MR") else ["DERIVED", "SECONDARY"]
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.ContentDate = date
    ds.StudyTime = time[:6]
    ds.SeriesTime = time[:6]
    ds.ContentTime = time[:6]
    ds.AccessionNumber = f"ACC{abs(hash(study_uid)) % 10**8:08d}"
    ds.Modality = modality
    ds.Manufacturer = "pacskit"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = "REFERRER^SYNTHETIC"
    ds.StudyDescription = f"Synthetic {modality} study"
    ds.SeriesDescription = f"Synthetic {modality} series {series_number}"
    ds.ManufacturerModelName = "pacskit.testing.synth"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "055Y"
    ds.BodyPartExamined = "CHEST"
    if modality == "CT":
        ds.SliceThickness = "1.0"
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
    elif modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = "3.0"
        ds.RepetitionTime = "500"
        ds.EchoTime = "20"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "1.5"
        ds.PatientPosition = "HFS"
    if sop_class_uid in (SecondaryCaptureImageStorage, MultiFrameGrayscaleWordSecondaryCaptureImageStorage):
        ds.ConversionType = "WSD"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    if not multiframe:
        ds.ImagePositionPatient = [-125.0, -125.0, float(instance_number)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = float(instance_number)
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if multiframe:
        ds.NumberOfFrames = frames
        ds.FrameTime = "40"
        ds.FrameIncrementPointer = 0x00181063  # -> FrameTime
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40" if bits == 16 else "128"
    ds.WindowWidth = "400" if bits == 16 else "256"
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"

    if pixel_data is None:
        pixel_data = pixel_bytes(rows * cols * (bits // 8) * frames)
    if pixel_data:
        expected = rows * cols * (bits // 8) * frames
        if len(pixel_data) != expected:
            raise ValueError(f"pixel_data has {len(pixel_data)} bytes, expected {expected}")
        ds.PixelData = pixel_data
        ds["PixelData"].VR = "OW" if bits == 16 else "OB"

    if attrs:
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
    return ds


def _file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACSKIT_SYNTH"
    return meta


def _write(ds: Dataset, path: Path, transfer_syntax: UID) -> None:
    if transfer_syntax == RLELossless:
        # compress() wants an uncompressed dataset; it encodes PixelData and
        # updates the file meta transfer syntax.
        ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.file_meta = _file_meta(ds, transfer_syntax)
    ds.save_as(path, enforce_file_format=True)


def _check_ts(transfer_syntax: str) -> UID:
    ts = UID(transfer_syntax)
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {ts!r} ({ts.name}); supported: "
                         + ", ".join(t.name for t in SUPPORTED_TRANSFER_SYNTAXES))
    return ts


def make_instance(
    path: str | os.PathLike[str],
    *,
    rows: int = 64,
    cols: int = 64,
    bits: int = 16,
    patient_id: str = DEFAULT_PATIENT_ID,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    modality: str = "CT",
    patient_name: str = DEFAULT_PATIENT_NAME,
    instance_number: int = 1,
    sop_class_uid: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one synthetic single-frame image as a DICOM Part 10 file and return its path.

    modality "CT" (default) gives CT Image Storage (1.2.840.10008.5.1.4.1.1.2), "MR"
    gives MR Image Storage, anything else Secondary Capture, unless ``sop_class_uid``
    is given. Missing UIDs are generated. Parent directories are created.
    """
    ts = _check_ts(transfer_syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(
        rows=rows, cols=cols, bits=bits, patient_id=patient_id, patient_name=patient_name,
        study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, sop_class_uid=sop_class_uid,
        modality=modality, instance_number=instance_number, attrs=attrs,
    )
    _write(ds, path, ts)
    return path


def make_series(
    folder: str | os.PathLike[str],
    count: int,
    rows: int = 64,
    cols: int = 64,
    *,
    bits: int = 16,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    modality: str = "CT",
    series_number: int = 1,
    prefix: str = "IM",
    attrs: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``count`` instances of one series into ``folder``; return their paths in order.

    All instances share patient/study/series/frame-of-reference and one random pixel
    buffer; each gets its own SOP Instance UID, InstanceNumber (1..count) and slice
    position. Files are named ``{prefix}{n:06d}.dcm``.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    ts = _check_ts(transfer_syntax)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    pixels = pixel_bytes(rows * cols * (bits // 8))
    paths: list[Path] = []
    for n in range(1, count + 1):
        # A fresh (cheap) dataset per file: compress() and save_as() mutate it.
        ds = make_dataset(
            rows=rows, cols=cols, bits=bits, patient_id=patient_id, patient_name=patient_name,
            study_uid=study_uid, series_uid=series_uid, modality=modality, instance_number=n,
            series_number=series_number, frame_of_reference_uid=frame_uid, pixel_data=pixels,
            attrs=attrs,
        )
        path = folder / f"{prefix}{n:06d}.dcm"
        _write(ds, path, ts)
        paths.append(path)
    return paths


def make_large_instance(
    path: str | os.PathLike[str],
    size_bytes: int,
    *,
    rows: int = 512,
    cols: int = 512,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    chunk_frames: int = 8,
) -> Path:
    """Write a multi-frame 16-bit instance whose PixelData is about ``size_bytes``.

    NumberOfFrames = max(1, round(size_bytes / (rows*cols*2))), so PixelData is
    exactly ``rows*cols*2*NumberOfFrames`` bytes. The header is written by pydicom
    without PixelData, then the (7FE0,0010) element header and the pixel bytes are
    appended in chunks of ``chunk_frames`` frames (peak memory ~ one chunk).
    Default SOP class: Multi-frame Grayscale Word Secondary Capture Image Storage
    (1.2.840.10008.5.1.4.1.1.7.3). Explicit or implicit VR Little Endian only.
    """
    ts = UID(transfer_syntax)
    if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise ValueError("make_large_instance supports Explicit/Implicit VR Little Endian only")
    frame_bytes = rows * cols * 2
    frames = max(1, round(size_bytes / frame_bytes))
    total = frame_bytes * frames
    if total > 0xFFFFFFFE:
        raise ValueError("PixelData would exceed the 32-bit length limit")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(
        rows=rows, cols=cols, bits=16, frames=frames, patient_id=patient_id,
        patient_name=patient_name, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
        sop_class_uid=sop_class_uid, modality="OT", pixel_data=b"",
    )
    ds.file_meta = _file_meta(ds, ts)
    ds.save_as(path, enforce_file_format=True)

    if ts == ExplicitVRLittleEndian:
        header = _PIXEL_DATA_TAG_LE + b"OW\x00\x00" + struct.pack("<I", total)
    else:
        header = _PIXEL_DATA_TAG_LE + struct.pack("<I", total)
    chunk_frames = max(1, chunk_frames)
    chunk = pixel_bytes(frame_bytes * min(chunk_frames, frames))
    with open(path, "ab") as f:
        f.write(header)
        remaining = total
        while remaining:
            n = min(remaining, len(chunk))
            f.write(chunk if n == len(chunk) else chunk[:n])
            remaining -= n
    return path


def dataset_bytes(path: str | os.PathLike[str]) -> bytes:
    """The dataset of a Part 10 file, without preamble and File Meta: what went over the network.

    Tests compare stored and sent files with it ("byte-identical" means the dataset bytes; the File
    Meta of a stored file is written by the receiver).
    """
    from pacskit.dicom.part10 import read_part10_header

    info = read_part10_header(path)
    with open(path, "rb") as fh:
        fh.seek(info.dataset_offset)
        return fh.read()
