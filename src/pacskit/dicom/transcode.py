"""Re-encode a stored Part 10 file in another transfer syntax, for a peer that does not accept ours.

Supported:

* between the uncompressed syntaxes: Implicit VR Little Endian, Explicit VR Little Endian, Deflated
  Explicit VR Little Endian and Explicit VR Big Endian (words of OW/OF/OL/OD/OV values are swapped when
  the byte order changes; everything else pydicom re-encodes from decoded values);
* from the compressed syntaxes pydicom's pixel data handlers can decode (JPEG baseline/extended/
  lossless, JPEG-LS, JPEG 2000, RLE, with pylibjpeg and its plugins installed) to an uncompressed one.
  Decompression keeps what pydicom keeps: a lossy source stays flagged LossyImageCompression "01", and
  YBR JPEG becomes RGB;
* into the *lossless* compressed syntaxes an installed encoder can write (:func:`encodable_syntaxes`:
  RLE Lossless always, JPEG 2000 Lossless with pylibjpeg-openjpeg, JPEG-LS Lossless with pyjpegls),
  from an uncompressed or decodable source. Lossy compression is never done on request: it would
  degrade an image nobody asked to degrade (a lossy source re-encoded losslessly keeps its flag).

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
#: Lossless compressed syntaxes :func:`transcode` may write, when their encoder is installed.
LOSSLESS_COMPRESSED: tuple[str, ...] = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
)
#: Default cap on the size of a file :func:`transcode` will decode in memory.
DEFAULT_MAX_SIZE = 256 * 1024 * 1024


class CannotConvert(Exception):
    """The file cannot be re-encoded in the wanted syntax; the message says why (for logs)."""


_encodable: tuple[str, ...] | None = None


def encodable_syntaxes() -> tuple[str, ...]:
    """The compressed syntaxes of :data:`LOSSLESS_COMPRESSED` whose encoder is installed."""
    global _encodable
    if _encodable is None:
        try:
            from pydicom.pixels.encoders.base import get_encoder

            _encodable = tuple(ts for ts in LOSSLESS_COMPRESSED if get_encoder(UID(ts)).is_available)
        except Exception:  # noqa: BLE001 - an old pydicom, numpy missing: nothing is encoded
            _encodable = ()
    return _encodable


def can_convert(source: str, target: str) -> bool:
    """Whether :func:`transcode` may succeed from ``source`` to ``target`` (it can still fail on the
    data itself, e.g. a codec missing for that particular compressed encoding)."""
    if target in encodable_syntaxes():
        return source != target and (source in NATIVE_SYNTAXES or can_convert(source, ExplicitVRLittleEndian))
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
    """Write ``source`` re-encoded in ``target`` (one of :data:`NATIVE_SYNTAXES` or
    :func:`encodable_syntaxes`) to ``dest``.

    Raises :class:`CannotConvert` when the file is larger than ``max_size``, the target is neither,
    or the pixel data cannot be decoded or encoded (no handler for it, corrupt data, an image the
    encoder does not take).
    """
    from pydicom import dcmread
    from pydicom.filewriter import dcmwrite

    compress_into = target if target in encodable_syntaxes() else None
    if target not in NATIVE_SYNTAXES and compress_into is None:
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
    if compress_into is not None:
        if "PixelData" not in ds:
            raise CannotConvert(f"no pixel data to encode into {UID(target).name}")
        if src_ts != ExplicitVRLittleEndian:  # compress() reads native little endian pixel data
            if not src_ts.is_little_endian:
                raise CannotConvert(f"{src_ts.name} is converted to a native little endian syntax first")
        try:
            ds.compress(compress_into, generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001 - unsupported bit depth / photometric, plugin error
            raise CannotConvert(f"cannot encode into {UID(target).name}: {exc}") from exc
        try:
            dcmwrite(dest, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001
            raise CannotConvert(f"cannot write {UID(target).name}: {exc}") from exc
        return
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


def encode_frame(frame: bytes, target: str, *, rows: int, columns: int, samples_per_pixel: int,
                 bits_allocated: int, bits_stored: int, pixel_representation: int,
                 photometric_interpretation: str, planar_configuration: int = 0) -> bytes:
    """One native little endian frame encoded in ``target`` (one of :func:`encodable_syntaxes`), for
    WADO-RS frames asked for in a compressed syntax they are not stored in. :class:`CannotConvert`
    when the encoder does not take the image."""
    if target not in encodable_syntaxes():
        raise CannotConvert(f"cannot encode into {UID(target).name}")
    from pydicom.pixels.encoders.base import get_encoder

    try:
        return bytes(get_encoder(UID(target)).encode(
            frame, rows=rows, columns=columns, samples_per_pixel=samples_per_pixel,
            bits_allocated=bits_allocated, bits_stored=bits_stored, pixel_representation=pixel_representation,
            photometric_interpretation=photometric_interpretation, planar_configuration=planar_configuration,
            number_of_frames=1))
    except Exception as exc:  # noqa: BLE001 - unsupported bit depth / photometric
        raise CannotConvert(f"cannot encode the frame into {UID(target).name}: {exc}") from exc
