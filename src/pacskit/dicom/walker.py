"""The ingest walk: proves a received dataset parses to its last byte, guards sequence nesting, and
collects the values the index needs, in one pass over element headers.

It walks element headers only (tags, VRs, lengths), seeking over values and encapsulated pixel data,
so it costs a few microseconds per element and never recurses, whatever the input; a multi-GB
instance is never read into memory.

What it proves (PS3.5 7.1, 7.5, A.4), in the transfer syntax the dataset was negotiated in:

* every element header and value fits in the file and in the defined-length item or sequence that
  holds it; Explicit VR elements carry a VR of two upper-case letters (Implicit VR bytes sent on an
  Explicit VR context fail here, at the first element);
* a sequence holds only items; an undefined-length item or sequence is closed by its delimiter;
  encapsulated pixel data is a run of defined-length fragments closed by a sequence delimiter;
* the walk ends exactly at the end of the data, with every item and sequence closed.

Anything else stops the walk with a :class:`Malformed` problem (``Walked.complete`` False): ingest
refuses such a dataset (status 0xC000) rather than archive bytes nobody can read back. DCMTK refuses
the same datasets: ``dcmdump`` over pydicom's corpus agrees with the walk (tests/store/test_parse_to_end.py)
but for a DICOMDIR whose last item claims 24 bytes more than the file holds, which DCMTK's file reader
lets pass and the walk refuses. What is
sloppy but harmless is accepted, as DCMTK accepts it: odd value lengths, unknown (well-formed) VRs
(read with a 32-bit length, like the VRs added lately: UC, UR, OD, OL, OV, SV, UV; DCMTK does too),
elements out of order, an item delimiter with no item to close, 8 or more NUL bytes after the
last element.

A value of VR UN with undefined length is a sequence encoded in Implicit VR Little Endian, whatever
the transfer syntax (PS3.5 6.2.2): its items are walked as such.

DCMTK refuses datasets nested deeper than 64 sequence levels; so do we (:class:`TooDeep`).

The same walk hands back the raw values of chosen top-level elements (``collect``): ingest gets the
attributes it indexes from this one pass instead of a second parse by pydicom. A collected sequence
comes back as its encoded items (without a sequence delimiter), whatever length encoding it was sent
with.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.datadict import dictionary_VR, keyword_for_tag

from pacskit.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacskit.dicom.vr import KNOWN_VRS, LONG_VRS

MAX_SEQUENCE_DEPTH = 64
UNDEFINED = 0xFFFFFFFF
#: Deflated *datasets* (PS3.5 A.5): the whole dataset is one deflate stream and must be inflated
#: before it can be walked. Deflated Image Frame Compression (1.2.840.10008.1.2.8.1) is not one: it
#: is an Explicit VR Little Endian dataset whose encapsulated frames are deflated (PS3.5 A.4.11).
_DEFLATED = (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,)
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD


class TooDeep(ValueError):
    """The dataset nests sequences deeper than allowed; ``tag`` is the sequence that crossed the limit."""

    def __init__(self, depth: int, tag: int) -> None:
        super().__init__(f"sequence nesting deeper than {depth} levels")
        self.tag = tag


class Malformed(ValueError):
    """The dataset does not parse in its transfer syntax.

    ``reason`` is short (an Error Comment has 64 characters: ``"<reason> in <tag>"``), ``detail`` says
    exactly what was found; ``tag`` is the element, item or sequence where parsing failed (``None``
    at the top level), ``offset`` the byte offset in the dataset (after any File Meta) of the failing
    header.
    """

    def __init__(self, reason: str, detail: str, tag: int | None, offset: int) -> None:
        where = f"{_name(tag)}, " if tag is not None else ""
        super().__init__(f"{detail} ({where}byte {offset} of the dataset)")
        self.reason = reason
        self.detail = detail
        self.tag = tag
        self.offset = offset


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag) or 'private'}"


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


#: Top-level values longer than this are not collected (the index wants short text values).
MAX_COLLECTED = 1 << 16


@dataclass(slots=True)
class Walked:
    """What a walk saw: the collected top-level values and whether the dataset parsed to its end.

    ``complete`` is False when the walk found a problem (``problem`` says what) or was not run (a
    deflated dataset: ``problem`` is None).
    """

    values: dict[int, tuple[bytes | None, bytes]] = field(default_factory=dict)  # tag -> (VR, value)
    complete: bool = True
    problem: Malformed | None = None


def is_walkable(transfer_syntax: str) -> bool:
    """The walk reads the dataset as stored: not for deflated datasets (inflate them first)."""
    return transfer_syntax not in _DEFLATED


def check_nesting(
    path: str | os.PathLike[str],
    offset: int,
    transfer_syntax: str,
    limit: int = MAX_SEQUENCE_DEPTH,
    collect: frozenset[int] | set[int] = frozenset(),
    fh: BinaryIO | None = None,
) -> Walked:
    """Walk the dataset at ``offset`` of ``path`` to its end (see the module docstring).

    ``fh``: ``path`` already open (binary, seekable, with a ``fileno``; left open, its position
    moved): ingest walks and hashes a received file with one open.

    Raises :class:`TooDeep` if it nests sequences deeper than ``limit``. Returns the raw values of the
    top-level elements whose tags are in ``collect`` (VR is None for implicit VR) and, when the
    dataset does not parse, ``complete`` False with the :class:`Malformed` ``problem``. Deflated
    datasets are not walked here (``complete`` False, no problem):
    :func:`pacskit.store.index.extract.scan_instance` inflates them, capped, and walks the result.
    Transfer syntaxes other than Implicit VR Little Endian and Explicit VR Big Endian are Explicit VR
    Little Endian datasets (the compressed ones too: only the pixel data is encapsulated).
    """
    walked = Walked()
    if not is_walkable(transfer_syntax):
        walked.complete = False
        return walked
    with open(path, "rb", buffering=_BUFFER) if fh is None else contextlib.nullcontext(fh) as f:
        try:
            _walk(f, offset, transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, transfer_syntax == EXPLICIT_VR_BIG_ENDIAN, limit, collect,
                  walked.values)
        except Malformed as exc:
            walked.complete = False
            walked.problem = exc
    return walked


_BUFFER = 1 << 16
_LE = (struct.Struct("<HH"), struct.Struct("<H"), struct.Struct("<L"))
_BE = (struct.Struct(">HH"), struct.Struct(">H"), struct.Struct(">L"))


@dataclass(slots=True)
class _Frame:
    """An open sequence or item: where it ends (None: undefined length, closed by a delimiter), the
    bound its contents must fit in, how its contents are encoded, and a top-level sequence being
    collected."""

    is_seq: bool
    tag: int  # the sequence's tag (items: their sequence's)
    end: int | None
    bound: int
    implicit: bool
    big: bool
    collecting: _Collecting | None = None


def _walk(fh: BinaryIO, start: int, implicit_ts: bool, big_ts: bool, limit: int,
          collect: frozenset[int] | set[int], values: dict[int, tuple[bytes | None, bytes]]) -> None:
    size = os.fstat(fh.fileno()).st_size
    stack: list[_Frame] = []
    depth = 0
    pos = start
    fh.seek(pos)

    def fail(reason: str, detail: str, tag: int | None, at: int) -> Malformed:
        return Malformed(reason, detail, tag, at - start)

    def short(what: str, tag: int | None, at: int, bound: int) -> Malformed:
        """A header that does not fit: in the file (truncated) or in its item."""
        if bound == size:
            return fail(TRUNCATED, f"the data ends inside {what}", tag, at)
        return fail(OVERRUN, f"{what} overruns its item or sequence", tag, at)

    def overrun(what: str, length: int, tag: int, at: int, value_at: int, bound: int) -> Malformed:
        if bound == size:
            return fail(TRUNCATED, f"{what} of {length} bytes, {max(size - value_at, 0)} left in the data", tag, at)
        return fail(OVERRUN, f"{what} of {length} bytes overruns its item or sequence by "
                    f"{value_at + length - bound}", tag, at)

    def close(frame: _Frame, end: int) -> None:
        nonlocal depth
        if frame.is_seq:
            depth -= 1
        if frame.collecting is not None:
            _keep_sequence(fh, frame.collecting, end, pos, values)

    top: _Frame | None = None
    bound, implicit, in_seq = size, implicit_ts, False
    hdr, u16, u32 = _BE if big_ts else _LE
    changed = False  # the stack changed: refresh the state of the innermost frame (above)
    while True:
        while stack and stack[-1].end == pos:  # defined-length items and sequences ending here
            close(stack.pop(), pos)
            changed = True
        if changed:
            changed = False
            if stack:
                top = stack[-1]
                bound, implicit, in_seq = top.bound, top.implicit, top.is_seq
                hdr, u16, u32 = _BE if top.big else _LE
            else:
                top, bound, implicit, in_seq = None, size, implicit_ts, False
                hdr, u16, u32 = _BE if big_ts else _LE
        if pos >= bound:
            if top is None:
                return  # the dataset ends here, everything closed
            what = "sequence" if top.is_seq else "item"
            if bound == size:
                raise fail(TRUNCATED, f"the data ends inside an undefined-length {what}", top.tag, pos)
            raise fail(UNCLOSED, f"undefined-length {what} not closed within its container", top.tag, pos)
        at = pos
        if pos + 8 > bound:
            raise short("an element header", top.tag if top else None, at, bound)
        head = fh.read(8)
        if len(head) < 8:
            raise fail(TRUNCATED, "the file ends inside an element header", top.tag if top else None, at)
        group, elem = hdr.unpack_from(head)
        tag = (group << 16) | elem
        pos += 8
        if in_seq:  # a sequence holds items, closed by a delimiter if undefined
            assert top is not None
            (length,) = u32.unpack_from(head, 4)
            if tag == 0xFFFE0000 | _ITEM:
                end = None if length == UNDEFINED else pos + length
                if end is not None and end > bound:
                    raise overrun("item", length, top.tag, at, pos, bound)
                stack.append(_Frame(False, top.tag, end, end if end is not None else bound, implicit, top.big))
                changed = True
                continue
            if tag == 0xFFFE0000 | _SEQ_END and top.end is None:
                close(stack.pop(), at)
                changed = True
                continue
            raise fail(NOT_AN_ITEM, f"({group:04X},{elem:04X}) where an item was expected", top.tag, at)
        if group == 0xFFFE:  # in an item (or the dataset): only an undefined-length item's delimiter
            if elem == _ITEM_END and top is not None and top.end is None:
                close(stack.pop(), at)
                changed = True
                continue
            if elem == _ITEM_END and u32.unpack_from(head, 4)[0] == 0:
                continue  # a stray item delimiter (no item to close): nothing to lose, DCMTK skips it too
            raise fail(DELIMITER, f"(FFFE,{elem:04X}) where an element was expected", top.tag if top else None, at)
        vr: bytes | None = None
        if implicit:
            (length,) = u32.unpack_from(head, 4)
            if length == UNDEFINED:
                encapsulated = tag == _PIXEL_DATA
                sequence = not encapsulated
            else:
                encapsulated, sequence = False, _is_sequence(tag)
        else:
            vr = head[4:6]
            if vr not in KNOWN_VRS and not (vr.isalpha() and vr.isupper()):  # bytes: ASCII letters
                if tag == 0 and top is None and _zeros_to_end(fh, at, size):
                    # NUL padding after the last element (DCMTK reads past it too). At least a whole
                    # header of NULs, (0000,0000), which no dataset holds: never a header cut short.
                    return
                raise fail(BAD_VR, f"invalid VR bytes 0x{vr.hex().upper()}", tag, at)
            if vr in LONG_VRS or vr not in KNOWN_VRS:  # a VR newer than us: 32-bit length (PS3.5 7.1.2)
                if pos + 4 > bound:
                    raise short("an element header", tag, at, bound)
                extra = fh.read(4)
                if len(extra) < 4:
                    raise fail(TRUNCATED, "the file ends inside an element header", tag, at)
                (length,) = u32.unpack(extra)
                pos += 4
            else:
                (length,) = u16.unpack_from(head, 6)
            sequence = vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
            encapsulated = not sequence and length == UNDEFINED
            if encapsulated and vr not in (b"OB", b"OW"):
                raise fail(UNDEFINED_LENGTH, f"undefined length with VR {vr.decode()}", tag, at)
        if encapsulated:  # pixel data fragments: defined-length items, then a sequence delimiter
            while True:
                if pos + 8 > bound:
                    raise short("a fragment header", tag, pos, bound)
                item = fh.read(8)
                if len(item) < 8:
                    raise fail(TRUNCATED, "the file ends inside a fragment header", tag, pos)
                igroup, ielem = hdr.unpack_from(item)
                (ilen,) = u32.unpack_from(item, 4)
                if igroup != 0xFFFE or ielem not in (_ITEM, _SEQ_END):
                    raise fail(BAD_FRAGMENT, f"({igroup:04X},{ielem:04X}) where a fragment was expected", tag, pos)
                if ielem == _SEQ_END:
                    pos += 8
                    break
                if ilen == UNDEFINED:
                    raise fail(BAD_FRAGMENT, "a fragment of undefined length", tag, pos)
                if pos + 8 + ilen > bound:
                    raise overrun("fragment", ilen, tag, pos, pos + 8, bound)
                pos += 8 + ilen
                fh.seek(pos)
            continue
        if sequence:
            depth += 1
            if depth > limit:
                raise TooDeep(limit, tag)
            end = None if length == UNDEFINED else pos + length
            if end is not None and end > bound:
                raise overrun("sequence", length, tag, at, pos, bound)
            collecting = _Collecting(tag, vr, pos) if not stack and tag in collect else None
            un = vr == b"UN"  # PS3.5 6.2.2: its items are Implicit VR Little Endian
            big = top.big if top is not None else big_ts
            stack.append(_Frame(True, tag, end, end if end is not None else bound,
                                implicit or un, big and not un, collecting))
            changed = True
            continue
        if pos + length > bound:
            raise overrun("value", length, tag, at, pos, bound)
        if not stack and tag in collect and length <= MAX_COLLECTED:
            value = fh.read(length)
            if len(value) < length:
                raise fail(TRUNCATED, "the file ends inside a value", tag, at)
            values[tag] = (vr, value)
            pos += length
            continue
        pos += length
        fh.seek(pos)


def _zeros_to_end(fh: BinaryIO, pos: int, size: int) -> bool:
    """Whether the data from ``pos`` to the end is all NUL bytes (padding some writers leave)."""
    fh.seek(pos)
    while pos < size:
        chunk = fh.read(min(size - pos, _BUFFER))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        pos += len(chunk)
    return True


# Malformed.reason: short, followed by " in <tag>" in an Error Comment (64 characters in all)
TRUNCATED = "dataset truncated"
OVERRUN = "length overruns its item"
UNCLOSED = "item or sequence not closed"
NOT_AN_ITEM = "no item in sequence"
DELIMITER = "unexpected delimiter"
BAD_VR = "not Explicit VR: bad VR"
UNDEFINED_LENGTH = "undefined length"
BAD_FRAGMENT = "bad pixel data fragment"


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
