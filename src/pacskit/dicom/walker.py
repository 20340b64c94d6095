"""A guard against hostile sequence nesting, run before anything decodes a received dataset.

DCMTK refuses datasets nested deeper than 64 sequence levels; so do we. This walks element headers
only (tags, VRs, lengths), seeking over values and encapsulated pixel data, so it costs a few
microseconds per element and never recurses, whatever the input.

The same walk can hand back the raw values of chosen top-level elements (``collect``): ingest gets
the attributes it indexes from this one pass instead of a second parse by pydicom. A collected
sequence comes back as its encoded items (without a sequence delimiter), whatever length encoding
it was sent with.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

from pacskit.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_IMAGE_FRAME_COMPRESSION,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from pacskit.dicom.vr import LONG_VRS

MAX_SEQUENCE_DEPTH = 64
UNDEFINED = 0xFFFFFFFF
_DEFLATED = (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_IMAGE_FRAME_COMPRESSION)


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


#: Top-level values longer than this are not collected (the index wants short text values).
MAX_COLLECTED = 1 << 16


@dataclass(slots=True)
class Walked:
    """What a walk saw: the collected top-level values and whether the dataset ended cleanly."""

    values: dict[int, tuple[bytes | None, bytes]] = field(default_factory=dict)  # tag -> (VR, value)
    complete: bool = True  # False: truncated or odd input stopped the walk early


def is_walkable(transfer_syntax: str) -> bool:
    """The walk reads the dataset as stored: not for deflated transfer syntaxes."""
    return transfer_syntax not in _DEFLATED


def check_nesting(
    path: str | os.PathLike[str],
    offset: int,
    transfer_syntax: str,
    limit: int = MAX_SEQUENCE_DEPTH,
    collect: frozenset[int] | set[int] = frozenset(),
) -> Walked:
    """Raise :class:`TooDeep` if the dataset at ``offset`` nests sequences deeper than ``limit``.

    Returns the raw values of the top-level elements whose tags are in ``collect`` (VR is None for
    implicit VR). Deflated datasets are not walked here: nothing is collected
    (:func:`pacskit.store.index.extract.scan_instance` inflates them, capped, and walks the result). Truncated or odd input ends the walk (``complete`` False): decoding will report it
    with a precise reason.
    """
    walked = Walked()
    if not is_walkable(transfer_syntax):
        walked.complete = False
        return walked
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    endian = ">" if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN else "<"
    hdr = struct.Struct(endian + "HH")
    u16, u32 = struct.Struct(endian + "H"), struct.Struct(endian + "L")
    with open(path, "rb", buffering=_BUFFER) as fh:
        walked.complete = _walk(fh, offset, implicit, hdr, u16, u32, limit, collect, walked.values)
    return walked


_BUFFER = 1 << 16


def _walk(fh: BinaryIO, pos: int, implicit: bool, hdr: struct.Struct, u16: struct.Struct, u32: struct.Struct,
          limit: int, collect: frozenset[int] | set[int], values: dict[int, tuple[bytes | None, bytes]]) -> bool:
    size = os.fstat(fh.fileno()).st_size
    # (is_sequence, end offset or None for undefined length, collected top-level sequence or None)
    stack: list[tuple[bool, int | None, _Collecting | None]] = []
    depth = 0
    fh.seek(pos)
    while pos < size:
        while stack and stack[-1][1] is not None and pos >= stack[-1][1]:
            is_seq, end, collecting = stack.pop()
            if is_seq:
                depth -= 1
            if collecting is not None:
                _keep_sequence(fh, collecting, end, pos, values)  # type: ignore[arg-type]
        head = fh.read(8)
        if len(head) < 8:
            return False
        group, elem = hdr.unpack_from(head)
        tag = (group << 16) | elem
        if group == 0xFFFE:
            (length,) = u32.unpack_from(head, 4)
            pos += 8
            if elem == 0xE000:
                stack.append((False, None if length == UNDEFINED else pos + length, None))
            elif stack:  # item / sequence delimiter: close the innermost matching container
                want_sequence = elem == 0xE0DD
                while stack:
                    is_seq, _, collecting = stack.pop()
                    if is_seq:
                        depth -= 1
                    if collecting is not None:
                        _keep_sequence(fh, collecting, pos - 8, pos, values)
                    if is_seq == want_sequence:
                        break
            continue
        vr: bytes | None = None
        if implicit:
            (length,) = u32.unpack_from(head, 4)
            sequence = length == UNDEFINED or _is_sequence(tag)
            pos += 8
        else:
            vr = head[4:6]
            if vr in LONG_VRS:
                extra = fh.read(4)
                if len(extra) < 4:
                    return False
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
                        return False
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
            collecting = _Collecting(tag, vr, pos) if not stack and tag in collect else None
            stack.append((True, None if length == UNDEFINED else pos + length, collecting))
            continue
        if not stack and tag in collect and length <= MAX_COLLECTED:
            value = fh.read(length)
            if len(value) < length:
                return False
            values[tag] = (vr, value)
            pos += length
            continue
        pos += length
        fh.seek(pos)
    while stack and stack[-1][1] is not None and pos >= stack[-1][1]:  # sequences ending with the dataset
        _, end, collecting = stack.pop()
        if collecting is not None:
            _keep_sequence(fh, collecting, end, pos, values)  # type: ignore[arg-type]
    return pos == size


@dataclass(slots=True)
class _Collecting:
    """A top-level sequence in ``collect`` being walked: its items are kept once it closes."""

    tag: int
    vr: bytes | None
    start: int  # offset of its first item


def _keep_sequence(fh: BinaryIO, seq: _Collecting, end: int, resume: int,
                   values: dict[int, tuple[bytes | None, bytes]]) -> None:
    """Keep the encoded items of ``seq`` (``start`` to ``end``, no sequence delimiter) as its value,
    then put the file back at ``resume``."""
    if end - seq.start <= MAX_COLLECTED:
        fh.seek(seq.start)
        values[seq.tag] = (seq.vr, fh.read(end - seq.start))
    fh.seek(resume)
