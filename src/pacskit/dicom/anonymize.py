"""De-identification: PS3.15 Annex E, the Basic Application Level Confidentiality Profile and options.

Table E.1-1 (:mod:`pacskit.dicom.deid_table`) is applied to every attribute, at every nesting level:

========  ==================================================================================
``X``     removed
``Z``     emptied (Patient ID and Patient's Name get a pseudonym instead: see below)
``D``     replaced by a dummy value valid for the VR (a sequence: its items de-identified)
``K``     kept (an option says so)
``U``     a UID replaced by ``2.25.<128 bits of HMAC-SHA-256(key, UID)>``: the same input UID gives
          the same output UID for one key, so a study set exported in several runs stays
          consistent (study, series, frame of reference, references between instances)
``C``     only for the modified-dates option (dates shifted by a per-patient number of days);
          the clean options (descriptors, structured content, graphics) are not offered: without
          them, their attributes get the Basic Profile's action (removed or emptied)
========  ==================================================================================

Where the action depends on the attribute's type in the IOD, the choice keeps every IOD valid
without looking the type up: ``X/Z`` -> ``Z``; ``X/D``, ``Z/D``, ``X/Z/D`` -> ``D``; ``X/Z/U*`` -> the
sequence kept with its UIDs replaced. Every private attribute is removed (the Retain Safe Private
option is not offered), and so is every curve (``50xx``) and overlay (``60xx`` group: the Basic Profile
removes Overlay Data, and an overlay without its data would be invalid).

Patient ID and Patient's Name are replaced by pseudonyms derived from the key and the original Patient
ID (``Options.patient_prefix`` + 10 hex digits), so one patient's studies stay together and nothing
can be traced back without the key. The attributes of E.1.1 are added: Patient Identity Removed
``YES``, De-identification Method (and its code sequence, CID 7050, naming the options used), and
Longitudinal Temporal Information Modified.

**Burned-in annotation**: an instance whose Burned In Annotation is ``YES`` is refused
(:class:`BurnedInAnnotation`) unless ``Options.allow_burned_in`` (pixel data cannot be cleaned here);
one without the attribute is reported ``"unknown"`` in :class:`Result` for the caller to flag
(ultrasound, secondary capture and endoscopy images often carry burned-in text).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacskit.dicom.deid_raw import NotHandled, Rewriter, first_values
from pacskit.dicom.deid_raw import encode as raw_encode
from pacskit.dicom.deid_raw import header as raw_header
from pacskit.dicom.deid_table import E1_1
from pacskit.dicom.part10 import encode_file_meta, read_part10_header

#: PS3.16 CID 7050 De-identification Method codes, by option
_METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "uids": ("113110", "Retain UIDs Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
    "institution_identity": ("113112", "Retain Institution Identity Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
}

_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_BURNED_IN = 0x00280301
_SOP_INSTANCE_UID = 0x00080018

_TEXT_DUMMY = "ANONYMIZED"
_MAX_LEN = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UT": 10240, "UC": 10240}


class AnonymizeError(ValueError):
    """The instance cannot be de-identified as asked (one line for the operator)."""


class BurnedInAnnotation(AnonymizeError):
    """The instance has burned-in annotation (Burned In Annotation = YES) and it was not allowed."""


@dataclass(frozen=True, slots=True)
class Options:
    """The options of PS3.15 E.3 this implementation offers, and the pseudonym prefix."""

    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_full_dates: bool = False
    retain_modified_dates: bool = False  # dates shifted by a per-patient offset (1 to 3650 days back)
    allow_burned_in: bool = False
    patient_prefix: str = "ANON"

    def enabled(self) -> list[str]:
        names = {"uids": self.retain_uids, "device_identity": self.retain_device_identity,
                 "institution_identity": self.retain_institution_identity,
                 "patient_characteristics": self.retain_patient_characteristics,
                 "full_dates": self.retain_full_dates, "modified_dates": self.retain_modified_dates}
        return [name for name, on in names.items() if on]


@dataclass(slots=True)
class Result:
    """What :meth:`Anonymizer.anonymize` did to one instance."""

    sop_instance_uid: str  # the new one
    original_sop_instance_uid: str
    burned_in: str  # "YES" (allowed), "NO", or "unknown" (the attribute is absent)
    removed: int = 0
    replaced: int = 0
    uids: int = 0
    private_removed: int = 0


def _resolve(action: str, opts: dict[str, str], enabled: Iterable[str]) -> str:
    for name in enabled:
        option_action = opts.get(name)
        if option_action == "K":
            return "K"
        if option_action == "C" and name == "modified_dates":
            return "C"
    if action in ("X/Z",):
        return "Z"
    if action in ("X/D", "Z/D", "X/Z/D"):
        return "D"
    if action == "X/Z/U*":
        return "U*"
    return action


@dataclass(slots=True)
class _Run:
    result: Result
    patient_id: str
    offset: dt.timedelta | None = None
    new_uids: dict[str, str] = field(default_factory=dict)


class Anonymizer:
    """De-identifies datasets with one project ``key`` (bytes or text; keep it secret and keep it:
    the same key maps the same UIDs and patients to the same values in every run)."""

    def __init__(self, key: bytes | str, options: Options | None = None, *,
                 implementation_class_uid: str = PYDICOM_IMPLEMENTATION_UID,
                 implementation_version_name: str = "") -> None:
        self.implementation_class_uid = implementation_class_uid  # of the files written (file meta)
        self.implementation_version_name = implementation_version_name
        if not key:
            raise ValueError("an anonymization key is required (the same key keeps UIDs consistent)")
        self.key = key.encode() if isinstance(key, str) else bytes(key)
        self.options = options or Options()
        enabled = self.options.enabled()
        self.exact: dict[int, str] = {}
        self.masked: list[tuple[int, int, str]] = []  # (mask, value, action) for repeating groups
        for tag, action, opts, _name in E1_1:
            if tag.startswith("GGGG"):  # private attributes: every odd group is removed (_walk)
                continue
            effective = _resolve(action, opts, enabled)
            if "X" in tag[:4] and tag[4:] == "XXXX" or tag[:2] in ("50", "60"):
                continue  # curves and overlays: whole groups, below
            if "X" in tag:
                mask = int("".join("0" if c == "X" else "F" for c in tag), 16)
                value = int(tag.replace("X", "0"), 16)
                self.masked.append((mask, value, effective))
            else:
                self.exact[int(tag, 16)] = effective
        self.exact.pop(0x00020003, None)  # file meta: rewritten whole
        self.exact.pop(_SOP_INSTANCE_UID, None)
        self.exact[_SOP_INSTANCE_UID] = "K" if self.options.retain_uids else "U"

    # ------------------------------------------------------------------ derived values

    def _digest(self, kind: bytes, value: str) -> bytes:
        return hmac.new(self.key, kind + b"\0" + value.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """The replacement of ``uid`` (the same for the same key)."""
        uid = uid.strip().rstrip("\0")
        if not uid:
            return uid
        return "2.25." + str(int.from_bytes(self._digest(b"uid", uid)[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        """The Patient ID (and Patient's Name) that replaces ``patient_id``."""
        return f"{self.options.patient_prefix}{self._digest(b'patient', patient_id.strip()).hex()[:10].upper()}"

    def date_offset(self, patient_id: str) -> dt.timedelta:
        """How far back the modified-dates option moves one patient's dates (1 to 3650 days)."""
        return dt.timedelta(days=1 + int.from_bytes(self._digest(b"dates", patient_id.strip())[:4], "big") % 3650)

    # ------------------------------------------------------------------ datasets

    def anonymize(self, ds: Dataset) -> Result:
        """De-identify ``ds`` in place (file meta included when present); see the module docstring."""
        burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        if burned == "YES" and not self.options.allow_burned_in:
            raise BurnedInAnnotation("the instance has burned-in annotation (Burned In Annotation = YES): "
                                     "its pixels may identify the patient; allow it explicitly to export")
        original_uid = str(ds.get("SOPInstanceUID", ""))
        patient_id = str(ds.get("PatientID", "") or "")
        run = _Run(Result("", original_uid, burned or "unknown"), patient_id)
        if self.options.retain_modified_dates:
            run.offset = self.date_offset(patient_id)
        self._walk(ds, run, top=True)
        pseudonym = self.pseudonym(patient_id)
        ds.PatientID = pseudonym
        ds.PatientName = pseudonym
        ds.PatientIdentityRemoved = "YES"
        enabled = self.options.enabled()
        method = "PS3.15 E.1 Basic Profile" + ("; " + ", ".join(enabled) if enabled else "") + "; pacskit"
        ds.DeidentificationMethod = method[:64]
        codes = Sequence()
        for name in ["basic", *enabled]:
            item = Dataset()
            item.CodeValue, item.CodeMeaning = _METHOD_CODES[name]
            item.CodingSchemeDesignator = "DCM"
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        ds.LongitudinalTemporalInformationModified = (
            "UNMODIFIED" if self.options.retain_full_dates else "MODIFIED" if self.options.retain_modified_dates
            else "REMOVED")
        run.result.sop_instance_uid = str(ds.get("SOPInstanceUID", ""))
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = run.result.sop_instance_uid
            for tag in list(meta.keys()):
                if tag in (0x00020016, 0x00020017, 0x00020018):  # Source / Sending / Receiving AE Title
                    del meta[tag]
        return run.result

    def _action(self, tag: int) -> str | None:
        action = self.exact.get(tag)
        if action is not None:
            return action
        for mask, value, masked_action in self.masked:
            if tag & mask == value:
                return masked_action
        return None

    def _walk(self, ds: Dataset, run: _Run, top: bool = False) -> None:
        result = run.result
        for tag in list(ds.keys()):
            group = tag >> 16
            if group & 1:  # private (and private creators)
                del ds[tag]
                result.private_removed += 1
                continue
            if group & 0xFF00 in (0x5000, 0x6000):  # curves, overlays
                del ds[tag]
                result.removed += 1
                continue
            if top and tag in (_PATIENT_ID, _PATIENT_NAME):
                continue  # pseudonyms, set by the caller
            action = self._action(tag)
            raw = ds._dict[BaseTag(tag)]  # noqa: SLF001 - the VR without decoding the value
            vr = raw.VR or _dictionary_vr(tag)
            if action is None or action == "K":
                if vr == "SQ":
                    for item in ds[tag].value or ():
                        self._walk(item, run)
                continue
            if action == "X":
                del ds[tag]
                result.removed += 1
            elif action == "Z":
                self._empty(ds, tag, vr)
                result.replaced += 1
            elif action == "D":
                self._dummy(ds, tag, vr, run)
                result.replaced += 1
            elif action in ("U", "U*"):
                self._uids(ds, tag, vr, run)
            elif action == "C":  # modified dates
                self._shift(ds, tag, vr, run)
                result.replaced += 1
            else:  # an action of an option not offered ("C" of clean options): the safe one
                del ds[tag]
                result.removed += 1

    @staticmethod
    def _empty(ds: Dataset, tag: int, vr: str) -> None:
        ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else None)

    def _dummy(self, ds: Dataset, tag: int, vr: str, run: _Run) -> None:
        if vr == "SQ":
            for item in ds[tag].value or ():
                self._walk(item, run)
            return
        if vr == "UI":
            self._uids(ds, tag, vr, run)
            return
        if run.offset is not None and vr in ("DA", "DT"):
            self._shift(ds, tag, vr, run)
            return
        ds[tag] = DataElement(tag, vr, _dummy_value(vr))

    def _uids(self, ds: Dataset, tag: int, vr: str, run: _Run) -> None:
        if vr == "SQ":
            for item in ds[tag].value or ():
                self._walk(item, run)
            return
        elem = ds[tag]
        if elem.VM == 0:
            return
        values = elem.value if elem.VM > 1 else [elem.value]
        new = [self.uid(str(v)) for v in values]
        elem.value = new if elem.VM > 1 else new[0]
        run.result.uids += len(new)

    def _shift(self, ds: Dataset, tag: int, vr: str, run: _Run) -> None:
        elem = ds[tag]
        if run.offset is None or vr not in ("DA", "DT") or not elem.value:
            if vr == "SQ":
                for item in elem.value or ():
                    self._walk(item, run)
            return  # times are kept: the shift is by whole days
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        shifted = [_shift_value(str(v), vr, run.offset) for v in values]
        elem.value = shifted if elem.VM > 1 else shifted[0]

    # ------------------------------------------------------------------ files

    def anonymize_file(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Result:
        """Read the Part 10 file ``src``, de-identify it, write ``dst`` (same transfer syntax, pixel data
        untouched). Raises :class:`AnonymizeError` (nothing written) or pydicom's read errors.

        The header is parsed and rewritten; the Pixel Data element is copied byte for byte from ``src``
        without being parsed (little-endian transfer syntaxes, Pixel Data last: the usual case; any
        other file goes through pydicom whole)."""
        try:
            chunks, result = self._rewrite_file(src)
        except NotHandled:
            pass
        else:
            tmp = f"{os.fspath(dst)}.part"
            try:
                with open(tmp, "wb", buffering=0) as out:
                    for start in range(0, len(chunks), 512):  # IOV_MAX is 1024
                        _write_all(out.fileno(), chunks[start:start + 512])
                os.replace(tmp, dst)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return result
        with open(src, "rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True, force=True)  # a bare dataset is accepted too
            pixels = _pixel_span(fh, ds)
        if pixels is None and _has_pixels_or_more(src, ds):
            ds = dcmread(src, force=True)
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise AnonymizeError(f"{src}: not a DICOM instance (no SOP Class / Instance UID)")
        meta = FileMetaDataset()
        for elem in getattr(ds, "file_meta", None) or ():
            meta.add(elem)
        if "TransferSyntaxUID" not in meta:
            implicit, little = ds.original_encoding
            meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta = meta
        result = self.anonymize(ds)
        tmp = f"{os.fspath(dst)}.part"
        try:
            with open(tmp, "wb") as out:
                ds.save_as(out, enforce_file_format=True)
                if pixels is not None:
                    start, stop = pixels
                    with open(src, "rb") as fh:
                        fh.seek(start)
                        remaining = stop - start
                        while remaining:
                            chunk = fh.read(min(remaining, 1 << 20))
                            if not chunk:
                                raise AnonymizeError(f"{src}: truncated Pixel Data")
                            out.write(chunk)
                            remaining -= len(chunk)
            os.replace(tmp, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return result


    def _rewrite_file(self, src: str | os.PathLike[str]) -> tuple[list[bytes | memoryview], Result]:
        """The byte-level path (:mod:`pacskit.dicom.deid_raw`): the new file's bytes and the result."""
        try:
            info = read_part10_header(src)
        except (ValueError, OSError) as exc:
            raise NotHandled(str(exc)) from None
        ts = info.transfer_syntax
        if ts in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99") or info.file_size > _RAW_LIMIT:
            raise NotHandled("big endian, deflated or large")
        with open(src, "rb") as fh:
            buf = fh.read()
        implicit = ts == "1.2.840.10008.1.2"
        pos = info.dataset_offset
        values = first_values(buf, pos, implicit, {_SOP_INSTANCE_UID, _PATIENT_ID, _BURNED_IN})
        patient_id = values.get(_PATIENT_ID, "")
        if "\ufffd" in patient_id:
            raise NotHandled("a Patient ID that is not ASCII: decoded with its character set")
        burned = values.get(_BURNED_IN, "").upper()
        if burned == "YES" and not self.options.allow_burned_in:
            raise BurnedInAnnotation("the instance has burned-in annotation (Burned In Annotation = YES): "
                                     "its pixels may identify the patient; allow it explicitly to export")
        original_uid = values.get(_SOP_INSTANCE_UID, info.sop_instance_uid)
        run = _Run(Result("", original_uid, burned or "unknown"), patient_id)
        if self.options.retain_modified_dates:
            run.offset = self.date_offset(patient_id)
        elements = Rewriter(self, run, buf, _dummy_value, _shift_value).dataset(pos, len(buf), implicit, top=True)
        added = self._identity(patient_id, implicit)
        kept = [(tag, chunk) for tag, chunk in elements if tag not in added]
        kept.extend(added.items())
        kept.sort(key=lambda pair: pair[0])
        new_uid = original_uid if self.options.retain_uids else self.uid(original_uid)
        run.result.sop_instance_uid = new_uid
        meta = encode_file_meta(info.sop_class_uid, new_uid, ts, self.implementation_class_uid,
                                self.implementation_version_name)
        return [meta, *(chunk for _tag, chunk in kept)], run.result

    def _identity(self, patient_id: str, implicit: bool) -> dict[int, bytes]:
        """The encoded pseudonyms and E.1.1 attributes (the dataset path sets the same)."""
        pseudonym = self.pseudonym(patient_id).encode("ascii")
        enabled = self.options.enabled()
        method = ("PS3.15 E.1 Basic Profile" + ("; " + ", ".join(enabled) if enabled else "") + "; pacskit")[:64]
        items = []
        for name in ["basic", *enabled]:
            code, meaning = _METHOD_CODES[name]
            items.append(b"".join([raw_encode(0x00080100, b"SH", code.encode(), implicit),
                                   raw_encode(0x00080102, b"SH", b"DCM", implicit),
                                   raw_encode(0x00080104, b"LO", meaning.encode(), implicit)]))
        codes = raw_header(0x00120064, b"SQ", 0xFFFFFFFF, implicit) + b"".join(
            _ITEM_OPEN + item + _ITEM_CLOSE for item in items) + _SEQ_CLOSE
        temporal = ("UNMODIFIED" if self.options.retain_full_dates else "MODIFIED" if self.options.retain_modified_dates
                    else "REMOVED")
        return {
            _PATIENT_NAME: raw_encode(_PATIENT_NAME, b"PN", pseudonym, implicit),
            _PATIENT_ID: raw_encode(_PATIENT_ID, b"LO", pseudonym, implicit),
            0x00120062: raw_encode(0x00120062, b"CS", b"YES", implicit),
            0x00120063: raw_encode(0x00120063, b"LO", method.encode(), implicit),
            0x00120064: codes,
            0x00280303: raw_encode(0x00280303, b"CS", temporal.encode(), implicit),
        }


def _write_all(fd: int, chunks: list[bytes | memoryview]) -> None:
    """``os.writev`` until every byte of ``chunks`` is written."""
    views = [memoryview(c) for c in chunks if len(c)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


_RAW_LIMIT = 256 << 20  # larger files: the dataset path (the byte path holds the file in memory)
_ITEM_OPEN = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_CLOSE = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_CLOSE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}


def _pixel_span(fh: Any, ds: Dataset) -> tuple[int, int] | None:
    """``(start, end)`` of a last, top-level Pixel Data element in a little-endian file, else None.

    ``fh`` is positioned where ``dcmread(stop_before_pixels=True)`` stopped (the element's start)."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts in ("", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):  # unknown, big endian, deflated
        return None
    implicit = ts == "1.2.840.10008.1.2"
    start = fh.tell()
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(12)
    if len(head) < 8:
        return None
    group, element = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
    if (group, element) not in _PIXEL_TAGS:
        return None
    if implicit:
        length, header = int.from_bytes(head[4:8], "little"), 8
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"UN", b"OL", b"OV"):
        length, header = int.from_bytes(head[8:12], "little"), 12
    else:
        length, header = int.from_bytes(head[6:8], "little"), 8
    if length != 0xFFFFFFFF:
        end = start + header + length
    else:  # encapsulated: items up to the sequence delimiter
        pos = start + header
        while True:
            fh.seek(pos)
            item = fh.read(8)
            if len(item) < 8:
                return None
            tag = (int.from_bytes(item[0:2], "little"), int.from_bytes(item[2:4], "little"))
            item_length = int.from_bytes(item[4:8], "little")
            pos += 8
            if tag == (0xFFFE, 0xE0DD):
                break
            if tag != (0xFFFE, 0xE000) or item_length == 0xFFFFFFFF:
                return None
            pos += item_length
        end = pos
    return (start, end) if end == size else None  # anything after Pixel Data: the whole-file path


def _has_pixels_or_more(src: str | os.PathLike[str], ds: Dataset) -> bool:
    """Whether ``dcmread(stop_before_pixels=True)`` left something unread."""
    with open(src, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        dcmread(fh, stop_before_pixels=True, force=True)
        return fh.tell() < size


def project_key(folder: str | os.PathLike[str], project: str) -> bytes:
    """The secret of ``project``, kept in ``<folder>/anonymize/<project>.key`` (created once, mode
    0600). Keep it: the same key maps the same UIDs and patients to the same values in every export."""
    import re
    import secrets

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", project):
        raise ValueError(f"project name {project!r}: letters, digits, '.', '_', '-' only")
    path = os.path.join(os.fspath(folder), "anonymize", f"{project}.key")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
    with open(path, "rb") as fh:
        key = fh.read().strip()
    if not key:
        raise ValueError(f"project key {path} is empty")
    return key


def _dictionary_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _dummy_value(vr: str) -> Any:
    if vr in ("PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE"):
        return _TEXT_DUMMY[: _MAX_LEN.get(vr, 64)]
    if vr == "CS":
        return "ANONYMIZED"
    if vr == "DA":
        return "19000101"
    if vr == "TM":
        return "000000"
    if vr == "DT":
        return "19000101000000"
    if vr == "AS":
        return "000Y"
    if vr in ("IS", "DS"):
        return "0"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return 0
    if vr == "UR":
        return ""
    return b"\0\0"


def _shift_value(value: str, vr: str, offset: dt.timedelta) -> str:
    value = value.strip()
    head = value[:8]
    try:
        day = dt.datetime.strptime(head, "%Y%m%d").date()
    except ValueError:
        return "19000101" if vr == "DA" else "19000101000000"  # not a full date: a dummy one
    return (day - offset).strftime("%Y%m%d") + value[8:]


__all__ = ["AnonymizeError", "Anonymizer", "BurnedInAnnotation", "Options", "Result", "project_key"]
