"""The Modality Worklist store: scheduled procedure steps in the database, matched per PS3.4 K.6.

:class:`WorklistStore` keeps worklist entries (:mod:`pacskit.store.workflow.models`) and answers
Modality Worklist C-FINDs: :func:`compile_worklist_find` turns an identifier into one SQL ``SELECT``
with bound parameters (the same statement on SQLite, PostgreSQL and MariaDB) and
:meth:`WorklistStore.find` streams the answers.

An entry is a dataset like DCMTK's ``.wl`` files: patient, imaging service request and requested
procedure attributes, and a Scheduled Procedure Step Sequence. Each item of that sequence becomes one
*scheduled step* (one row, one C-FIND answer, one id in the management API), carrying the entry's other
attributes with it.

Matching reuses the query engine's rules (:mod:`pacskit.store.query`: single value, wildcards, ranges,
list of UIDs, case-insensitive PN on the normalised search form):

* top level: PatientName, PatientID, IssuerOfPatientID, PatientBirthDate, PatientSex, AccessionNumber,
  ReferringPhysicianName, RequestingPhysician, StudyInstanceUID, RequestedProcedureID,
  RequestedProcedureDescription, RequestedProcedurePriority;
* inside the (single) item of the Scheduled Procedure Step Sequence: ScheduledStationAETitle (any of
  the step's values matches), Modality, ScheduledProcedureStepStartDate / StartTime (matched as one
  date-time when both have values, as DCMTK's ``wlmscpfs`` does), ScheduledPerformingPhysicianName,
  ScheduledProcedureStepID, ScheduledProcedureStepDescription, ScheduledProcedureStepStatus,
  ScheduledStationName, ScheduledProcedureStepLocation.

Any other requested key is returned from the stored entry (empty when it does not have it) and not
matched; if it was given a value, the Pending status is 0xFF01 (optional keys not supported). A
sequence key with no item or one empty item returns the whole stored sequence; with an item, each
stored item is returned with the item's keys only.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import ColumnElement, Select, exists, or_, select
from sqlalchemy.orm import Session

from pacskit.store.index.database import Index
from pacskit.store.index.models import normalise_person_name
from pacskit.dicom.status import Status
from pacskit.store.query.compile import Key, _charset_of, _condition, _decoded_elements
from pacskit.store.query.encode import set_answer_charset
from pacskit.store.query.execute import matching_rows
from pacskit.store.query.matching import (
    InvalidQuery,
    _values,
    combined_datetime_condition,
    date_range,
    time_range,
    wildcard_match,
)
from pacskit.store.workflow.models import WorklistItem, WorklistStationAE

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
SPS_SEQUENCE = 0x00400100
_CHARSET = 0x00080005
_QR_LEVEL = 0x00080052
_SPS_DATE = 0x00400002
_SPS_TIME = 0x00400003
_NO_VALIDATION = pydicom_config.IGNORE

#: Scheduled Procedure Step Status values (PS3.3 C.4.10, with IHE's COMPLETED / DISCONTINUED)
SPS_STATUSES = ("SCHEDULED", "ARRIVED", "READY", "STARTED", "DEPARTED", "COMPLETED", "DISCONTINUED", "CANCELED")


class InvalidEntry(ValueError):
    """A worklist entry that cannot be stored (the message says why)."""


# --- keys and columns ---------------------------------------------------------------------------------

C = WorklistItem
#: top-level keyword -> (column attribute, kind)
_TOP = {
    "PatientID": ("patient_id", "text"),
    "IssuerOfPatientID": ("issuer_of_patient_id", "text"),
    "PatientName": ("patient_name", "pn"),
    "PatientBirthDate": ("patient_birth_date", "date"),
    "PatientSex": ("patient_sex", "text"),
    "AccessionNumber": ("accession_number", "text"),
    "ReferringPhysicianName": ("referring_physician_name", "pn"),
    "RequestingPhysician": ("requesting_physician", "pn"),
    "StudyInstanceUID": ("study_instance_uid", "uid"),
    "RequestedProcedureID": ("requested_procedure_id", "text"),
    "RequestedProcedureDescription": ("requested_procedure_description", "text"),
    "RequestedProcedurePriority": ("requested_procedure_priority", "text"),
}
#: keyword inside the Scheduled Procedure Step Sequence item -> (column attribute, kind)
_SPS = {
    "Modality": ("modality", "text"),
    "ScheduledStationAETitle": ("", "ae"),
    "ScheduledProcedureStepStartDate": ("sps_start_date", "date"),
    "ScheduledProcedureStepStartTime": ("sps_start_time", "time"),
    "ScheduledPerformingPhysicianName": ("scheduled_performing_physician_name", "pn"),
    "ScheduledProcedureStepID": ("sps_id", "text"),
    "ScheduledProcedureStepDescription": ("sps_description", "text"),
    "ScheduledProcedureStepStatus": ("sps_status", "text"),
    "ScheduledStationName": ("scheduled_station_name", "text"),
    "ScheduledProcedureStepLocation": ("sps_location", "text"),
}


def _key(keyword: str, column: str, kind: str) -> Key:
    col = getattr(C, column) if column else None
    search = getattr(C, column + "_search") if kind == "pn" else None
    return Key(keyword, "WORKLIST", kind, col, search)


_TOP_KEYS: dict[int, Key] = {int(tag_for_keyword(k) or 0): _key(k, c, kind) for k, (c, kind) in _TOP.items()}
_SPS_KEYS: dict[int, Key] = {int(tag_for_keyword(k) or 0): _key(k, c, kind) for k, (c, kind) in _SPS.items()}


# --- compiling a Modality Worklist identifier ---------------------------------------------------------


@dataclass(slots=True)
class ReturnNode:
    """One requested key of the answer: a leaf, or a sequence (``children`` None: the whole sequence)."""

    tag: int
    vr: str
    children: list[ReturnNode] | None = None


@dataclass(slots=True)
class WorklistQuery:
    """A compiled Modality Worklist C-FIND: the statement and the shape of the answers."""

    statement: Select[Any]
    returns: list[ReturnNode]
    charset: list[str] = field(default_factory=list)
    #: some keys given a value are not matched (returned from the stored entries only): Pending 0xFF01
    unsupported: bool = False


def _has_value(elem: DataElement) -> bool:
    return elem.VR != "SQ" and any(v.strip("*") for v in _values(elem))


def _vr_of(elem: DataElement) -> str:
    vr = str(elem.VR)
    if " or " in vr:
        vr = vr.split(" or ")[0]
    return vr


def _skipped(elem: DataElement) -> bool:
    tag = int(elem.tag)
    return tag in (_CHARSET, _QR_LEVEL) or elem.tag.element == 0 or elem.tag.group in (0x0000, 0x0002)


def _returns(elements: Sequence[DataElement], charset: list[str]) -> list[ReturnNode]:
    nodes = []
    for elem in elements:
        if _skipped(elem):
            continue
        if elem.VR == "SQ":
            items = list(elem.value or [])
            children = _returns(_decoded_elements(items[0], charset), charset) if items and len(items[0]) else None
            nodes.append(ReturnNode(int(elem.tag), "SQ", children))
        else:
            nodes.append(ReturnNode(int(elem.tag), _vr_of(elem)))
    return nodes


def _station_ae_condition(elem: DataElement) -> ColumnElement[bool] | None:
    values = [v for v in _values(elem) if v]
    if not values or any(v.strip("*") == "" for v in values):
        return None
    ae = WorklistStationAE
    options = [wildcard_match(ae.ae_title, v) for v in values]
    return exists().where(ae.item_fk == C.pk, or_(*options) if len(options) > 1 else options[0]).correlate(C)


def compile_worklist_find(identifier: Dataset, *, hide_statuses: Sequence[str] = ()) -> WorklistQuery:
    """Compile a Modality Worklist identifier (PS3.4 K.6). Raises :class:`InvalidQuery`: 0xA900 when
    the identifier does not fit the model (a Scheduled Procedure Step Sequence that is not a sequence or
    has more than one item), 0xC000 for a value that is not valid for its VR (a malformed date or time,
    a wildcard in a UID). ``hide_statuses``: steps with one of these statuses never match."""
    charset = _charset_of(identifier)
    elements = _decoded_elements(identifier)
    conditions: list[ColumnElement[bool]] = []
    unsupported = False
    for elem in elements:
        tag = int(elem.tag)
        if _skipped(elem):
            continue
        if tag == SPS_SEQUENCE:
            if elem.VR != "SQ":
                raise InvalidQuery(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "ScheduledProcedureStepSequence is not a sequence", tag)
            items = list(elem.value or [])
            if len(items) > 1:
                raise InvalidQuery(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                                   "ScheduledProcedureStepSequence: one item expected", tag)
            if items:
                conds, extra = _sps_conditions(_decoded_elements(items[0], charset))
                conditions += conds
                unsupported = unsupported or extra
            continue
        key = _TOP_KEYS.get(tag)
        if key is not None:
            condition = _condition(key, elem)
            if condition is not None:
                conditions.append(condition)
        elif _has_value(elem):
            unsupported = True
    if hide_statuses:
        conditions.append(or_(C.sps_status.is_(None), C.sps_status.not_in(list(hide_statuses))))
    statement = select(C.pk, C.dataset).where(*conditions).order_by(C.pk)
    return WorklistQuery(statement, _returns(elements, charset), charset, unsupported)


def _sps_conditions(elements: Sequence[DataElement]) -> tuple[list[ColumnElement[bool]], bool]:
    conditions: list[ColumnElement[bool]] = []
    unsupported = False
    by_tag = {int(e.tag): e for e in elements}
    combined = False
    date_elem, time_elem = by_tag.get(_SPS_DATE), by_tag.get(_SPS_TIME)
    if date_elem is not None and time_elem is not None:
        dates, times = date_range(date_elem), time_range(time_elem)
        if dates is not None and times is not None:
            conditions.append(combined_datetime_condition(C.sps_start_date, C.sps_start_time, dates, times))
            combined = True
    for elem in elements:
        tag = int(elem.tag)
        if _skipped(elem) or (combined and tag in (_SPS_DATE, _SPS_TIME)):
            continue
        key = _SPS_KEYS.get(tag)
        if key is None:
            unsupported = unsupported or _has_value(elem)
            continue
        condition = _station_ae_condition(elem) if key.kind == "ae" else _condition(key, elem)
        if condition is not None:
            conditions.append(condition)
    return conditions, unsupported


# --- answers ------------------------------------------------------------------------------------------


def _json_value(obj: Mapping[str, Any]) -> Any:
    """The value of one DICOM JSON element (PS3.18 F.2) as pydicom takes it (None when empty)."""
    vr = obj.get("vr", "UN")
    if "InlineBinary" in obj:
        return base64.b64decode(obj["InlineBinary"])
    values = obj.get("Value")
    if not values:
        return None
    if vr == "PN":
        values = ["=".join(g for g in (v.get("Alphabetic", ""), v.get("Ideographic", ""), v.get("Phonetic", "")))
                  .rstrip("=") if isinstance(v, Mapping) else str(v) for v in values]
    elif vr == "AT":
        values = [int(v, 16) for v in values]
    elif vr in ("IS", "DS"):
        values = [str(v) for v in values]
    return values[0] if len(values) == 1 else values


def _json_dataset(stored: Mapping[str, Any]) -> Dataset:
    """A whole stored item (a sequence asked for with an empty item)."""
    out = Dataset()
    for key, obj in stored.items():
        tag = int(key, 16)
        if obj.get("vr") == "SQ":
            out.add(DataElement(tag, "SQ", DicomSequence([_json_dataset(i) for i in obj.get("Value") or []])))
        else:
            out.add(DataElement(tag, obj.get("vr", "UN"), _json_value(obj), validation_mode=_NO_VALIDATION))
    return out


def _filtered_json(nodes: Sequence[ReturnNode], stored: Mapping[str, Any]) -> Dataset:
    """The requested keys of a stored step, straight from its DICOM JSON (no pydicom parsing of the
    whole entry: most of the cost of an answer otherwise)."""
    out = Dataset()
    for node in nodes:
        obj = stored.get(f"{node.tag:08X}")
        if node.vr == "SQ":
            items = (obj.get("Value") or []) if obj is not None and obj.get("vr") == "SQ" else []
            if node.children is None:
                value = DicomSequence([_json_dataset(item) for item in items])
            else:
                value = DicomSequence([_filtered_json(node.children, item) for item in items])
            out.add(DataElement(node.tag, "SQ", value))
        elif obj is not None and obj.get("vr") != "SQ":
            out.add(DataElement(node.tag, obj.get("vr", node.vr), _json_value(obj), validation_mode=_NO_VALIDATION))
        else:
            out.add(DataElement(node.tag, node.vr, None, validation_mode=_NO_VALIDATION))
    return out


def build_answer(query: WorklistQuery, stored_json: str) -> Dataset:
    """The answer for one stored step: every requested key, filled or empty; the Specific Character
    Set added when a value is not ASCII (the identifier's own set when it can hold the values, else
    ISO_IR 192)."""
    answer = _filtered_json(query.returns, json.loads(stored_json))
    return set_answer_charset(answer, query.charset)


# --- entries ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class WorklistEntry:
    """One stored scheduled step: its id, the entry as a dataset, and the time it was written."""

    id: int
    dataset: Dataset
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def step(self) -> Dataset:
        seq = self.dataset.get("ScheduledProcedureStepSequence")
        return seq[0] if seq else Dataset()

    def summary(self) -> dict[str, Any]:
        """The usual columns of a worklist display (plain strings)."""
        ds, sps = self.dataset, self.step
        return {
            "id": self.id,
            "patient_id": _str(ds, "PatientID"),
            "patient_name": _str(ds, "PatientName"),
            "accession_number": _str(ds, "AccessionNumber"),
            "requested_procedure_id": _str(ds, "RequestedProcedureID"),
            "modality": _str(sps, "Modality"),
            "station_ae_title": _str(sps, "ScheduledStationAETitle"),
            "start_date": _str(sps, "ScheduledProcedureStepStartDate"),
            "start_time": _str(sps, "ScheduledProcedureStepStartTime"),
            "step_id": _str(sps, "ScheduledProcedureStepID"),
            "step_description": _str(sps, "ScheduledProcedureStepDescription"),
            "status": _str(sps, "ScheduledProcedureStepStatus"),
        }

    def to_json(self) -> dict[str, Any]:
        """The REST/CLI form: the summary, timestamps, and the entry in the DICOM JSON model."""
        return {
            **self.summary(),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "dataset": self.dataset.to_json_dict(),
        }


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


_TAG_OF = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in (*_TOP, *_SPS)}


def _column_text(ds: Dataset, keyword: str, column: str) -> str | None:
    tag = _TAG_OF[keyword]
    elem = ds[tag] if tag in ds else None
    if elem is None or elem.VR == "SQ":
        return None
    value = elem.value
    if value is None or value == "":
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, (list, MultiValue)) else str(value)
    text = text.strip()
    if not text:
        return None
    length = getattr(C.__table__.c[column].type, "length", None)
    return text[:length] if length else text


def decoded_copy(entry: Dataset) -> Dataset:
    """A copy of a dataset as the workflow tables store it: values decoded to Unicode (so ready for
    DICOM JSON), without file meta, group lengths and the Specific Character Set."""
    out = Dataset()
    for elem in entry:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag.element == 0 or int(elem.tag) == _CHARSET:
            continue
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", DicomSequence([decoded_copy(item) for item in elem.value or []])))
        else:
            value = elem.value  # str, PersonName, bytes, numbers: not changed in place; lists are copied
            if isinstance(value, (list, MultiValue)):
                value = list(value)
            out.add(DataElement(elem.tag, elem.VR, value, validation_mode=_NO_VALIDATION))
    return out


_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")  # YYYYMMDD, or ACR-NEMA YYYY.MM.DD
_TM_RE = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.\d{1,6})?)?)?$")  # HH[MM[SS[.F]]], legacy colons
_DT_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_UI_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _value_problem(vr: str, text: str) -> str | None:
    """Why ``text`` is not a valid value of ``vr`` (DA, TM, DT, PN, UI, CS), or None."""
    if vr == "DA":
        m = _DA_RE.match(text)
        if not m:
            return "is not a date (DA: YYYYMMDD)"
        try:
            dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return "is not a date of the calendar (DA: YYYYMMDD)"
    elif vr == "TM":
        m = _TM_RE.match(text)
        if not m or int(m[1]) > 23 or int(m[2] or 0) > 59 or int(m[3] or 0) > 60:
            return "is not a time (TM: HHMMSS.FFFFFF)"
    elif vr == "DT":
        if not _DT_RE.match(text) or len(text) > 26:
            return "is not a date-time (DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX)"
    elif vr == "PN":
        groups = text.split("=")
        if len(groups) > 3 or any(len(g) > 64 or g.count("^") > 4 for g in groups):
            return "is not a person name (PN: at most 3 groups of 5 '^'-separated components, 64 characters each)"
    elif vr == "UI":
        if len(text) > 64 or not _UI_RE.match(text):
            return "is not a UID (UI: digits and dots, at most 64 characters)"
    elif vr == "CS":
        if len(text) > 16 or any(ord(c) < 0x20 for c in text):
            return "is not a code string (CS: at most 16 characters)"
    return None


def check_entry_values(entry: Dataset, where: str = "") -> None:
    """Raise :class:`InvalidEntry` naming the attribute when a DA, TM, DT, PN, UI or CS value of
    ``entry`` (sequences included) is malformed: a worklist hands its values to modalities, which
    may fail on a date ``baddate``. Empty values are fine (unknown); ACR-NEMA dates (``YYYY.MM.DD``)
    and times with colons are accepted, as the matching reads them."""
    for elem in entry:
        name = f"{where}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                check_entry_values(item, f"{name}[{i}].")
            continue
        if elem.VR not in ("DA", "TM", "DT", "PN", "UI", "CS") or elem.value is None:
            continue
        values = list(elem.value) if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        for value in values:
            text = str(value).strip(" \0") if value is not None else ""
            if not text:
                continue
            problem = _value_problem(elem.VR, text)
            if problem:
                raise InvalidEntry(f"{name}: {text!r} {problem}")


def split_steps(entry: Dataset) -> list[Dataset]:
    """One dataset per item of the Scheduled Procedure Step Sequence (the entry itself if it has none);
    values decoded with the entry's character set."""
    try:
        base = decoded_copy(entry)
    except Exception as exc:  # an undecodable value
        raise InvalidEntry(f"cannot decode the entry: {exc}") from None
    if SPS_SEQUENCE in base and base[SPS_SEQUENCE].VR != "SQ":
        raise InvalidEntry("ScheduledProcedureStepSequence is not a sequence")
    if SPS_SEQUENCE not in base and not any(tag in base for tag in _TOP_KEYS):
        raise InvalidEntry("not a worklist entry: no patient, request or scheduled step attributes")
    items = list(base[SPS_SEQUENCE].value) if SPS_SEQUENCE in base else []
    if len(items) <= 1:
        return [base]
    steps = []
    for item in items:
        step = copy.deepcopy(base)
        step[SPS_SEQUENCE].value = DicomSequence([item])
        steps.append(step)
    return steps


def _columns(step: Dataset) -> dict[str, Any]:
    seq = step.get("ScheduledProcedureStepSequence")
    sps = seq[0] if seq else Dataset()
    values: dict[str, Any] = {}
    for source, table in ((step, _TOP), (sps, _SPS)):
        for keyword, (column, kind) in table.items():
            if not column:
                continue
            text = _column_text(source, keyword, column)
            values[column] = text
            if kind == "pn":
                values[column + "_search"] = normalise_person_name(text)
    for column in ("sps_start_date", "patient_birth_date"):
        if values.get(column):
            values[column] = values[column].replace(".", "")  # ACR-NEMA YYYY.MM.DD
    if values.get("sps_start_time"):
        values["sps_start_time"] = values["sps_start_time"].replace(":", "")
    return values


def _station_aes(step: Dataset) -> list[str]:
    seq = step.get("ScheduledProcedureStepSequence")
    if not seq or "ScheduledStationAETitle" not in seq[0]:
        return []
    value = seq[0]["ScheduledStationAETitle"].value
    items = list(value) if isinstance(value, (list, MultiValue)) else [value]
    return [str(v).strip()[:16] for v in items if v is not None and str(v).strip()]


def _to_json(step: Dataset) -> str:
    try:
        return json.dumps(step.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
    except Exception as exc:
        raise InvalidEntry(f"cannot store the entry: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What one step writes: its column values, its DICOM JSON, its station AE titles."""

    columns: dict[str, Any]
    document: str
    station_aes: list[str]

    @classmethod
    def of(cls, step: Dataset) -> _Prepared:
        return cls(_columns(step), _to_json(step), _station_aes(step))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _entry(row: WorklistItem) -> WorklistEntry:
    return WorklistEntry(row.pk, Dataset.from_json(row.dataset), row.created_at, row.updated_at)


def _merge(target: Dataset, changes: Dataset) -> None:
    """``changes`` into ``target``: elements replaced; the step's item merged key by key."""
    for elem in changes:
        if int(elem.tag) == SPS_SEQUENCE and elem.VR == "SQ" and len(elem.value or []) == 1 \
                and SPS_SEQUENCE in target and len(target[SPS_SEQUENCE].value or []) == 1:
            _merge(target[SPS_SEQUENCE].value[0], elem.value[0])
        else:
            target[elem.tag] = elem


class WorklistStore:
    """Worklist entries in the index database (its engine, its write transactions and retries)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    # writing ---------------------------------------------------------------------------------------

    @staticmethod
    def _write(s: Session, step: _Prepared, row: WorklistItem | None = None, *, flush: bool = True) -> WorklistItem:
        now = _now()
        if row is None:
            row = WorklistItem(created_at=now, dataset="")
            s.add(row)
        for column, value in step.columns.items():
            setattr(row, column, value)
        row.dataset = step.document
        row.updated_at = now
        row.station_aes = [WorklistStationAE(ae_title=ae) for ae in step.station_aes]
        if flush:
            s.flush()
        return row

    @staticmethod
    def _same_step(s: Session, step: _Prepared) -> WorklistItem | None:
        """The stored step with the same AccessionNumber, RequestedProcedureID and SPS ID (an import of
        the same entry again), or None; steps without an SPS ID are never the same."""
        values = step.columns
        if not values.get("sps_id"):
            return None
        conditions = [C.sps_id == values["sps_id"]]
        for column in ("accession_number", "requested_procedure_id"):
            value = values.get(column)
            conditions.append(getattr(C, column).is_(None) if value is None else getattr(C, column) == value)
        return s.execute(select(C).where(*conditions).order_by(C.pk).limit(1)).scalar_one_or_none()

    def add(self, entry: Dataset, *, replace: bool = False) -> list[int]:
        """Store ``entry`` (one step per item of its Scheduled Procedure Step Sequence); returns their
        ids. ``replace``: a step with the same AccessionNumber, RequestedProcedureID and SPS ID as a
        stored one replaces it (importing the same files twice changes nothing)."""
        return self.add_many([entry], replace=replace)

    def add_many(self, entries: Iterable[Dataset], *, replace: bool = False) -> list[int]:
        """:meth:`add` for several entries in one transaction: all are stored, or none (an
        :class:`InvalidEntry` names the first that cannot be)."""
        # everything that can fail on the values is done before the transaction, once
        entries = list(entries)
        for entry in entries:
            check_entry_values(entry)
        steps = [_Prepared.of(step) for entry in entries for step in split_steps(entry)]

        def work(s: Session) -> list[int]:
            rows = [self._write(s, step, self._same_step(s, step) if replace else None, flush=False) for step in steps]
            s.flush()
            return [row.pk for row in rows]

        return self.index.run_write(work)

    def update(self, entry_id: int, changes: Dataset) -> WorklistEntry | None:
        """Merge ``changes`` into a stored step (attributes replaced; inside the Scheduled Procedure
        Step Sequence key by key); None if there is no such step."""
        def work(s: Session) -> WorklistEntry | None:
            row = s.get(C, entry_id, with_for_update=True)
            if row is None:
                return None
            step = Dataset.from_json(row.dataset)
            _merge(step, decoded_copy(changes))
            check_entry_values(step)
            if SPS_SEQUENCE in step and len(step[SPS_SEQUENCE].value or []) > 1:
                raise InvalidEntry("a stored step has one Scheduled Procedure Step Sequence item")
            self._write(s, _Prepared.of(step), row)
            return _entry(row)

        return self.index.run_write(work)

    def update_patient(self, patient_id: str, *, name: str | None = None, birth_date: str | None = None,
                       sex: str | None = None, statuses: Sequence[str] = ("SCHEDULED", "ARRIVED", "READY", "")) -> list[int]:
        """Write a patient's new demographics into the steps of that patient (Patient ID) whose status
        is one of ``statuses`` (by default those not yet started: an HL7 ADT^A08 corrects what the
        modality will read from the worklist, not the record of a procedure performed). ``None``
        leaves an attribute as it is. One transaction; returns the ids of the steps changed."""
        changes = Dataset()
        if name is not None:
            changes.PatientName = name
        if birth_date is not None:
            changes.PatientBirthDate = birth_date
        if sex is not None:
            changes.PatientSex = sex
        if not patient_id or len(changes) == 0:
            return []
        check_entry_values(changes)

        def work(s: Session) -> list[int]:
            changed: list[int] = []
            rows = s.execute(select(C).where(C.patient_id == patient_id).order_by(C.pk).with_for_update()).scalars()
            for row in rows:
                if (row.sps_status or "") not in statuses:
                    continue
                step = Dataset.from_json(row.dataset)
                _merge(step, changes)
                self._write(s, _Prepared.of(step), row)
                changed.append(row.pk)
            return changed

        return self.index.run_write(work)

    def set_status(self, entry_id: int, status: str) -> bool:
        """Set a step's Scheduled Procedure Step Status (MPPS: STARTED, COMPLETED, DISCONTINUED)."""
        return self.index.run_write(lambda s: self.set_status_in(s, entry_id, status))

    def set_status_in(self, s: Session, entry_id: int, status: str) -> bool:
        """:meth:`set_status` inside the caller's transaction."""
        row = s.get(C, entry_id, with_for_update=True)
        if row is None:
            return False
        step = Dataset.from_json(row.dataset)
        seq = step.get("ScheduledProcedureStepSequence")
        if not seq:
            step.ScheduledProcedureStepSequence = DicomSequence([Dataset()])
            seq = step.ScheduledProcedureStepSequence
        seq[0].ScheduledProcedureStepStatus = status
        self._write(s, _Prepared.of(step), row)
        return True

    def remove(self, entry_id: int) -> bool:
        def work(s: Session) -> bool:
            row = s.get(C, entry_id)
            if row is None:
                return False
            s.delete(row)
            return True

        return self.index.run_write(work)

    def clear(self) -> int:
        """Remove every step; returns how many there were."""
        def work(s: Session) -> int:
            rows = list(s.execute(select(C)).scalars())
            for row in rows:
                s.delete(row)
            return len(rows)

        return self.index.run_write(work)

    # reading ---------------------------------------------------------------------------------------

    def get(self, entry_id: int) -> WorklistEntry | None:
        with self.index.reading() as s:
            row = s.get(C, entry_id)
            return _entry(row) if row is not None else None

    def entries(self, *, status: str | None = None, limit: int | None = None, offset: int = 0) -> list[WorklistEntry]:
        """Stored steps in the order they were added (``status``: only those with that status)."""
        stmt = select(C).order_by(C.pk).offset(offset)
        if status is not None:
            stmt = stmt.where(C.sps_status == status)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.index.reading() as s:
            return [_entry(row) for row in s.execute(stmt).scalars()]

    def matching_steps(self, s: Session, *, sps_id: str | None, accession_number: str | None = None,
                       requested_procedure_id: str | None = None, study_instance_uid: str | None = None) -> list[int]:
        """Ids of the steps an MPPS's Scheduled Step Attributes Sequence item names: the SPS ID, and
        every other identifier the item gives (in the caller's transaction)."""
        if not sps_id:
            return []
        conditions = [C.sps_id == sps_id]
        for column, value in (("accession_number", accession_number), ("requested_procedure_id",
                              requested_procedure_id), ("study_instance_uid", study_instance_uid)):
            if value:
                conditions.append(getattr(C, column) == value)
        return list(s.execute(select(C.pk).where(*conditions).order_by(C.pk)).scalars())

    def find(self, query: WorklistQuery, *, page_size: int = 200, max_results: int | None = None) -> Iterator[Dataset]:
        """One answer per matching step (:func:`~pacskit.store.query.matching_rows`: bounded by the cap,
        or streamed from a cursor); :class:`TooManyMatches` (before the first answer) when there are
        more than ``max_results``. Close the generator to stop early."""
        for row in matching_rows(self.index.engine, query.statement, page_size=page_size, max_results=max_results):
            yield build_answer(query, row.dataset)


# --- import -------------------------------------------------------------------------------------------

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


def read_entry_file(path: str | Path) -> Dataset:
    """A worklist entry from a DICOM file (DCMTK's ``.wl`` files, with or without a file meta header)."""
    try:
        return dcmread(str(path), force=True)
    except Exception as exc:
        raise InvalidEntry(f"{path}: not a DICOM file ({exc})") from None


def entry_from_json(obj: Mapping[str, Any]) -> Dataset:
    """A worklist entry from JSON: the DICOM JSON model (``{"00100010": {"vr": "PN", "Value": [...]}}``)
    or keywords (``{"PatientName": "DOE^JOHN", "ScheduledProcedureStepSequence": [{"Modality": "MR"}]}``,
    multiple values as lists or with ``\\``)."""
    if not isinstance(obj, Mapping):
        raise InvalidEntry("a worklist entry is a JSON object")
    if obj and all(isinstance(k, str) and _HEX_TAG.match(k) for k in obj):
        try:
            return Dataset.from_json(dict(obj))
        except Exception as exc:
            raise InvalidEntry(f"not a DICOM JSON dataset: {exc}") from None
    ds = Dataset()
    for name, value in obj.items():
        tag = tag_for_keyword(str(name))
        if tag is None:
            raise InvalidEntry(f"{name!r} is not a DICOM keyword")
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            items = value if isinstance(value, list) else [value]
            ds.add_new(tag, "SQ", DicomSequence([entry_from_json(item) for item in items]))
            continue
        if value is None:
            value = ""
        if isinstance(value, list):
            value = [str(v) for v in value]
        elif not isinstance(value, str):
            value = str(value)
        elif "\\" in value and vr not in ("LT", "ST", "UT"):
            value = value.split("\\")
        try:
            ds.add_new(tag, vr, value)
        except Exception as exc:
            raise InvalidEntry(f"{name}: {exc}") from None
    return ds


def entries_from_json(data: Any) -> list[Dataset]:
    """One entry or a list of them (see :func:`entry_from_json`)."""
    items = data if isinstance(data, list) else [data]
    return [entry_from_json(item) for item in items]


def read_entries(paths: Iterable[str | Path]) -> Iterator[tuple[Path, Dataset]]:
    """Entries from files and folders: ``*.json`` as JSON, any other file as DICOM (folders: their
    ``*.wl``, ``*.dcm`` and ``*.json`` files, sorted)."""
    for raw in paths:
        path = Path(raw)
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".wl", ".dcm", ".json")) \
            if path.is_dir() else [path]
        for file in files:
            if file.suffix.lower() == ".json":
                try:
                    data = json.loads(file.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise InvalidEntry(f"{file}: {exc}") from None
                try:
                    found = list(entries_from_json(data))
                except InvalidEntry as exc:
                    raise InvalidEntry(f"{file}: {exc}") from None
                for entry in found:
                    yield file, entry
            else:
                yield file, read_entry_file(file)


__all__ = [
    "MODALITY_WORKLIST_FIND",
    "SPS_STATUSES",
    "InvalidEntry",
    "InvalidQuery",
    "ReturnNode",
    "WorklistEntry",
    "WorklistQuery",
    "WorklistStore",
    "build_answer",
    "check_entry_values",
    "compile_worklist_find",
    "decoded_copy",
    "entries_from_json",
    "entry_from_json",
    "read_entries",
    "read_entry_file",
    "split_steps",
]
