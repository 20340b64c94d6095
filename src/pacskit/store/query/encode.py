"""Answers: each matching row as a response identifier, a pydicom ``Dataset`` (:func:`build_response`)
or straight to bytes (``_FastEncoder``: no dataset, element prefixes prepared once per query), with the
Specific Character Set the answer needs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import (
    select,
)

from pacskit.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacskit.dicom.vr import CHARSET_VRS, LONG_VR_NAMES, TEXT_VRS
from pacskit.store.index.models import (
    Instance,
    Series,
)

if TYPE_CHECKING:
    from pacskit.store.datastore import DataStore

from pacskit.store.query.compile import _CHARSET, _NO_VALIDATION, FindQuery


_TAG_PREFIX = struct.Struct("<HH").pack
_UL_LEN = struct.Struct("<I").pack
_US_LEN = struct.Struct("<H").pack


class _FastEncoder:
    """Encodes an answer straight from the row: tag order, padding and lengths as pydicom writes them
    (tests/query check the bytes are identical)."""

    def __init__(self, query: FindQuery, explicit: bool, fixed: dict[int, str]) -> None:
        self.query = query
        self.explicit = explicit
        self._positions: list[int] | None = None
        self._steps: list[tuple[int, bytes, Any, bytes, bool, bytes]] | None = None
        self._general = False  # a constant is not ASCII: every answer through _encode_with_charset
        self._empty: dict[int, bytes] = {}  # tag -> encoded empty element
        # (tag, vr, where the value comes from)
        self.plan: list[tuple[int, str, str, Any]] = []
        for rk in query.returns:
            if rk.tag in fixed:
                self.plan.append((rk.tag, rk.vr, "fixed", fixed[rk.tag]))
            elif rk.source == "level":
                self.plan.append((rk.tag, rk.vr, "fixed", query.level))
            elif rk.source == "column":
                self.plan.append((rk.tag, rk.vr, "column", (rk.label, rk.kind)))
            else:
                self.plan.append((rk.tag, rk.vr, "fixed", None))

    @classmethod
    def make(cls, query: FindQuery, transfer_syntax: str, fixed: dict[int, str]) -> _FastEncoder | None:
        if transfer_syntax not in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
            return None
        for rk in query.returns:
            if rk.tag in fixed:
                continue
            if rk.source in ("header", "sop_classes") or (rk.source == "column" and rk.vr not in TEXT_VRS):
                return None
            if rk.vr == "SQ" or len(rk.vr) != 2:
                return None  # pydicom's sequence encoding (undefined length), ambiguous VRs
        return cls(query, transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN, fixed)

    def _element_header(self, tag: int, vr: str, length: int) -> bytes:
        prefix, pack = self._prefix(tag, vr)
        return prefix + pack(length)

    def _prefix(self, tag: int, vr: str) -> tuple[bytes, Any]:
        """The bytes before an element's length, and the packer of its length."""
        head = _TAG_PREFIX(tag >> 16, tag & 0xFFFF)
        if not self.explicit:
            return head, _UL_LEN
        if vr in LONG_VR_NAMES:
            return head + vr.encode("ascii") + b"\x00\x00", _UL_LEN
        return head + vr.encode("ascii"), _US_LEN

    def _compile_steps(self, row: Any) -> list[tuple[int, bytes, Any, bytes, bool, bytes]] | None:
        """Per returned key, once per query: (row position or -1, prefix, length packer, padding,
        numeric, the whole element when it is constant); ``None`` when a constant is not ASCII (then
        every answer takes the general path)."""
        index = {name: i for i, name in enumerate(row._fields)}
        steps = []
        for tag, vr, source, ref in self.plan:
            prefix, pack = self._prefix(tag, vr)
            pad = b"\x00" if vr == "UI" else b" "
            if source == "column":
                steps.append((index[ref[0]], prefix, pack, pad, ref[1] in ("int", "count"), prefix + pack(0)))
                continue
            text = ref or ""
            if not text.isascii():
                return None
            data = text.encode("ascii")
            if len(data) % 2:
                data += pad
            steps.append((-1, prefix, pack, pad, False, prefix + pack(len(data)) + data))
        return steps

    def encode(self, row: Any) -> bytes:
        """One answer. Rows whose values are all ASCII (nearly all) are encoded from steps prepared once
        per query; a row with other text goes through :meth:`_encode_with_charset`, which picks the
        Specific Character Set."""
        steps = self._steps
        if steps is None:
            if self._general:
                return self._encode_with_charset(row)
            steps = self._steps = self._compile_steps(row)
            if steps is None:
                self._general = True
                return self._encode_with_charset(row)
        out: list[bytes] = []
        append = out.append
        for pos, prefix, pack, pad, numeric, whole in steps:
            if pos < 0:
                append(whole)
                continue
            raw = row[pos]
            if raw is None:
                append(whole)  # the empty element
                continue
            text = str(int(raw)) if numeric else raw if type(raw) is str else str(raw)
            if not text:
                append(whole)
                continue
            if not text.isascii():
                return self._encode_with_charset(row)
            data = text.encode("ascii")
            if len(data) % 2:
                data += pad
            append(prefix)
            append(pack(len(data)))
            append(data)
        return b"".join(out)

    def _encode_with_charset(self, row: Any) -> bytes:
        positions = self._positions
        if positions is None:  # the row's column order, once per query
            index = {name: i for i, name in enumerate(row._fields)}
            positions = self._positions = [index[ref[0]] if source == "column" else -1 for _, _, source, ref in self.plan]
        values: list[tuple[int, str, str | None]] = []
        non_ascii: list[str] = []
        for (tag, vr, source, ref), pos in zip(self.plan, positions):
            if pos >= 0:
                raw = row[pos]
                text = None if raw is None else (str(int(raw)) if ref[1] in ("int", "count") else str(raw))
            else:
                text = ref
            if text is not None and not text.isascii():
                non_ascii.append(text)
            values.append((tag, vr, text))
        codec = "ascii"
        if non_ascii:
            charset = _choose_charset(non_ascii, self.query.charset)
            if charset is not None:
                codec = _SINGLE_BYTE[charset]
                values.append((_CHARSET, "CS", charset))
                values.sort(key=lambda v: v[0])
        out: list[bytes] = []
        header = self._element_header
        empty = self._empty
        for tag, vr, text in values:
            if text is None or text == "":
                cached = empty.get(tag)
                if cached is None:
                    cached = empty[tag] = header(tag, vr, 0)
                out.append(cached)
                continue
            data = text.encode(codec if vr in CHARSET_VRS else "ascii", errors="replace")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
            out.append(header(tag, vr, len(data)))
            out.append(data)
        return b"".join(out)


def build_response(store: DataStore, query: FindQuery, row: Any) -> Dataset:
    """The response identifier for one row: every requested key, filled or empty."""
    mapping = row._mapping
    ds = Dataset()
    header: Dataset | None = None
    if query.header_tags:
        header = _read_header(store, mapping["_blob"], query.header_tags)
    for rk in query.returns:
        if rk.source == "level":
            value: Any = query.level
        elif rk.source == "column":
            value = _to_dicom(mapping[rk.label], rk.kind)
        elif rk.source == "sop_classes":
            value = _sop_classes(store, mapping["_pk"])
        elif rk.source == "header" and header is not None and rk.tag in header:
            elem = header[rk.tag]
            ds.add(DataElement(rk.tag, elem.VR, elem.value, validation_mode=_NO_VALIDATION))
            continue
        else:
            value = DicomSequence() if rk.vr == "SQ" else None
        # our own values, already checked: skip pydicom's per-value validation (it dominates otherwise)
        ds.add(DataElement(rk.tag, rk.vr, value, validation_mode=_NO_VALIDATION))
    return ds


def _to_dicom(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "modalities":
        return [v for v in str(value).split("\\") if v] or None
    if kind in ("int", "count"):
        return str(int(value))
    return value


def _sop_classes(store: DataStore, study_pk: int) -> list[str]:
    with store.index.reading() as s:
        rows = s.execute(
            select(Instance.sop_class_uid).distinct()
            .join(Series, Instance.series_fk == Series.pk)
            .where(Series.study_fk == study_pk)
            .order_by(Instance.sop_class_uid)
        ).scalars()
        return list(rows)


def _read_header(store: DataStore, blob_key: str | None, tags: Sequence[int]) -> Dataset | None:
    """The requested attributes of a stored file (header only; decoded to Unicode), or None."""
    if not blob_key:
        return None
    try:
        with store.blobs.open(blob_key) as fh:
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=list(tags))
            for tag in tags:  # decode now (the file's character set), while the file is open
                if tag in ds:
                    _ = ds[tag].value
            return ds
    except Exception:  # a missing or unreadable file: the keys are returned empty
        return None


# --- the character set of the answer ---------------------------------------------------------------

#: single-byte Specific Character Sets we may answer in when the values fit (else ISO_IR 192)
_SINGLE_BYTE = {
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9",
    "ISO_IR 166": "iso8859_11",
    "ISO_IR 192": "utf_8",
}


def _texts(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                yield from _texts(item)
            continue
        value = elem.value
        if value is None or isinstance(value, (bytes, int, float)):
            continue
        items = list(value) if isinstance(value, (list, MultiValue)) else [value]
        for v in items:
            if not isinstance(v, (bytes, int, float)):
                yield str(v)


def answer_charset(ds: Dataset, requested: Sequence[str]) -> str | None:
    """The Specific Character Set to answer ``ds`` in: None when all values are ASCII (the default
    repertoire), the identifier's own single-byte set when it can represent them, else ISO_IR 192."""
    return _choose_charset([t for t in _texts(ds) if not t.isascii()], requested)


def _choose_charset(non_ascii: Sequence[str], requested: Sequence[str]) -> str | None:
    if not non_ascii:
        return None
    if len(requested) == 1 and requested[0] in _SINGLE_BYTE:
        codec = _SINGLE_BYTE[requested[0]]
        try:
            for t in non_ascii:
                t.encode(codec)
            return requested[0]
        except UnicodeEncodeError:
            pass
    return "ISO_IR 192"


def set_answer_charset(ds: Dataset, requested: Sequence[str]) -> Dataset:
    """Add (0008,0005) to a response identifier when its values need it (see :func:`answer_charset`)."""
    charset = answer_charset(ds, requested)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds
