"""What the index keeps of an instance, read from its Part 10 file.

Only the attributes the index needs are decoded (pydicom ``specific_tags``, nothing after them, no
pixel data), so the cost does not depend on the size of the instance. Text values are decoded with the
instance's Specific Character Set (ISO 2022 escapes included) and kept as Unicode.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.charset import python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID

from pacskit.dicom.part10 import InflationLimit, inflate
from pacskit.dicom.uids import DEFLATED_IMAGE_FRAME_COMPRESSION, EXPLICIT_VR_LITTLE_ENDIAN
from pacskit.dicom.walker import Malformed, check_nesting
from pacskit.store.index import models as m
from pacskit.store.index.models import datetime_key, normalise_person_name

#: PS3.5 9.1: components of digits, no leading zeros, separated by dots.
UID_PATTERN = re.compile(r"\A(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*\Z")
UID_MAX = 64
#: The longest UID accepted from a peer. PS3.5 9.1 allows 64 characters, but legacy modalities send
#: longer ones, and Orthanc and DCMTK store them; beyond this a value is not a UID but garbage.
UID_LIMIT = m.UID_COLUMN
# never accepted in a UID, even leniently: anything but digits, dots and ASCII letters (spaces,
# control and non-ASCII characters, path separators, the value separator, wildcards, quotes, %, _)
_UNUSABLE_UID = re.compile(r"[^0-9A-Za-z.]")
HASH_CHUNK = 1 << 20

_PIXEL_DATA = 0x7FE00010

# keyword -> (field, maximum length or None for integers)
_TEXT_FIELDS: dict[str, tuple[str, int]] = {
    "PatientID": ("patient_id", m.LO),
    "IssuerOfPatientID": ("issuer_of_patient_id", m.LO),
    "PatientName": ("patient_name", m.PN),
    "PatientBirthDate": ("patient_birth_date", m.DA),
    "PatientSex": ("patient_sex", m.CS),
    "StudyDate": ("study_date", m.DA),
    "StudyTime": ("study_time", m.TM),
    "AccessionNumber": ("accession_number", m.SH),
    "StudyID": ("study_id", m.SH),
    "ReferringPhysicianName": ("referring_physician_name", m.PN),
    "StudyDescription": ("study_description", m.LO),
    "Modality": ("modality", m.CS),
    "SeriesDescription": ("series_description", m.LO),
    "BodyPartExamined": ("body_part_examined", m.CS),
    "AcquisitionDateTime": ("acquisition_datetime", m.DT),
}
_INT_FIELDS = {"SeriesNumber": "series_number", "InstanceNumber": "instance_number"}
_UID_FIELDS = {
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
}
_DATE_FIELDS = {"patient_birth_date", "study_date"}

#: Request Attributes Sequence (SERIES level): which request each series answers; its items'
#: AccessionNumber, RequestedProcedureID and ScheduledProcedureStepID are indexed (sequence matching)
REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
REQUEST_KEYS = ("AccessionNumber", "RequestedProcedureID", "ScheduledProcedureStepID")
MAX_REQUEST_ITEMS = 16  # items indexed per series; more is not a request list but noise

#: The tags read from each instance (plus Specific Character Set, which pydicom always adds).
INDEX_TAGS: list[int] = sorted(
    [tag_for_keyword(k)  # type: ignore[misc]
     for k in ["SpecificCharacterSet", *_TEXT_FIELDS, *_INT_FIELDS, *_UID_FIELDS]] + [REQUEST_ATTRIBUTES_SEQUENCE]
)


class InvalidInstance(ValueError):
    """The instance cannot be indexed: ``reason`` says why, ``tag`` (if any) names the attribute."""

    def __init__(self, reason: str, tag: int | None = None) -> None:
        self.reason = reason
        self.tag = tag
        super().__init__(f"{reason} {format_tag(tag)}" if tag is not None else reason)


class InstanceMismatch(InvalidInstance):
    """The dataset's SOP Class / Instance UID differs from the C-STORE command's (status 0xA900)."""


class UnparseableDataset(InvalidInstance):
    """The dataset does not parse to its end in its transfer syntax (truncated, or encoded in another
    one, e.g. Implicit VR bytes on an Explicit VR context): status 0xC000, nothing is kept.

    ``str()`` is short enough for an Error Comment; ``detail`` says what was found and where (byte
    offset in the dataset, transfer syntax), for the log.
    """

    def __init__(self, problem: Malformed, transfer_syntax: str) -> None:
        super().__init__(problem.reason + (" in" if problem.tag is not None else ""), problem.tag)
        self.offset = problem.offset
        self.detail = f"does not parse as {_syntax_name(transfer_syntax)}: {problem}"


def _syntax_name(transfer_syntax: str) -> str:
    name = UID(transfer_syntax).name
    return name if name and name != transfer_syntax else transfer_syntax


class InstanceTooLarge(InvalidInstance):
    """The dataset is beyond a size limit (a deflated dataset inflating too far): status 0xA700."""


#: What a stored deflated dataset may inflate to (PS3.5 A.5). A deflate bomb inflates about 1000:1;
#: this bounds the disk and memory one received instance can make us spend.
MAX_INFLATED = 256 * 1024 * 1024


def format_tag(tag: int) -> str:
    name = keyword_for_tag(tag) or "private"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {name}"


@dataclass(frozen=True, slots=True)
class InstanceAttributes:
    """The indexed attributes of one instance, decoded to Unicode and trimmed to the column sizes."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str | None = None
    specific_character_set: str | None = None  # raw, values joined with '\'
    source_ae: str | None = None  # (0002,0016) Source Application Entity Title of the file meta
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    referring_physician_name: str | None = None
    study_description: str | None = None
    series_number: int | None = None
    modality: str | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    instance_number: int | None = None
    acquisition_datetime: str | None = None
    #: (AccessionNumber, RequestedProcedureID, ScheduledProcedureStepID) of each Request Attributes item
    request_attributes: tuple[tuple[str | None, str | None, str | None], ...] = ()

    @property
    def patient_name_search(self) -> str | None:
        return normalise_person_name(self.patient_name)

    @property
    def acquisition_datetime_key(self) -> str | None:
        return datetime_key(self.acquisition_datetime)


def is_valid_uid(value: object) -> bool:
    """``value`` is a UID as PS3.5 9.1 defines it (what we create and what strict checks demand)."""
    return isinstance(value, str) and len(value) <= UID_MAX and UID_PATTERN.match(value) is not None


def is_usable_uid(value: object) -> bool:
    """``value`` is safe to store and look up as a UID, though maybe not PS3.5 9.1 (see :func:`check_uid`)."""
    return isinstance(value, str) and 0 < len(value) <= UID_LIMIT and _UNUSABLE_UID.search(value) is None


def uid_deviation(text: str) -> str | None:
    """Why ``text`` is not a PS3.5 9.1 UID (``None`` when it is): a component with a leading zero,
    a character other than digits and dots, an empty component, more than 64 characters."""
    if len(text) > UID_MAX:
        return f"longer than {UID_MAX} characters ({len(text)})"
    if UID_PATTERN.match(text) is not None:
        return None
    components = text.split(".")
    if any(not c for c in components):
        return "an empty component"
    if any(not c.isdigit() for c in components):
        return "a character other than digits and dots"
    return "a component with a leading zero"


def check_uid(value: object, tag: int, *, strict: bool = False) -> str:
    """``value`` as a UID string, or :class:`InvalidInstance` saying what is wrong with it.

    Be liberal where it is safe: a UID that breaks PS3.5 9.1 harmlessly (a component with a leading
    zero, a letter, up to :data:`UID_LIMIT` characters), as legacy modalities send and Orthanc and
    DCMTK store, is accepted (the caller warns, :func:`uid_deviation`); with ``strict`` it is refused.
    Always refused: an empty or multi-valued value, any character but digits, dots and ASCII letters
    (spaces, control characters, path separators, wildcards, quotes...), more than :data:`UID_LIMIT`
    characters. (Blob paths never come from UIDs; SQL takes them as bound parameters.)
    """
    if value is None or value == "":
        raise InvalidInstance("missing", tag)
    if isinstance(value, (list, MultiValue)):
        raise InvalidInstance("multi-valued UID", tag)
    text = str(value)
    if len(text) > (UID_MAX if strict else UID_LIMIT):
        raise InvalidInstance(f"UID longer than {UID_MAX if strict else UID_LIMIT} characters ({len(text)})", tag)
    if _UNUSABLE_UID.search(text) is not None or (strict and UID_PATTERN.match(text) is None):
        raise InvalidInstance(f"not a valid UID {text!r}", tag)
    return text


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, MultiValue)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\x00", "").strip()
    return text[:limit] or None


def _date(text: str | None) -> str | None:
    """DA as stored: 8 digits. The ACR-NEMA form YYYY.MM.DD is converted; anything else dropped."""
    if text is None:
        return None
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    return text if len(text) == 8 and text.isdigit() else None


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, MultiValue)):
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        number = int(str(value).strip())
    except ValueError:
        try:
            number = int(float(str(value).strip()))
        except ValueError:
            return None
    return number if -(2**31) <= number < 2**31 else None


def _charset(ds: Dataset) -> str | None:
    elem = ds.get("SpecificCharacterSet")
    if elem is None:
        return None
    value = elem if not hasattr(elem, "value") else elem.value
    if isinstance(value, (list, MultiValue)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value) if value is not None else ""
    return text.strip()[: m.CHARSET] or None


def attributes_from_dataset(ds: Dataset, transfer_syntax_uid: str | None = None,
                            source_ae: str | None = None) -> InstanceAttributes:
    """Build :class:`InstanceAttributes` from a decoded dataset; raises :class:`InvalidInstance`."""
    values: dict[str, Any] = {}
    for keyword, field in _UID_FIELDS.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        try:
            raw = ds[tag].value if tag in ds else None
        except Exception as exc:  # undecodable value
            raise InvalidInstance(f"unreadable value ({exc})", tag) from exc
        values[field] = check_uid(raw, tag)
    for keyword, (field, limit) in _TEXT_FIELDS.items():
        try:
            raw = ds[keyword].value if keyword in ds else None
        except Exception:  # a malformed optional value is not a reason to refuse the instance
            raw = None
        text = _text(raw, limit)
        if field in _DATE_FIELDS:
            text = _date(text)
        elif field == "study_time" and text is not None:
            text = text.replace(":", "") or None
        values[field] = text
    for keyword, field in _INT_FIELDS.items():
        try:
            raw = ds[keyword].value if keyword in ds else None
        except Exception:
            raw = None
        values[field] = _int(raw)
    values["request_attributes"] = _request_attributes(ds)
    return InstanceAttributes(
        transfer_syntax_uid=_text(transfer_syntax_uid, m.UI),
        specific_character_set=_charset(ds),
        source_ae=_text(source_ae, m.AE),
        **values,
    )


_TAG_FIELD: dict[int, tuple[str, str, int]] = {}  # tag -> (field, kind, limit); kind: uid/text/int
for _kw, _field in _UID_FIELDS.items():
    _TAG_FIELD[tag_for_keyword(_kw)] = (_field, "uid", UID_LIMIT)  # type: ignore[index]
for _kw, (_field, _limit) in _TEXT_FIELDS.items():
    _TAG_FIELD[tag_for_keyword(_kw)] = (_field, "text", _limit)  # type: ignore[index]
for _kw, _field in _INT_FIELDS.items():
    _TAG_FIELD[tag_for_keyword(_kw)] = (_field, "int", 0)  # type: ignore[index]
_CHARSET_TAG = 0x00080005
_PN_TAGS = frozenset({0x00100010, 0x00080090})  # PatientName, ReferringPhysicianName
#: Tags the ingest walk collects (:func:`pacskit.dicom.walker.check_nesting` ``collect``).
WALK_TAGS = frozenset(INDEX_TAGS)
_EXPECTED_VR: dict[int, bytes] = {t: dictionary_VR(t).encode() for t in WALK_TAGS}
# Character sets whose bytes never contain 0x5C (backslash) or 0x3D (=) inside a character, so values
# split and decode like ASCII: single-byte sets without code extensions, and UTF-8. Anything else
# (ISO 2022 escapes, GB18030, GBK, Shift JIS) is decoded by pydicom.
_SIMPLE_CHARSETS = {
    name: codec for name, codec in python_encoding.items()
    if not name.startswith("ISO 2022") and name not in ("ISO_IR 13", "GB18030", "GBK")
}


def attributes_from_walk(values: dict[int, tuple[bytes | None, bytes]], transfer_syntax_uid: str,
                         source_ae: str | None = None, *, little_endian: bool = True,
                         implicit_vr: bool = False) -> InstanceAttributes:
    """:class:`InstanceAttributes` from the raw top-level values of an ingest walk.

    The same values :func:`attributes_from_dataset` gives for the same file (tests compare the two
    over pydicom's corpus). Values whose VR is not the dictionary's, or whose character set needs code
    extensions, are handed to pydicom. Raises :class:`InvalidInstance`.
    """
    charset_raw = values.get(_CHARSET_TAG)
    charset_text = charset_raw[1].decode("ascii", "replace").strip(" \x00") if charset_raw else ""
    terms = [t.strip() for t in charset_text.split("\\")] if charset_text else [""]
    codec = _SIMPLE_CHARSETS.get(terms[0]) if len(terms) == 1 else None
    if codec is None or any(vr is not None and vr != _EXPECTED_VR[t] for t, (vr, _) in values.items()):
        return attributes_from_dataset(_raw_dataset(values, little_endian, implicit_vr), transfer_syntax_uid,
                                       source_ae)
    fields: dict[str, Any] = {}
    for tag, (field, kind, limit) in _TAG_FIELD.items():
        item = values.get(tag)
        if kind == "uid":
            raw = item[1].decode("ascii", "replace").rstrip(" \x00") if item else None
            if raw is not None and "\\" in raw:
                fields[field] = check_uid(raw.split("\\"), tag)
            else:
                fields[field] = check_uid(raw, tag)
            continue
        if item is None:
            fields[field] = None
            continue
        try:
            text = item[1].decode(codec)
        except UnicodeDecodeError:
            return attributes_from_dataset(_raw_dataset(values, little_endian, implicit_vr), transfer_syntax_uid,
                                           source_ae)
        parts = [v.rstrip(" \x00") for v in text.split("\\")]
        if tag in _PN_TAGS:  # as pydicom's PersonName: trailing empty component groups dropped
            parts = [v.rstrip("=") for v in parts]
        if kind == "int":
            fields[field] = _int(parts[0].strip()) if parts and parts[0].strip() else None
            continue
        value = _text(parts if len(parts) > 1 else parts[0], limit)
        if field in _DATE_FIELDS:
            value = _date(value)
        elif field == "study_time" and value is not None:
            value = value.replace(":", "") or None
        fields[field] = value
    if REQUEST_ATTRIBUTES_SEQUENCE in values:  # rare and nested: decoded by pydicom
        subset = {t: values[t] for t in (_CHARSET_TAG, REQUEST_ATTRIBUTES_SEQUENCE) if t in values}
        fields["request_attributes"] = _request_attributes(_raw_dataset(subset, little_endian, implicit_vr))
    return InstanceAttributes(
        transfer_syntax_uid=_text(transfer_syntax_uid, m.UI),
        specific_character_set=charset_text[: m.CHARSET] or None,
        source_ae=_text(source_ae, m.AE),
        **fields,
    )


def _request_attributes(ds: Dataset) -> tuple[tuple[str | None, str | None, str | None], ...]:
    """The indexed keys of each Request Attributes Sequence item (items with none of them skipped)."""
    try:
        elem = ds.get(REQUEST_ATTRIBUTES_SEQUENCE)
        items = list(elem.value) if elem is not None and elem.value else []
    except Exception:  # a malformed optional sequence is not a reason to refuse the instance
        return ()
    out: list[tuple[str | None, str | None, str | None]] = []
    for item in items[:MAX_REQUEST_ITEMS]:
        row: list[str | None] = []
        for keyword in REQUEST_KEYS:
            try:
                raw = item[keyword].value if keyword in item else None
            except Exception:
                raw = None
            row.append(_text(raw, m.SH))
        if any(v is not None for v in row):
            out.append((row[0], row[1], row[2]))
    return tuple(out)


def _raw_dataset(values: dict[int, tuple[bytes | None, bytes]], little_endian: bool, implicit_vr: bool) -> Dataset:
    """A pydicom Dataset of undecoded elements (decoded lazily by pydicom, with the character set)."""
    ds = Dataset()
    ds.set_original_encoding(implicit_vr, little_endian)
    for tag in sorted(values):
        vr, value = values[tag]
        if vr is not None and not vr.isalpha():  # bytes.isalpha: ASCII letters only
            raise InvalidInstance(f"invalid VR {vr!r}", tag)
        ds[tag] = RawDataElement(  # type: ignore[assignment]
            BaseTag(tag), vr.decode("ascii") if vr is not None else None, len(value), value, 0,
            implicit_vr, little_endian,
        )
    return ds


def _flags(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated dataset) for a transfer syntax; unknown ones are explicit LE."""
    if transfer_syntax == DEFLATED_IMAGE_FRAME_COMPRESSION:  # deflated frames, not a deflated dataset
        return False, True, False
    uid = UID(transfer_syntax)
    try:
        return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated
    except ValueError:
        return False, True, False


def scan_instance(path: str | os.PathLike[str], dataset_offset: int, transfer_syntax_uid: str,
                  source_ae: str | None = None, fh: BinaryIO | None = None) -> InstanceAttributes:
    """Prove the dataset parses, guard the nesting depth and read the indexed attributes, in one pass.

    What ingest runs on every received instance: :func:`pacskit.dicom.walker.check_nesting` walks
    the element headers to the last byte (raising :class:`~pacskit.dicom.walker.TooDeep`) and
    collects the raw values of :data:`WALK_TAGS` on the way; :func:`attributes_from_walk` decodes
    them. A deflated dataset is inflated (never beyond :data:`MAX_INFLATED`, the stream must end) and
    the result walked. ``fh``: ``path`` already open (see :func:`~pacskit.dicom.walker.check_nesting`). Raises :class:`UnparseableDataset` when the dataset does not parse to its end
    (truncated, not in its transfer syntax), :class:`InvalidInstance` for the rest.
    """
    implicit, little, deflated = _flags(transfer_syntax_uid)
    if deflated:  # walk the inflated dataset (explicit VR little endian), never more than MAX_INFLATED
        inflated = f"{os.fspath(path)}.inflated"
        try:
            with open(path, "rb") as src, open(inflated, "wb") as out:
                src.seek(dataset_offset)
                _inflate_or_refuse(src, out.write)
            walked = check_nesting(inflated, 0, EXPLICIT_VR_LITTLE_ENDIAN, collect=WALK_TAGS)
        finally:
            try:
                os.unlink(inflated)
            except FileNotFoundError:
                pass
    else:
        walked = check_nesting(path, dataset_offset, transfer_syntax_uid, collect=WALK_TAGS, fh=fh)
    if walked.problem is not None:
        raise UnparseableDataset(walked.problem, transfer_syntax_uid)
    if not walked.complete:  # not walked (cannot happen for what ingest hands in): pydicom reads it
        return read_index_attributes(path, dataset_offset)
    return attributes_from_walk(walked.values, transfer_syntax_uid, source_ae,
                                little_endian=little, implicit_vr=implicit)


def _inflate_or_refuse(source: BinaryIO, write: Any) -> None:
    try:
        inflate(source, write, MAX_INFLATED)
    except InflationLimit as exc:
        raise InstanceTooLarge(str(exc)) from None
    except zlib.error as exc:
        raise InvalidInstance(f"corrupt deflated dataset: {exc}") from None


def read_index_attributes(path: str | os.PathLike[str] | BinaryIO,
                          offset: int | None = None) -> InstanceAttributes:
    """Read the indexed attributes of the Part 10 file ``path`` (a path or a binary file object).

    Without ``offset`` (or for a file object) pydicom parses the file meta and the dataset (only :data:`INDEX_TAGS`, stopping
    before the pixel data). With ``offset`` (``ReceivedDataset.offset``: where the dataset starts) the
    File Meta Information is read for the transfer syntax and the dataset is parsed from ``offset``.
    Raises :class:`InvalidInstance` for unreadable files and missing or malformed UIDs.
    """
    try:
        if offset is None or hasattr(path, "read"):
            ds = dcmread(path, stop_before_pixels=True, specific_tags=list(INDEX_TAGS))
            meta = ds.file_meta
        else:
            ds, meta = _read_from_offset(path, offset)  # type: ignore[arg-type]
    except InvalidInstance:
        raise
    except InvalidDicomError as exc:
        raise InvalidInstance(f"not a DICOM Part 10 file: {exc}") from exc
    except Exception as exc:  # truncated, malformed: pydicom raises many kinds
        raise InvalidInstance(f"unreadable DICOM file: {type(exc).__name__}: {exc}") from exc
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        raise InvalidInstance("file meta information lacks", 0x00020010)
    return attributes_from_dataset(ds, str(ts), meta.get("SourceApplicationEntityTitle"))


def _read_from_offset(path: str | os.PathLike[str], offset: int) -> tuple[Dataset, Dataset]:
    meta = read_file_meta_info(path)
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        raise InvalidInstance("file meta information lacks", 0x00020010)
    implicit, little, deflated = _flags(str(ts))
    with open(path, "rb") as fh:
        fh.seek(offset)
        source: BinaryIO = fh
        if deflated:
            inflated = io.BytesIO()
            _inflate_or_refuse(fh, inflated.write)
            inflated.seek(0)
            source = inflated
        ds = read_dataset(
            source, implicit, little,
            stop_when=lambda tag, vr, length: tag >= _PIXEL_DATA,
            specific_tags=list(INDEX_TAGS),
        )
    return ds, meta


def sha256_stream(fh: BinaryIO, chunk_size: int = HASH_CHUNK) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of what remains of ``fh``, read in ``chunk_size`` pieces."""
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(chunk_size):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: str | os.PathLike[str], chunk_size: int = HASH_CHUNK) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB chunks (constant memory whatever the file size)."""
    with open(path, "rb", buffering=0) as fh:
        return sha256_stream(fh, chunk_size)[0]  # type: ignore[arg-type]
