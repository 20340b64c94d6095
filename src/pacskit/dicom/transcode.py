"""Re-encode a stored Part 10 file in another transfer syntax, for a peer that does not accept ours.

Supported:

* between the uncompressed syntaxes: Implicit VR Little Endian, Explicit VR Little Endian, Deflated
  Explicit VR Little Endian and Explicit VR Big Endian (words of OW/OF/OL/OD/OV values are swapped when
  the byte order changes; everything else pydicom re-encodes from decoded values);
* from the compressed syntaxes pydicom's pixel data handlers can decode (JPEG baseline/extended/
  lossless, JPEG-LS, JPEG 2000, RLE, with pylibjpeg and its plugins installed) to an uncompressed one.
  Decompression keeps what pydicom keeps: a lossy source stays flagged LossyImageCompression "01", and
  YBR JPEG becomes RGB.

Conversion decodes the whole dataset in memory (pixel data included), so it needs a few times the
file's size; :func:`transcode` refuses files above ``max_size`` with :class:`CannotConvert` rather than
risk the server's memory. Sending *without* conversion streams the file and has no such limit.
"""

from __future__ import annotations

import array
import os
from typing import Any

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacskit.dicom.vr import WORD_SIZE

#: Syntaxes :func:`transcode` can write.
NATIVE_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
#: Default cap on the size of a file :func:`transcode` will decode in memory.
DEFAULT_MAX_SIZE = 256 * 1024 * 1024


class CannotConvert(Exception):
    """The file cannot be re-encoded in the wanted syntax; the message says why (for logs)."""


def can_convert(source: str, target: str) -> bool:
    """Whether :func:`transcode` may succeed from ``source`` to ``target`` (it can still fail on the
    data itself, e.g. a codec missing for that particular compressed encoding)."""
    if target not in NATIVE_SYNTAXES:
        return False
    if source in NATIVE_SYNTAXES:
        return True
    try:
        return UID(source).is_compressed
    except Exception:  # noqa: BLE001 - an unknown UID string
        return False


_ARRAY_CODES = {2: "H", 4: "I" if array.array("I").itemsize == 4 else "L", 8: "Q"}


def _swap_words(ds: Any) -> None:
    """Swap the byte order of the fixed-width binary values of ``ds`` (recursively)."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                _swap_words(item)
            continue
        width = WORD_SIZE.get(elem.VR)
        value = elem.value
        if width and isinstance(value, (bytes, bytearray)) and value and len(value) % width == 0:
            words = array.array(_ARRAY_CODES[width], value)
            words.byteswap()
            elem.value = words.tobytes()


def transcode(source: str | os.PathLike[str], dest: str | os.PathLike[str], target: str,
              *, max_size: int = DEFAULT_MAX_SIZE) -> None:
    """Write ``source`` re-encoded in ``target`` (one of :data:`NATIVE_SYNTAXES`) to ``dest``.

    Raises :class:`CannotConvert` when the file is larger than ``max_size``, the target is not a
    native syntax, or the pixel data cannot be decoded (no handler for it, corrupt data).
    """
    from pydicom import dcmread
    from pydicom.filewriter import dcmwrite

    if target not in NATIVE_SYNTAXES:
        raise CannotConvert(f"cannot encode into {UID(target).name}")
    size = os.path.getsize(source)
    if size > max_size:
        raise CannotConvert(f"{size} bytes is above the conversion limit of {max_size} bytes")
    try:
        ds = dcmread(source)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        raise CannotConvert(f"unreadable: {exc}") from exc
    src_ts = UID(ds.file_meta.TransferSyntaxUID)
    if src_ts not in NATIVE_SYNTAXES:
        if not src_ts.is_compressed:
            raise CannotConvert(f"unknown source syntax {src_ts}")
        if "PixelData" not in ds:
            raise CannotConvert(f"{src_ts.name} without pixel data")
        try:
            # -> Explicit VR Little Endian, native pixel data; same instance (a transfer syntax is an
            # encoding, not a new object: PS3.5 A.4), so no new SOP Instance UID as pydicom would make
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001 - missing plugin, corrupt stream
            raise CannotConvert(f"cannot decompress {src_ts.name}: {exc}") from exc
        src_ts = UID(ExplicitVRLittleEndian)
    target_uid = UID(target)
    if src_ts.is_little_endian != target_uid.is_little_endian:
        from pydicom.filewriter import correct_ambiguous_vr

        correct_ambiguous_vr(ds, src_ts.is_little_endian)  # 'OB or OW' -> OW when 16 bits, etc.
        _swap_words(ds)
    ds.file_meta.TransferSyntaxUID = target_uid
    try:
        dcmwrite(dest, ds, implicit_vr=target_uid.is_implicit_VR, little_endian=target_uid.is_little_endian,
                 enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001
        raise CannotConvert(f"cannot encode into {target_uid.name}: {exc}") from exc
