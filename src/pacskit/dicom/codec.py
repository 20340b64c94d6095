"""Datasets to bytes and back in a given transfer syntax, with pydicom (off the hot path).

A DIMSE message carries a dataset without File Meta, encoded in the presentation context's transfer
syntax; these two functions are the only place that turns a pydicom ``Dataset`` into such bytes, or
such bytes into a ``Dataset``.
"""

from __future__ import annotations

import io
import zlib
from typing import TYPE_CHECKING

from pacskit.dicom.part10 import MAX_INFLATED_IN_MEMORY, inflate
from pacskit.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """Encode a pydicom dataset (without file meta) in ``transfer_syntax``; deflated when it says so."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(fp, ds)
    data = fp.getvalue()
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        if len(data) & 1:
            data += b"\x00"
    return data


def decode_dataset(raw: bytes, transfer_syntax: str, *, stop_before_pixels: bool = False) -> Dataset:
    """Decode a dataset (without file meta) encoded in ``transfer_syntax``. A deflated one is inflated
    first, refusing (:class:`~pacskit.dicom.part10.InflationLimit`) more than
    :data:`~pacskit.dicom.part10.MAX_INFLATED_IN_MEMORY` bytes."""
    from pydicom.filereader import read_dataset

    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        inflated = io.BytesIO()
        inflate(raw, inflated.write, MAX_INFLATED_IN_MEMORY)
        raw = inflated.getvalue()
    return read_dataset(
        io.BytesIO(raw),
        is_implicit_VR=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
        is_little_endian=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
        stop_when=(lambda tag, vr, length: tag == 0x7FE00010) if stop_before_pixels else None,
    )


__all__ = ["decode_dataset", "encode_dataset"]
