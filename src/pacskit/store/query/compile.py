"""One C-FIND identifier -> one :class:`FindQuery`: the SQL ``SELECT`` over the index tables (every
value a bound parameter) and the return keys with where each comes from (:data:`KEYS`: the
attributes the index answers).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import config as pydicom_config
from pydicom.charset import decode_element
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from sqlalchemy import (
    ColumnElement,
    Select,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.orm import aliased

from pacskit.dicom.vr import TEXT_VRS
from pacskit.store.index.models import (
    Instance,
    Patient,
    Series,
    SeriesRequest,
    Study,
    UID_COLUMN,
)

if TYPE_CHECKING:
    pass

from pacskit.dicom.status import Status
from pacskit.store.query.matching import (
    InvalidQuery,
    _bad_value,
    _date_condition,
    _pn_condition,
    _time_condition,
    _values,
    combined_datetime_condition,
    date_range,
    datetime_range,
    has_wildcards,
    time_range,
    wildcard_match,
)


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

_NO_VALIDATION = pydicom_config.IGNORE
_QR_LEVEL = 0x00080052
_CHARSET = 0x00080005



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
        raise InvalidQuery(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "QueryRetrieveLevel missing", _QR_LEVEL)
    if level not in MODEL_LEVELS[model]:
        name = "Patient Root" if model == PATIENT_ROOT else "Study Root"
        raise InvalidQuery(
            Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"QueryRetrieveLevel {level} is not a {name} level", _QR_LEVEL
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
            raise InvalidQuery(Status.UNABLE_TO_PROCESS, f"{name}: cannot decode ({exc})"[:64], int(tag)) from None
        elements.append(elem)
    return elements


def compile_find(identifier: Dataset, model: str, *, relational: bool = False,
                 combined_datetime: bool = False) -> FindQuery:
    """Compile a C-FIND identifier for ``model`` (:data:`PATIENT_ROOT` / :data:`STUDY_ROOT`).

    ``relational`` and ``combined_datetime`` are what SOP Class Extended Negotiation agreed (PS3.4
    C.5.1.1.1): relational queries, and StudyDate + StudyTime matched as one date-time range
    (otherwise, PS3.4 C.2.2.2.5.1, each is matched on its own: the time range within each day).

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
                    Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                    f"{level} query needs one {unique.keyword} value (hierarchical)",
                    unique.tag,
                )

    combined = False
    date_elem, time_elem = seen_keys.get("StudyDate"), seen_keys.get("StudyTime")
    if combined_datetime and date_elem is not None and time_elem is not None:
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
    """The one item of a sequence key (PS3.4 C.2.2.2.6), or None: an empty sequence is universal.
    A sequence key sent with another VR (explicit VR "SS" where SQ belongs) holds no items: refused."""
    value = elem.value
    if value is None or value == b"" or value == "":
        return None
    if elem.VR != "SQ" or not isinstance(value, Sequence):
        raise _bad_value(elem, f"a sequence key sent as VR {elem.VR}")
    items = list(value)
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
            if len(v) > UID_COLUMN:  # 64 in PS3.5 9.1; longer legacy UIDs are stored (extract.check_uid)
                raise _bad_value(elem, f"UID longer than {UID_COLUMN} characters")
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
