"""Helpers for the pacskit.store tests: pydicom's own Part 10 files, staged copies, modified instances."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_charset_files, get_testdata_file

from pacskit.store import DataStore

# --- DICOM files ----------------------------------------------------------------------------------

#: Part 10 files shipped with pydicom (no download), with distinct SOP Instance UIDs.
REAL_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
    "SC_rgb_rle.dcm",
    "image_dfl.dcm",  # deflated transfer syntax
    "chrArab.dcm",
    "chrFren.dcm",
    "chrGerm.dcm",
    "chrGreek.dcm",
    "chrH31.dcm",
    "chrH32.dcm",
    "chrHbrw.dcm",
    "chrI2.dcm",
    "chrJapMulti.dcm",
    "chrKoreanMulti.dcm",
    "chrRuss.dcm",
    "chrX1.dcm",
    "chrX2.dcm",
]


def dicom_file(name: str) -> str:
    """Path of a pydicom test or charset file, never downloading anything."""
    if name.startswith("chr"):
        found = get_charset_files(name)
        path = found[0] if found else None
    else:
        path = get_testdata_file(name, download=False)
    if not path:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return str(path)


_counter = itertools.count()


def stage(store_or_dir: DataStore | str | Path, source: str | Path) -> str:
    """Copy ``source`` (a path, or a pydicom file name) to a temp file the data store may consume."""
    folder = store_or_dir.temp_dir if isinstance(store_or_dir, DataStore) else str(store_or_dir)
    src = str(source) if os.path.sep in str(source) else dicom_file(str(source))
    dest = os.path.join(folder, f"test-{os.getpid()}-{next(_counter)}.part")
    shutil.copyfile(src, dest)
    return dest


_uid_counter = itertools.count(1)
_UID_ROOT = f"2.25.{secrets.randbits(64)}"


def new_uid() -> str:
    return f"{_UID_ROOT}.{next(_uid_counter)}"


def make_instance(folder: str | Path, base: str = "MR_small.dcm", **attributes: Any) -> str:
    """A Part 10 file: ``base`` with ``attributes`` replaced (keyword=value; None deletes it).

    The SOP Instance UID is new unless given, and the file meta follows the dataset.
    """
    ds = pydicom.dcmread(dicom_file(base))
    attributes.setdefault("SOPInstanceUID", new_uid())
    with warnings.catch_warnings():  # invalid values on purpose
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in attributes.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    if isinstance(attributes.get("SOPInstanceUID"), str):
        ds.file_meta.MediaStorageSOPInstanceUID = attributes["SOPInstanceUID"]
    path = os.path.join(str(folder), f"made-{os.getpid()}-{next(_counter)}.part")
    ds.save_as(path, enforce_file_format=False)
    return path
