"""A guard against hostile sequence nesting, run before anything decodes a received dataset.

DCMTK refuses datasets nested deeper than 64 sequence levels; so do we. This walks element headers
only (tags, VRs, lengths), seeking over values and encapsulated pixel data, so it costs a few
microseconds per element and never recurses, whatever the input.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

MAX_SEQUENCE_DEPTH = 64
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


class TooDeep(ValueError):
    """The dataset nests sequences deeper than allowed; ``tag`` is the sequence that crossed the limit."""

    def __init__(self, depth: int, tag: int) -> None:
        super().__init__(f"sequence nesting deeper than {depth} levels")
        self.tag = tag


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def check_nesting(path: str | os.PathLike[str], offset: int, transfer_syntax: str, limit: int = MAX_SEQUENCE_DEPTH) -> None:
    """Raise :class:`TooDeep` if the dataset at ``offset`` nests sequences deeper than ``limit``.

    Deflated datasets are not walked (their inflated size is capped elsewhere). Truncated or odd input
    ends the walk silently: decoding will report it with a precise reason.
    """
    if transfer_syntax in _DEFLATED:
        return
    implicit = transfer_syntax == _IMPLICIT
    endian = ">" if transfer_syntax == _BIG_ENDIAN else "<"
    hdr = struct.Struct(endian + "HH")
    u16, u32 = struct.Struct(endian + "H"), struct.Struct(endian + "L")
    with open(path, "rb") as fh:
        _walk(fh, offset, implicit, hdr, u16, u32, limit)


def _walk(fh: BinaryIO, pos: int, implicit: bool, hdr: struct.Struct, u16: struct.Struct, u32: struct.Struct, limit: int) -> None:
    size = os.fstat(fh.fileno()).st_size
    stack: list[tuple[bool, int | None]] = []  # (is_sequence, end offset or None for undefined length)
    depth = 0
    fh.seek(pos)
    while pos < size:
        while stack and stack[-1][1] is not None and pos >= stack[-1][1]:  # type: ignore[operator]
            if stack.pop()[0]:
                depth -= 1
        head = fh.read(8)
        if len(head) < 8:
            return
        group, elem = hdr.unpack_from(head)
        tag = (group << 16) | elem
        if group == 0xFFFE:
            (length,) = u32.unpack_from(head, 4)
            pos += 8
            if elem == 0xE000:
                stack.append((False, None if length == UNDEFINED else pos + length))
            elif stack:  # item / sequence delimiter: close the innermost matching container
                want_sequence = elem == 0xE0DD
                while stack:
                    is_seq, _ = stack.pop()
                    if is_seq:
                        depth -= 1
                    if is_seq == want_sequence:
                        break
            continue
        if implicit:
            (length,) = u32.unpack_from(head, 4)
            sequence = length == UNDEFINED or _is_sequence(tag)
            pos += 8
        else:
            vr = head[4:6]
            if vr in _LONG_VRS:
                extra = fh.read(4)
                if len(extra) < 4:
                    return
                (length,) = u32.unpack(extra)
                pos += 12
            else:
                (length,) = u16.unpack_from(head, 6)
                pos += 8
            sequence = vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
            if not sequence and length == UNDEFINED:  # encapsulated pixel data: skip its fragments
                while True:
                    item = fh.read(8)
                    if len(item) < 8:
                        return
                    _, ielem = hdr.unpack_from(item)
                    (ilen,) = u32.unpack_from(item, 4)
                    pos += 8
                    if ielem == 0xE0DD:
                        break
                    pos += ilen
                    fh.seek(pos)
                continue
        if sequence:
            depth += 1
            if depth > limit:
                raise TooDeep(limit, tag)
            stack.append((True, None if length == UNDEFINED else pos + length))
            continue
        pos += length
        fh.seek(pos)
