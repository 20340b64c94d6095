"""The byte-level path of :meth:`pacskit.dicom.anonymize.Anonymizer.anonymize_file`.

The same actions as the dataset path (:meth:`Anonymizer.anonymize`), applied to the encoded dataset
without building a pydicom dataset: elements kept are copied as they are, sequences are rewritten
with undefined lengths (their items may change size), Pixel Data is copied untouched. It handles the
Little Endian transfer syntaxes (Implicit, Explicit, and the encapsulated ones); a file it cannot
handle (deflated, big endian, malformed) raises :class:`NotHandled` and the dataset path takes it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR

from pacskit.dicom.vr import LONG_VRS

if TYPE_CHECKING:
    from pacskit.dicom.anonymize import Anonymizer, _Run

UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_HEAD = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_ITEM_OPEN = struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
_ITEM_CLOSE = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQ_CLOSE = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_VR_CACHE: dict[int, bytes] = {}


class NotHandled(ValueError):
    """This file is for the dataset path."""


def _implicit_vr(tag: int) -> bytes:
    vr = _VR_CACHE.get(tag)
    if vr is None:
        try:
            name = dictionary_VR(tag)
        except KeyError:
            name = "UN"
        vr = _VR_CACHE[tag] = name.split(" or ")[0].encode("ascii")
    return vr


class Element:
    __slots__ = ("tag", "vr", "start", "value", "length", "end")

    def __init__(self, tag: int, vr: bytes, start: int, value: int, length: int, end: int) -> None:
        self.tag, self.vr, self.start, self.value, self.length, self.end = tag, vr, start, value, length, end


class Reader:
    """Element headers of ``buf`` (Little Endian; ``implicit`` for Implicit VR)."""

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = buf

    def element(self, pos: int, implicit: bool) -> Element:
        buf = self.buf
        if pos + 8 > len(buf):
            raise NotHandled("truncated element header")
        group, elem = _HEAD.unpack_from(buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            return Element(tag, b"", pos, pos + 8, _U32.unpack_from(buf, pos + 4)[0], pos + 8)
        if implicit:
            vr = _implicit_vr(tag)
            length = _U32.unpack_from(buf, pos + 4)[0]
            value = pos + 8
        else:
            vr = bytes(buf[pos + 4:pos + 6])
            if vr in LONG_VRS:
                length = _U32.unpack_from(buf, pos + 8)[0]
                value = pos + 12
            else:
                length = _U16.unpack_from(buf, pos + 6)[0]
                value = pos + 8
        if length == UNDEFINED:
            end = self.skip_undefined(value, tag, vr, implicit)
        else:
            end = value + length
            if end > len(buf):
                raise NotHandled("value beyond the end of the file")
        return Element(tag, vr, pos, value, length, end)

    def skip_undefined(self, pos: int, tag: int, vr: bytes, implicit: bool) -> int:
        """End of an undefined-length value starting at ``pos`` (after its sequence delimiter)."""
        if tag == 0x7FE00010 or vr not in (b"SQ", b"UN"):
            if tag != 0x7FE00010 and vr not in (b"OB", b"OW"):
                raise NotHandled(f"undefined length for VR {vr!r}")
            while True:  # encapsulated fragments
                item = self.element(pos, True)
                if item.tag == _SEQ_END:
                    return item.end
                if item.tag != _ITEM or item.length == UNDEFINED:
                    raise NotHandled("bad encapsulated pixel data")
                pos = item.value + item.length
        inner_implicit = implicit or vr == b"UN"
        while True:
            item = self.element(pos, True)
            if item.tag == _SEQ_END:
                return item.end
            if item.tag != _ITEM:
                raise NotHandled("a sequence holds something else than items")
            pos = self.item_end(item, inner_implicit)

    def item_end(self, item: Element, implicit: bool) -> int:
        if item.length != UNDEFINED:
            return item.value + item.length
        pos = item.value
        while True:
            el = self.element(pos, implicit)
            if el.tag == _ITEM_END:
                return el.end
            pos = el.end

    def items(self, seq: Element, implicit: bool) -> list[tuple[int, int | None]]:
        """(content start, content end or None for undefined length) of each item of ``seq``."""
        out: list[tuple[int, int | None]] = []
        pos = seq.value
        stop = None if seq.length == UNDEFINED else seq.value + seq.length
        while stop is None or pos < stop:
            item = self.element(pos, True)
            if item.tag == _SEQ_END:
                break
            if item.tag != _ITEM:
                raise NotHandled("a sequence holds something else than items")
            out.append((item.value, None if item.length == UNDEFINED else item.value + item.length))
            pos = self.item_end(item, implicit)
        return out


def header(tag: int, vr: bytes, length: int, implicit: bool) -> bytes:
    if implicit:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length)
    if vr in LONG_VRS:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, length)
    if length > 0xFFFF:
        raise NotHandled("value too long for its VR")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, length)


def encode(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    if len(value) & 1:
        value += b"\0" if vr == b"UI" else b" "
    return header(tag, vr, len(value), implicit) + value


def _strings(raw: bytes | memoryview) -> list[str]:
    return bytes(raw).decode("ascii", "replace").rstrip("\0 ").split("\\")


class Rewriter:
    """One file's rewrite, with the anonymizer's table and this instance's run state."""

    def __init__(self, anonymizer: Anonymizer, run: _Run, buf: bytes, dummy: Callable[[str], Any],
                 shift: Callable[[str, str, Any], str]) -> None:
        self.a = anonymizer
        self.run = run
        self.reader = Reader(buf)
        self.buf = memoryview(buf)  # kept elements and Pixel Data are written from views: no copies
        self.dummy = dummy
        self.shift = shift

    def dataset(self, pos: int, stop: int | None, implicit: bool,
                top: bool = False) -> list[tuple[int, bytes | memoryview]]:
        """The rewritten elements of the dataset from ``pos`` to ``stop`` (None: up to an item delimiter)."""
        out: list[tuple[int, bytes | memoryview]] = []
        buf = self.buf
        result = self.run.result
        exact = self.a.exact
        while stop is None or pos < stop:
            if stop is not None and pos + 8 > stop:
                raise NotHandled("trailing bytes")
            el = self.reader.element(pos, implicit)
            pos = el.end
            tag = el.tag
            if tag == _ITEM_END and stop is None:
                return out
            if tag >> 16 in (0x0000, 0x0002, 0xFFFE):  # padding, file meta or a stray delimiter
                raise NotHandled(f"unexpected element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            group = tag >> 16
            if group & 1:
                result.private_removed += 1
                continue
            if group & 0xFF00 in (0x5000, 0x6000):
                result.removed += 1
                continue
            if top and tag in (0x00100010, 0x00100020):
                continue
            action = exact.get(tag)
            vr = el.vr
            is_seq = vr == b"SQ" or (vr == b"UN" and el.length == UNDEFINED)
            if action is None or action == "K":
                out.append((tag, self.sequence(el, implicit) if is_seq else buf[el.start:el.end]))
            elif action == "X":
                result.removed += 1
            elif action == "Z":
                result.replaced += 1
                out.append((tag, header(tag, b"SQ" if is_seq else vr, 0, implicit)))
            elif is_seq:  # D, U, U*, C on a sequence: its items de-identified
                out.append((tag, self.sequence(el, implicit)))
            elif vr == b"UI" and action in ("U", "U*", "D"):
                values = _strings(buf[el.value:el.end])
                if values == [""]:
                    out.append((tag, buf[el.start:el.end]))
                    continue
                new = [self.a.uid(v) for v in values]
                result.uids += len(new)
                out.append((tag, encode(tag, vr, "\\".join(new).encode("ascii"), implicit)))
            elif action in ("D", "C") and vr in (b"DA", b"DT") and self.run.offset is not None:
                result.replaced += 1
                values = _strings(buf[el.value:el.end])
                text = "\\".join(self.shift(v, vr.decode(), self.run.offset) if v.strip() else v for v in values)
                out.append((tag, encode(tag, vr, text.encode("ascii"), implicit)))
            elif action == "C":
                out.append((tag, buf[el.start:el.end]))  # times: the shift is by whole days
            elif action == "D":
                result.replaced += 1
                out.append((tag, self.encode_dummy(tag, vr, implicit)))
            else:
                result.removed += 1
        return out

    def encode_dummy(self, tag: int, vr: bytes, implicit: bool) -> bytes:
        value = self.dummy(vr.decode())
        if isinstance(value, str):
            return encode(tag, vr, value.encode("ascii"), implicit)
        if isinstance(value, int):
            fmt = {b"US": "<H", b"SS": "<h", b"UL": "<L", b"SL": "<l", b"FL": "<f", b"FD": "<d",
                   b"UV": "<Q", b"SV": "<q"}.get(vr)
            if fmt is None:
                raise NotHandled(f"no dummy for VR {vr!r}")
            return encode(tag, vr, struct.pack(fmt, value), implicit)
        return encode(tag, vr, bytes(value), implicit)

    def sequence(self, el: Element, implicit: bool) -> bytes:
        inner_implicit = implicit or el.vr == b"UN"
        parts: list[bytes | memoryview] = [header(el.tag, b"SQ" if el.vr == b"SQ" else el.vr, UNDEFINED, implicit)]
        for start, stop in self.reader.items(el, inner_implicit):
            parts.append(_ITEM_OPEN)
            parts.extend(chunk for _tag, chunk in self.dataset(start, stop, inner_implicit))
            parts.append(_ITEM_CLOSE)
        parts.append(_SEQ_CLOSE)
        return b"".join(parts)


def first_values(buf: bytes, pos: int, implicit: bool, wanted: set[int]) -> dict[int, str]:
    """The text values of top-level ``wanted`` tags (stops after the highest one)."""
    reader = Reader(buf)
    found: dict[int, str] = {}
    last = max(wanted)
    while pos < len(buf):
        el = reader.element(pos, implicit)
        if el.tag > last:
            break
        if el.tag in wanted:
            found[el.tag] = bytes(buf[el.value:el.end]).decode("ascii", "replace").rstrip("\0 ").strip()
        pos = el.end
    return found


__all__ = ["NotHandled", "Reader", "Rewriter", "encode", "first_values", "header"]
