"""The query engine: one C-FIND identifier -> one SQL SELECT over the index, streamed.

:func:`compile_find` turns an identifier (a pydicom ``Dataset``), its Query/Retrieve level and the
information model into a :class:`FindQuery`: one SQLAlchemy Core ``SELECT`` with every value bound as a
parameter, the same statement on SQLite, PostgreSQL and MariaDB (only the wildcard operator is compiled
per dialect: ``LIKE ... ESCAPE '!'`` on PostgreSQL and MariaDB, ``GLOB`` on SQLite, whose ``LIKE`` ignores
case). :func:`find` runs it on a streaming cursor (server-side on PostgreSQL and MariaDB, rows fetched
``page_size`` at a time) and yields one response identifier per match, so memory does not depend on the
number of matches.

Matching (PS3.4 C.2.2.2), on the attributes the index keeps (:data:`KEYS`):

* universal: an empty value, or a value of only ``*``, matches everything (NULLs included);
* single value: exact and case-sensitive, after removing leading and trailing spaces;
* wildcard: ``*`` (any run of characters) and ``?`` (one character); every other character is literal,
  including SQL's ``%``, ``_``, ``\\`` and ``!`` (the escape character we use);
* list of UIDs: ``UID1\\UID2\\...`` matches any of them (wildcards are not allowed in UIDs);
* range, DA and TM: ``A-B``, ``A-``, ``-B``; DA also accepts the ACR-NEMA form ``YYYY.MM.DD`` and TM
  ``HH:MM:SS.frac``. A partial time is the earliest instant it names (``-12`` includes ``120000`` but
  not ``120000.000001``, like DCMTK). When both StudyDate and StudyTime have values they are matched as
  one date-time (``20240105-20240107`` + ``1000-1800``: from 5 January 10:00 to 7 January 18:00);
* PN: case-insensitive, on the normalised search form (:func:`pacskit.store.index.models.normalise_person_name`:
  NFC, upper-case, trailing empty components dropped). A value without ``=`` is matched against the whole
  name and against each component group (so ``Yamada^Tarou`` and ``山田^太郎`` both find
  ``Yamada^Tarou=山田^太郎=やまだ^たろう``); with wildcards, ``*`` may span a group separator. The same
  for ReferringPhysicianName (``studies.referring_physician_name_search``).
* ModalitiesInStudy: any of the values equals the Modality of one of the study's series.

Hierarchical queries (the default) need a single value for the unique key of every level above the
Query/Retrieve level (PatientID in the Patient Root model, StudyInstanceUID, SeriesInstanceUID); relational
queries (negotiated by the peer) do not. Keys of higher levels that are not unique keys are matched too
(DCMTK's ``dcmqrscp`` ignores them; matching them is what users expect). Keys of
lower levels than the Query/Retrieve level, and keys we know nothing about, are returned empty.

Return keys: indexed keys and the counts (``NumberOf...Related...``, ModalitiesInStudy,
SOPClassesInStudy) come from the index; any other requested key is read from the stored file of one
instance of the matching entity (the instance itself at IMAGE level; the header only, never the pixel
data) and returned empty when the file does not have it. Such keys are not matched.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.charset import decode_element
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Engine,
    Select,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import FunctionElement

from pacskit.dicom.codec import encode_dataset
from pacskit.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacskit.dicom.vr import CHARSET_VRS, LONG_VR_NAMES, TEXT_VRS
from pacskit.store.index.models import (
    Instance,
    Patient,
    Series,
    SeriesRequest,
    Study,
    datetime_key,
    normalise_person_name,
    starts_with,
)

if TYPE_CHECKING:
    from pacskit.store.datastore import DataStore

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT = "PATIENT"
STUDY_ROOT = "STUDY"
#: information model name -> its levels, top down
MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}
LEVEL_ORDER = {"PATIENT": 0, "STUDY": 1, "SERIES": 2, "IMAGE": 3}

STATUS_IDENTIFIER_MISMATCH = 0xA900  # the identifier does not fit the SOP class (structure)
STATUS_UNABLE_TO_PROCESS = 0xC000  # a value we cannot understand
STATUS_OUT_OF_RESOURCES = 0xA700  # more matches than the configured cap

_LIKE_ESCAPE = "!"
_NO_VALIDATION = pydicom_config.IGNORE
_QR_LEVEL = 0x00080052
_CHARSET = 0x00080005


class InvalidQuery(ValueError):
    """The identifier cannot be answered: ``status`` is the C-FIND failure status, ``tag`` the culprit."""

    def __init__(self, status: int, comment: str, tag: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.tag = tag


class TooManyMatches(Exception):
    """More matches than ``max_results`` (raised before the first response is yielded)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} matches; narrow the query")
        self.limit = limit


# --- the keys the index answers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """An attribute the index matches on and/or returns.

    ``kind``: ``uid``, ``text``, ``pn``, ``date``, ``time``, ``datetime``, ``int``, ``modalities`` (matched), or
    ``count`` / ``sop_classes`` (returned only). ``column`` is what is returned; ``search`` what is
    matched when it differs (the normalised person name).
    """

    keyword: str
    level: str
    kind: str
    column: Any = None
    search: Any = None
    unique: bool = False

    @property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None
        return tag


def _sum_over_studies(column: Any) -> Any:
    return (
        select(func.coalesce(func.sum(column), 0))
        .where(Study.patient_fk == Patient.pk)
        .correlate(Patient)
        .scalar_subquery()
    )


_KEY_LIST = [
    # PATIENT
    Key("PatientID", "PATIENT", "text", Patient.patient_id, unique=True),
    Key("IssuerOfPatientID", "PATIENT", "text", Patient.issuer_of_patient_id),
    Key("PatientName", "PATIENT", "pn", Patient.patient_name, Patient.patient_name_search),
    Key("PatientBirthDate", "PATIENT", "date", Patient.patient_birth_date),
    Key("PatientSex", "PATIENT", "text", Patient.patient_sex),
    Key("NumberOfPatientRelatedStudies", "PATIENT", "count", Patient.num_studies),
    Key("NumberOfPatientRelatedSeries", "PATIENT", "count", _sum_over_studies(Study.num_series)),
    Key("NumberOfPatientRelatedInstances", "PATIENT", "count", _sum_over_studies(Study.num_instances)),
    # STUDY
    Key("StudyInstanceUID", "STUDY", "uid", Study.study_instance_uid, unique=True),
    Key("StudyDate", "STUDY", "date", Study.study_date),
    Key("StudyTime", "STUDY", "time", Study.study_time),
    Key("AccessionNumber", "STUDY", "text", Study.accession_number),
    Key("StudyID", "STUDY", "text", Study.study_id),
    Key("ReferringPhysicianName", "STUDY", "pn", Study.referring_physician_name, Study.referring_physician_name_search),
    Key("StudyDescription", "STUDY", "text", Study.study_description),
    Key("ModalitiesInStudy", "STUDY", "modalities", Study.modalities_in_study),
    Key("NumberOfStudyRelatedSeries", "STUDY", "count", Study.num_series),
    Key("NumberOfStudyRelatedInstances", "STUDY", "count", Study.num_instances),
    Key("SOPClassesInStudy", "STUDY", "sop_classes"),
    # SERIES
    Key("SeriesInstanceUID", "SERIES", "uid", Series.series_instance_uid, unique=True),
    Key("Modality", "SERIES", "text", Series.modality),
    Key("SeriesNumber", "SERIES", "int", Series.series_number),
    Key("SeriesDescription", "SERIES", "text", Series.series_description),
    Key("BodyPartExamined", "SERIES", "text", Series.body_part_examined),
    Key("NumberOfSeriesRelatedInstances", "SERIES", "count", Series.num_instances),
    Key("RequestAttributesSequence", "SERIES", "sequence"),  # matched on series_requests, returned from files
    # IMAGE
    Key("SOPInstanceUID", "IMAGE", "uid", Instance.sop_instance_uid, unique=True),
    Key("SOPClassUID", "IMAGE", "uid", Instance.sop_class_uid),
    Key("InstanceNumber", "IMAGE", "int", Instance.instance_number),
    Key("AcquisitionDateTime", "IMAGE", "datetime", Instance.acquisition_datetime, Instance.acquisition_datetime_key),
]
#: keyword -> Key, for every attribute the index matches or returns
KEYS: dict[str, Key] = {k.keyword: k for k in _KEY_LIST}
_KEYS_BY_TAG: dict[int, Key] = {k.tag: k for k in _KEY_LIST}
_UNIQUE: dict[str, Key] = {k.level: k for k in _KEY_LIST if k.unique}
_LEVEL_TABLE = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}


def key_level(key: Key, model: str) -> str:
    """The level of ``key`` in ``model``: in the Study Root model patient attributes are study attributes."""
    if model == STUDY_ROOT and key.level == "PATIENT":
        return "STUDY"
    return key.level


# --- wildcard matching, compiled per dialect -------------------------------------------------------


class dicom_wildcard(FunctionElement[bool]):  # noqa: N801 - an SQL construct, named like a function
    """``column`` matches a DICOM wildcard pattern: ``LIKE ... ESCAPE '!'``, or ``GLOB`` on SQLite."""

    type = Boolean()
    name = "dicom_wildcard"
    inherit_cache = True


@compiles(dicom_wildcard)
def _compile_like(element: dicom_wildcard, compiler: Any, **kw: Any) -> str:
    column, like_pattern, _ = element.clauses.clauses
    return compiler.process(column.like(like_pattern, escape=_LIKE_ESCAPE), **kw)


@compiles(dicom_wildcard, "sqlite")
def _compile_glob(element: dicom_wildcard, compiler: Any, **kw: Any) -> str:
    column, _, glob_pattern = element.clauses.clauses
    return compiler.process(column.op("GLOB")(glob_pattern), **kw)


def like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern with escape ``!`` (``%``, ``_``, ``!`` literal)."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_!":
            out.append(_LIKE_ESCAPE + ch)
        else:
            out.append(ch)
    return "".join(out)


def glob_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as an SQLite GLOB pattern (``[`` is the only other metacharacter)."""
    return pattern.replace("[", "[[]")


def has_wildcards(value: str) -> bool:
    return "*" in value or "?" in value


def wildcard_match(column: Any, pattern: str) -> ColumnElement[bool]:
    """``column`` matches the DICOM pattern; a literal prefix is also given as an index-friendly range."""
    if pattern.strip("*") == "":
        return true()  # '' or only '*': universal matching, empty values included
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    prefix = pattern[:cut]
    if cut == len(pattern):
        return column == pattern
    if pattern == prefix + "*":
        return starts_with(column, prefix)
    condition = dicom_wildcard(column, literal(like_pattern(pattern)), literal(glob_pattern(pattern)))
    return and_(starts_with(column, prefix), condition) if prefix else condition


# --- values ----------------------------------------------------------------------------------------


def _values(elem: DataElement) -> list[str]:
    """The element's values as stripped strings ([] when empty: universal matching)."""
    value = elem.value
    if value is None or value == "" or (isinstance(value, (list, MultiValue)) and len(value) == 0):
        return []
    items = list(value) if isinstance(value, (list, MultiValue)) else [value]
    texts = [str(v).replace("\x00", "").strip() for v in items]
    if all(t == "" for t in texts):
        return []
    return texts


def _bad_value(elem: DataElement, why: str) -> InvalidQuery:
    name = keyword_for_tag(elem.tag) or f"({elem.tag.group:04X},{elem.tag.element:04X})"
    return InvalidQuery(STATUS_UNABLE_TO_PROCESS, f"{name}: {why}", int(elem.tag))


def parse_date(text: str) -> str:
    """A DA value as 8 digits (the ACR-NEMA form YYYY.MM.DD accepted); ``ValueError`` if not a date."""
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"not a date: {text!r}")
    dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))  # calendar check
    return text


def parse_time(text: str) -> str:
    """A TM value without colons (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.F{1,6}``); ``ValueError`` if not."""
    if ":" in text:  # ACR-NEMA HH:MM:SS.frac
        text = text.replace(":", "")
    whole, dot, frac = text.partition(".")
    if (
        len(whole) not in (2, 4, 6)
        or not whole.isdigit()
        or (dot and (len(whole) != 6 or not 1 <= len(frac) <= 6 or not frac.isdigit()))
    ):
        raise ValueError(f"not a time: {text!r}")
    hh, mm, ss = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"not a time: {text!r}")
    return text


def time_lower(text: str) -> str:
    """Lower bound for string comparison with stored partial times: trailing zeros name no later time."""
    return text.rstrip("0").rstrip(".").rstrip("0")


def time_upper(text: str) -> str:
    """Upper bound: a partial time is its earliest instant, so pad with zeros to HHMMSS.ffffff."""
    whole, _, frac = text.partition(".")
    return whole.ljust(6, "0") + "." + frac.ljust(6, "0")


def _split_range(text: str, elem: DataElement) -> tuple[str | None, str | None]:
    if text.count("-") > 1:
        raise _bad_value(elem, f"bad range {text!r}")
    if "-" not in text:
        return text, text
    lo, _, hi = text.partition("-")
    if not lo and not hi:
        raise _bad_value(elem, "a range needs at least one end")
    return lo or None, hi or None


def date_range(elem: DataElement) -> tuple[str | None, str | None] | None:
    """(lower, upper) as 8-digit strings, either open (None); None for universal matching."""
    values = _values(elem)
    if not values:
        return None
    if len(values) > 1:
        raise _bad_value(elem, "one date or date range expected")
    lo, hi = _split_range(values[0], elem)
    try:
        lo = parse_date(lo) if lo else None
        hi = parse_date(hi) if hi else None
    except ValueError as exc:
        raise _bad_value(elem, str(exc)) from None
    return lo, hi


def time_range(elem: DataElement) -> tuple[str | None, str | None] | None:
    """(lower, upper) as TM without colons, either open (None); None for universal matching."""
    values = _values(elem)
    if not values:
        return None
    if len(values) > 1:
        raise _bad_value(elem, "one time or time range expected")
    lo, hi = _split_range(values[0], elem)
    try:
        lo = parse_time(lo) if lo else None
        hi = parse_time(hi) if hi else None
    except ValueError as exc:
        raise _bad_value(elem, str(exc)) from None
    return lo, hi


_DT_VALUE = r"\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?(?:[+-]\d{4})?"
_DT_RANGE = re.compile(rf"\A({_DT_VALUE})?-({_DT_VALUE})?\Z")


def datetime_range(elem: DataElement) -> tuple[str | None, str | None] | None:
    """(lower, upper) in the form :func:`~pacskit.store.index.models.datetime_key` gives, either open (None);
    None for universal matching. A value that is one DT is a single value, so ``20240105-0500`` is 5
    January at UTC-5, not a range; ``20240105-0500-20240106`` is a range."""
    values = _values(elem)
    if not values:
        return None
    if len(values) > 1:
        raise _bad_value(elem, "one date-time or date-time range expected")
    text = values[0]
    single = datetime_key(text)
    if single is not None:
        return single, single
    m = _DT_RANGE.match(text)
    if m is None or not (m.group(1) or m.group(2)):
        raise _bad_value(elem, f"not a date-time or date-time range: {text!r}")
    lo = datetime_key(m.group(1)) if m.group(1) else None
    hi = datetime_key(m.group(2)) if m.group(2) else None
    if (m.group(1) and lo is None) or (m.group(2) and hi is None):
        raise _bad_value(elem, f"not a date-time range: {text!r}")
    return lo, hi


def _time_ge(column: Any, lower: str) -> ColumnElement[bool]:
    return column >= time_lower(lower)


def _time_le(column: Any, upper: str) -> ColumnElement[bool]:
    return column <= time_upper(upper)


def _date_condition(column: Any, rng: tuple[str | None, str | None]) -> ColumnElement[bool]:
    lo, hi = rng
    if lo is not None and lo == hi:
        return column == lo
    parts = []
    if lo is not None:
        parts.append(column >= lo)
    if hi is not None:
        parts.append(column <= hi)
    return and_(*parts)


def _time_condition(column: Any, rng: tuple[str | None, str | None]) -> ColumnElement[bool]:
    lo, hi = rng
    parts = []
    if lo is not None:
        parts.append(_time_ge(column, lo))
    if hi is not None:
        parts.append(_time_le(column, hi))
    return and_(*parts)


def combined_datetime_condition(
    date_col: Any, time_col: Any, dates: tuple[str | None, str | None], times: tuple[str | None, str | None]
) -> ColumnElement[bool]:
    """StudyDate + StudyTime as one date-time range (PS3.4 C.2.2.2.5.1)."""
    d1, d2 = dates
    t1, t2 = times
    parts = []
    if d1 is not None:
        if t1 is None:
            parts.append(date_col >= d1)
        else:
            parts.append(or_(date_col > d1, and_(date_col == d1, _time_ge(time_col, t1))))
    elif t1 is not None:
        parts.append(date_col.is_not(None))
    if d2 is not None:
        if t2 is None:
            parts.append(date_col <= d2)
        else:
            parts.append(or_(date_col < d2, and_(date_col == d2, _time_le(time_col, t2))))
    return and_(*parts) if parts else true()


def _pn_condition(column: Any, value: str) -> ColumnElement[bool]:
    """Case-insensitive PN matching on the normalised search column (see the module docstring)."""
    if value.strip("*") == "" and value:
        return true()
    norm = normalise_person_name(value) or ""
    if has_wildcards(value) and value.endswith("*") and not norm.endswith("*"):
        norm += "*"  # normalisation dropped trailing '^' before the final '*'
    whole = wildcard_match(column, norm)
    if "=" in norm:
        return whole
    options = [whole]
    if not norm.endswith("*"):  # "DOE*" already covers "DOE*=*"
        options.append(wildcard_match(column, norm + "=*"))
    if not norm.isascii():
        # an ideographic or phonetic group: look in the other component groups too
        options += [wildcard_match(column, "*=" + norm), wildcard_match(column, "*=" + norm + "=*")]
    return or_(*options)


# --- compiling an identifier -----------------------------------------------------------------------


@dataclass(slots=True)
class ReturnKey:
    """How one requested key of the response is filled."""

    tag: int
    vr: str
    source: str  # "column" | "sop_classes" | "header" | "empty" | "level"
    label: str | None = None  # the SELECT label (source == "column")
    kind: str = ""


@dataclass(slots=True)
class FindQuery:
    """A compiled C-FIND: the statement and how to build each response from a row."""

    level: str
    model: str
    statement: Select[Any]
    returns: list[ReturnKey]
    header_tags: list[int] = field(default_factory=list)
    charset: list[str] = field(default_factory=list)  # the identifier's Specific Character Set
    relational: bool = False
    #: some requested keys are not supported for matching (unknown, private, of a lower level, or
    #: not indexed but given a value): the Pending status is then 0xFF01
    unsupported: bool = False


def query_level(identifier: Dataset, model: str) -> str:
    """The Query/Retrieve Level, checked against the model (``InvalidQuery`` 0xA900 otherwise)."""
    elem = identifier.get(_QR_LEVEL)
    level = str(elem.value).strip().upper() if elem is not None and elem.value else ""
    if not level:
        raise InvalidQuery(STATUS_IDENTIFIER_MISMATCH, "QueryRetrieveLevel missing", _QR_LEVEL)
    if level not in MODEL_LEVELS[model]:
        name = "Patient Root" if model == PATIENT_ROOT else "Study Root"
        raise InvalidQuery(
            STATUS_IDENTIFIER_MISMATCH, f"QueryRetrieveLevel {level} is not a {name} level", _QR_LEVEL
        )
    return level


def _charset_of(identifier: Dataset) -> list[str]:
    """The identifier's Specific Character Set terms (``[]`` when absent: the default repertoire)."""
    raw = identifier.get_item(_CHARSET)
    if raw is None:
        return []
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace").split("\\")
    if not value:
        return []
    items = list(value) if isinstance(value, (list, MultiValue)) else [value]
    terms = [str(v).strip() for v in items]
    return terms if any(terms) else []




def _decoded_elements(identifier: Dataset, charset: list[str] | None = None) -> list[DataElement]:
    """The identifier's elements in tag order, text decoded with its Specific Character Set (or with
    ``charset``: a sequence item has the character set of the dataset it is in).

    Raw (received) text elements are decoded here without pydicom's value validation: query values
    such as ``C*`` or ``20240101-`` are valid C-FIND values but not valid CS / DA values, and pydicom
    would log a warning for each. Other elements (sequences, binary VRs) are converted by pydicom.
    Values that are already ``str`` (a dataset built in Python) are used as they are.
    """
    if charset is None:
        charset = _charset_of(identifier)
    elements = []
    for tag in sorted(identifier.keys()):  # answers are encoded in this (ascending tag) order
        try:
            raw = identifier.get_item(tag)
            vr = getattr(raw, "VR", None) or (dictionary_VR(tag) if keyword_for_tag(tag) else None)
            if isinstance(raw, RawDataElement) and vr in TEXT_VRS:
                elem = DataElement(tag, vr, raw.value, validation_mode=_NO_VALIDATION)
                decode_element(elem, charset or ["ISO_IR 6"])
                if isinstance(elem.value, bytes):  # decode_element leaves empty values as b""
                    elem.value = elem.value.decode("ascii", errors="replace")
            else:
                elem = identifier[tag]
            _ = elem.value
        except Exception as exc:  # an unknown character set, a malformed IS/DS value, ...
            name = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            raise InvalidQuery(STATUS_UNABLE_TO_PROCESS, f"{name}: cannot decode ({exc})"[:64], int(tag)) from None
        elements.append(elem)
    return elements


def compile_find(identifier: Dataset, model: str, *, relational: bool = False) -> FindQuery:
    """Compile a C-FIND identifier for ``model`` (:data:`PATIENT_ROOT` / :data:`STUDY_ROOT`).

    Raises :class:`InvalidQuery` (0xA900: wrong structure, e.g. no level or a missing unique key of a
    higher level in a hierarchical query; 0xC000: a value that is not valid for its VR).
    """
    if model not in MODEL_LEVELS:
        raise ValueError(f"unknown information model {model!r}")
    level = query_level(identifier, model)
    depth = LEVEL_ORDER[level]
    elements = _decoded_elements(identifier)

    table = _LEVEL_TABLE[level]
    conditions: list[ColumnElement[bool]] = []
    columns: list[Any] = [table.pk.label("_pk")]
    returns: list[ReturnKey] = []
    header_tags: list[int] = []
    seen_keys: dict[str, DataElement] = {}
    unsupported = False

    for elem in elements:
        tag = int(elem.tag)
        if tag == _QR_LEVEL:
            returns.append(ReturnKey(tag, "CS", "level"))
            continue
        if tag == _CHARSET or elem.tag.element == 0 or elem.tag.group in (0x0000, 0x0002):
            continue  # the character set is chosen for the answer; group lengths are never returned
        vr = elem.VR
        key = _KEYS_BY_TAG.get(tag)
        if key is not None and LEVEL_ORDER[key_level(key, model)] <= depth:
            # the answer is built from the index in the key's own VR, whatever VR the caller sent
            # (explicit VR: ModalitiesInStudy sent as IS must not be answered as IS "CT")
            vr = dictionary_VR(tag)
            seen_keys[key.keyword] = elem
            if key.kind == "sequence":
                returns.append(ReturnKey(tag, vr, "header"))
                header_tags.append(tag)
                unsupported |= _sequence_keys_unmatched(elem)
            elif key.kind != "sop_classes":
                label = f"k{len(columns)}"
                columns.append(key.column.label(label))
                returns.append(ReturnKey(tag, vr, "column", label, key.kind))
            else:
                returns.append(ReturnKey(tag, vr, "sop_classes"))
            continue
        if key is not None or elem.tag.is_private or not keyword_for_tag(tag):
            returns.append(ReturnKey(tag, vr, "empty"))  # a key of a lower level, private, unknown
            unsupported = True
            continue
        returns.append(ReturnKey(tag, vr, "header"))
        header_tags.append(tag)
        if vr != "SQ" and _values(elem):
            unsupported = True  # returned from the files, not matched

    # hierarchical: a single value for the unique key of each level above
    if not relational:
        for upper in MODEL_LEVELS[model]:
            if LEVEL_ORDER[upper] >= depth:
                break
            unique = _UNIQUE[upper]
            elem = seen_keys.get(unique.keyword)
            values = _values(elem) if elem is not None else []
            if len(values) != 1 or has_wildcards(values[0]):
                raise InvalidQuery(
                    STATUS_IDENTIFIER_MISMATCH,
                    f"{level} query needs one {unique.keyword} value (hierarchical)",
                    unique.tag,
                )

    combined = False
    date_elem, time_elem = seen_keys.get("StudyDate"), seen_keys.get("StudyTime")
    if date_elem is not None and time_elem is not None:
        dates, times = date_range(date_elem), time_range(time_elem)
        if dates is not None and times is not None:
            conditions.append(combined_datetime_condition(Study.study_date, Study.study_time, dates, times))
            combined = True

    for keyword, elem in seen_keys.items():
        key = KEYS[keyword]
        if combined and keyword in ("StudyDate", "StudyTime"):
            continue
        condition = _condition(key, elem)
        if condition is not None:
            conditions.append(condition)

    if header_tags:
        columns.append(_representative_blob(level).label("_blob"))

    # No ORDER BY: the planner is free to use the index that suits the conditions, and rows stream
    # in whatever order it finds them (C-FIND answers are unordered).
    statement = select(*columns).select_from(_joined(level)).where(*conditions)
    return FindQuery(level, model, statement, returns, header_tags, _charset_of(identifier), relational,
                     unsupported)


#: Request Attributes Sequence item keys -> their series_requests column (sequence matching)
_REQUEST_COLUMNS = {
    "AccessionNumber": SeriesRequest.accession_number,
    "RequestedProcedureID": SeriesRequest.requested_procedure_id,
    "ScheduledProcedureStepID": SeriesRequest.scheduled_procedure_step_id,
}


def _query_item(elem: DataElement) -> Dataset | None:
    """The one item of a sequence key (PS3.4 C.2.2.2.6), or None: an empty sequence is universal."""
    items = list(elem.value or [])
    if len(items) > 1:
        raise _bad_value(elem, "a sequence key has at most one item")
    return items[0] if items else None


def _sequence_keys_unmatched(elem: DataElement) -> bool:
    """Whether the item asks to match keys the index does not hold (answered Pending 0xFF01)."""
    item = _query_item(elem)
    if item is None:
        return False
    return any(e.keyword not in _REQUEST_COLUMNS and e.VR != "SQ" and _values(e) for e in item)


def _request_condition(elem: DataElement) -> ColumnElement[bool] | None:
    """Sequence matching on the Request Attributes Sequence: a series matches when one of its items
    matches every key of the query item (single value, wildcard, universal; PS3.4 C.2.2.2.6)."""
    item = _query_item(elem)
    if item is None:
        return None
    parts = []
    for keyword, column in _REQUEST_COLUMNS.items():
        if keyword not in item:
            continue
        values = _values(item[keyword])
        if not values or any(v.strip("*") == "" for v in values):
            continue  # universal
        options = [wildcard_match(column, v) for v in values]
        parts.append(or_(*options) if len(options) > 1 else options[0])
    if not parts:
        return None
    return exists().where(SeriesRequest.series_fk == Series.pk, *parts).correlate(Series)


def _joined(level: str) -> Any:
    """The FROM clause of a level: its table joined to the tables of every level above."""
    joined: Any = Patient
    if LEVEL_ORDER[level] >= 1:
        joined = Study.__table__.join(Patient.__table__, Study.patient_fk == Patient.pk)
    if LEVEL_ORDER[level] >= 2:
        joined = Series.__table__.join(joined, Series.study_fk == Study.pk)
    if LEVEL_ORDER[level] >= 3:
        joined = Instance.__table__.join(joined, Instance.series_fk == Series.pk)
    return joined


def _representative_blob(level: str) -> Any:
    """The blob key of one instance of the matched entity (for keys read from file headers)."""
    if level == "IMAGE":
        return Instance.blob_key
    inner = select(Instance.blob_key)
    if level == "SERIES":
        inner = inner.where(Instance.series_fk == Series.pk).correlate(Series)
    elif level == "STUDY":
        inner = inner.join(Series, Instance.series_fk == Series.pk).where(Series.study_fk == Study.pk).correlate(Study)
    else:
        inner = (
            inner.join(Series, Instance.series_fk == Series.pk)
            .join(Study, Series.study_fk == Study.pk)
            .where(Study.patient_fk == Patient.pk)
            .correlate(Patient)
        )
    return inner.order_by(Instance.pk).limit(1).scalar_subquery()


def _condition(key: Key, elem: DataElement) -> ColumnElement[bool] | None:
    """The WHERE condition for one key, or None for universal matching / return-only keys."""
    if key.kind in ("count", "sop_classes"):
        return None  # return keys only
    if key.kind == "sequence":
        return _request_condition(elem)
    if key.kind == "date":
        rng = date_range(elem)
        return _date_condition(key.column, rng) if rng is not None else None
    if key.kind == "time":
        rng = time_range(elem)
        return _time_condition(key.column, rng) if rng is not None else None
    if key.kind == "datetime":
        rng = datetime_range(elem)
        return _date_condition(key.search, rng) if rng is not None else None
    values = _values(elem)
    if not values:
        return None
    if key.kind == "uid":
        for v in values:
            if has_wildcards(v):
                raise _bad_value(elem, "wildcards are not allowed in UIDs")
            if len(v) > 64:
                raise _bad_value(elem, "UID longer than 64 characters")
        return key.column == values[0] if len(values) == 1 else key.column.in_(values)
    if key.kind == "int":
        numbers = []
        for v in values:
            if has_wildcards(v) and v.strip("*") == "":
                return None
            try:
                numbers.append(int(v))
            except ValueError:
                raise _bad_value(elem, f"not an integer: {v!r}") from None
        return key.column == numbers[0] if len(numbers) == 1 else key.column.in_(numbers)
    if key.kind == "modalities":
        if any(v.strip("*") == "" for v in values):
            return None
        other = aliased(Series)  # not the outer query's series row at SERIES level and below
        options = [wildcard_match(other.modality, v) for v in values]
        return exists().where(other.study_fk == Study.pk, or_(*options)).correlate(Study)
    if key.kind == "pn":
        options = [_pn_condition(key.search, unicodedata.normalize("NFC", v)) for v in values]
        return or_(*options) if len(options) > 1 else options[0]
    options = [wildcard_match(key.column, v) for v in values]
    return or_(*options) if len(options) > 1 else options[0]


# --- running a query ---------------------------------------------------------------------------------


def find(
    store: DataStore,
    query: FindQuery,
    *,
    page_size: int = 500,
    max_results: int | None = None,
) -> Iterator[Dataset]:
    """Yield one response identifier per match, streamed from a cursor ``page_size`` rows at a time.

    With ``max_results``, the first ``max_results + 1`` rows are fetched before anything is yielded and
    :class:`TooManyMatches` is raised if there are that many, so the peer never gets a partial answer.
    Close the generator to stop early (C-CANCEL): the cursor and its connection are released.
    """
    for row in _rows(store, query, page_size, max_results):
        yield build_response(store, query, row)


def find_encoded(
    store: DataStore,
    query: FindQuery,
    transfer_syntax: str,
    *,
    page_size: int = 500,
    max_results: int | None = None,
    fixed: dict[int, str] | None = None,
) -> Iterator[bytes]:
    """Like :func:`find`, but yields each answer encoded in ``transfer_syntax``, with its Specific
    Character Set chosen by :func:`answer_charset`; ``fixed`` sets the values of some keys (tag ->
    text) when they are requested (the add-in's RetrieveAETitle).

    Answers made only of index values are encoded directly from the row (no pydicom dataset: most of
    the cost of an answer otherwise); answers with keys from the file headers go through pydicom.
    """
    fast = _FastEncoder.make(query, transfer_syntax, fixed or {})
    for row in _rows(store, query, page_size, max_results):
        if fast is not None:
            yield fast.encode(row)
            continue
        ds = build_response(store, query, row)
        for tag, value in (fixed or {}).items():
            if tag in ds:
                ds[tag].value = value
        set_answer_charset(ds, query.charset)
        yield encode_dataset(ds, transfer_syntax)


def _rows(store: DataStore, query: FindQuery, page_size: int, max_results: int | None) -> Iterator[Any]:
    return matching_rows(store.index.engine, query.statement, page_size=page_size, max_results=max_results)


def matching_rows(engine: Engine, statement: Select[Any], *, page_size: int = 500,
                  max_results: int | None = None) -> Iterator[Any]:
    """The rows of a matching query, memory bounded either way; :class:`TooManyMatches` before the
    first row when there are more than ``max_results``.

    With a cap, the statement runs with ``LIMIT max_results + 1`` in one client-side result, so what
    is held is bounded by the cap, the connection goes back to the pool before the first row is
    used, and PostgreSQL answers in one round trip (its server-side cursor costs a round trip each
    for DECLARE, describe, FETCH… and CLOSE; measured at 1M instances, ~0.5 ms of a 6 ms name
    query). Without a cap,
    rows stream from a server-side cursor ``page_size`` at a time and the connection is held until
    the generator ends; close it to stop early (C-CANCEL).
    """
    if max_results is not None:
        with engine.connect() as conn:
            rows = conn.execute(statement.limit(max_results + 1)).fetchall()
        if len(rows) > max_results:
            raise TooManyMatches(max_results)
        yield from rows
        return
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=page_size).execute(statement)
        try:
            yield from result
        finally:
            result.close()


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


__all__ = [
    "KEYS",
    "PATIENT_ROOT",
    "PATIENT_ROOT_FIND",
    "STUDY_ROOT",
    "STUDY_ROOT_FIND",
    "FindQuery",
    "InvalidQuery",
    "Key",
    "TooManyMatches",
    "matching_rows",
    "answer_charset",
    "compile_find",
    "find",
    "find_encoded",
    "like_pattern",
    "parse_date",
    "parse_time",
    "set_answer_charset",
]
