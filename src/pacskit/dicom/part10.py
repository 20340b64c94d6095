"""DICOM Part 10 files (PS3.10): the File Meta Information read and written by hand, files read whole
or in blocks, and the raw deflate stream of Deflated Explicit VR Little Endian (PS3.5 A.5).

No pydicom here: a C-STORE of a file, or the ingest of a received one, needs only the File Meta
values and the offset where the dataset starts, and reading them by hand costs microseconds.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pacskit.dicom.vr import LONG_VRS

#: Files up to this size are read whole (meta and dataset in one read) for a C-STORE, not streamed;
#: bigger ones are streamed in blocks of this size.
WHOLE_FILE_LIMIT = 256 * 1024


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_class_uid: str,
    implementation_version_name: str = "",
    source_ae_title: str = "",
) -> bytes:
    """Preamble, ``DICM`` and a File Meta Information group (PS3.10 7.1), Explicit VR Little Endian."""

    def elem(tag_elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) & 1:
            value += pad
        if vr in LONG_VRS:
            return struct.pack("<HH2sHL", 0x0002, tag_elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value

    body = [
        elem(0x0001, b"OB", b"\x00\x01", b"\x00"),
        elem(0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
        elem(0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
        elem(0x0010, b"UI", transfer_syntax.encode("ascii"), b"\x00"),
        elem(0x0012, b"UI", implementation_class_uid.encode("ascii"), b"\x00"),
    ]
    if implementation_version_name:
        body.append(elem(0x0013, b"SH", implementation_version_name.encode("ascii"), b" "))
    if source_ae_title:
        body.append(elem(0x0016, b"AE", source_ae_title.encode("ascii"), b" "))
    group = b"".join(body)
    return bytes(128) + b"DICM" + elem(0x0000, b"UL", struct.pack("<L", len(group)), b"") + group


#: What a deflated dataset may inflate to when decoded in memory (a deflate bomb inflates ~1000:1).
MAX_INFLATED_IN_MEMORY = 64 * 1024 * 1024
_INFLATE_PIECE = 1 << 20


class InflationLimit(ValueError):
    """A deflated dataset inflates beyond the allowed size (a deflate bomb, or simply too big)."""


def inflate(source: BinaryIO | bytes, write: Any, limit: int) -> int:
    """Inflate the raw deflate stream ``source`` (PS3.5 A.5: Deflated Explicit VR Little Endian) into
    ``write``, a piece of at most 1 MiB at a time; returns the inflated size.

    Raises :class:`InflationLimit` as soon as more than ``limit`` bytes would come out, so neither
    memory nor disk ever holds more than that, whatever the compression ratio. Raises ``zlib.error``
    for a corrupt stream, and for one cut short (no final block): what came out is then not the
    whole dataset. Bytes after the final block (PS3.5 A.5 pads to an even length) are ignored.
    """
    import zlib

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    view = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    while True:
        data = view.read(_INFLATE_PIECE)
        if not data:
            break
        while data:
            piece = inflater.decompress(data, _INFLATE_PIECE)
            total += len(piece)
            if total > limit:
                raise InflationLimit(f"deflated dataset inflates beyond {limit:,} bytes")
            write(piece)
            data = inflater.unconsumed_tail
        if inflater.eof:
            break
    rest = inflater.flush()
    total += len(rest)
    if total > limit:
        raise InflationLimit(f"deflated dataset inflates beyond {limit:,} bytes")
    write(rest)
    if not inflater.eof:
        raise zlib.error("the deflate stream is cut short (no final block)")
    return total


@dataclass(slots=True)
class Part10Info:
    """What :func:`read_part10_header` found: the File Meta values and where the dataset starts."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    file_size: int
    source_ae: str | None = None  # (0002,0016) Source Application Entity Title, if present


def read_part10_header(path: str | os.PathLike[str]) -> Part10Info:
    """Read only the File Meta Information of a Part 10 file (no pydicom, no pixel data touched).

    Raises ``ValueError`` when the file is not Part 10 or lacks the UIDs a C-STORE needs.
    """
    return read_part10(path)[0]


_META_PROBE = 2048  # bytes read to find the File Meta Information (read again, larger, if it is longer)


def read_part10(path: str | os.PathLike[str], *, whole_below: int = 0) -> tuple[Part10Info, bytes | None]:
    """The File Meta Information of a Part 10 file and, when the file is at most ``whole_below`` bytes,
    its dataset bytes as well: one open and one read for a small instance (a C-STORE of it then needs
    no second open), the meta alone for a big one (which is then streamed with
    :func:`iter_file_chunks`). Raises ``ValueError`` when the file is not Part 10 or lacks the UIDs
    a C-STORE needs."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # no io object: a third of the cost
    try:
        size = os.fstat(fd).st_size
        whole = size <= whole_below
        buf = _read_up_to(fd, size if whole else min(size, _META_PROBE))
        while (parsed := _parse_file_meta(buf, path, complete=len(buf) >= size)) is None:
            buf += _read_up_to(fd, min(size, len(buf) * 4) - len(buf))
    finally:
        os.close(fd)
    values, pos = parsed
    return _info(values, pos, size, path), (buf[pos:] if whole else None)


def parse_part10_header(data: bytes | bytearray, name: str = "<memory>") -> Part10Info:
    """:func:`read_part10_header` of a whole Part 10 file held in memory (``name`` is for the
    messages): the same checks and the same ``ValueError``, no file involved."""
    parsed = _parse_file_meta(data, name, complete=True)
    assert parsed is not None  # complete: ends with a value or raises
    values, pos = parsed
    return _info(values, pos, len(data), name)


def _info(values: dict[int, str], pos: int, size: int, path: Any) -> Part10Info:
    try:
        return Part10Info(values[0x0002], values[0x0003], values[0x0010], pos, size, values.get(0x0016) or None)
    except KeyError as exc:
        raise ValueError(f"{path}: file meta information lacks (0002,{exc.args[0]:04X})") from exc


def _read_up_to(fd: int, n: int) -> bytes:
    parts = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _parse_file_meta(buf: bytes | bytearray, path: Any, *, complete: bool) -> tuple[dict[int, str], int] | None:
    """The group 0002 values (element -> text) and where the dataset starts, from the first bytes of
    a file (``complete``: all of it); ``None`` when ``buf`` ends inside the group (read more)."""
    end = len(buf)
    if end < 132 and not complete:
        return None
    if end < 132 or buf[128:132] != b"DICM":
        raise ValueError(f"{path}: not a DICOM Part 10 file (no DICM prefix)")
    values: dict[int, str] = {}
    pos = 132
    while True:
        if pos + 8 > end:
            return (values, pos) if complete else None  # the file ends with its meta: no dataset
        group, elem, vr = struct.unpack_from("<HH2s", buf, pos)
        if group != 0x0002:
            return values, pos
        if vr in LONG_VRS:
            if pos + 12 > end:
                break
            (length,) = struct.unpack_from("<L", buf, pos + 8)
            header_len = 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            header_len = 8
        start = pos + header_len
        if start + length > end:
            break
        values[elem] = buf[start : start + length].decode("ascii", "replace").rstrip("\x00 ")
        pos = start + length
    if complete:
        raise ValueError(f"{path}: truncated file meta information")
    return None


def iter_file_chunks(path: str | os.PathLike[str], offset: int, chunk_size: int) -> Iterator[bytes]:
    """Read ``path`` from ``offset`` in pieces of ``chunk_size`` bytes (the PDV payload size)."""
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                return
            yield chunk


__all__ = [
    "MAX_INFLATED_IN_MEMORY",
    "WHOLE_FILE_LIMIT",
    "InflationLimit",
    "Part10Info",
    "encode_file_meta",
    "inflate",
    "iter_file_chunks",
    "parse_part10_header",
    "read_part10",
    "read_part10_header",
]
