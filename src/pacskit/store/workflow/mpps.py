"""Modality Performed Procedure Step instances in the database, with the state rules of PS3.4 F.7.

:class:`MppsStore` keeps what modalities N-CREATE and N-SET (:class:`~pacskit.store.workflow.models.
PerformedProcedureStep`), links each instance to the scheduled steps of the worklist its Scheduled Step
Attributes Sequence names, and moves those steps along: IN PROGRESS sets their Scheduled Procedure Step
Status to STARTED, COMPLETED to COMPLETED, DISCONTINUED to DISCONTINUED — in the transaction that stores
the MPPS, so the worklist and the MPPS never disagree.

Every rule broken raises :class:`MppsRefused` with the DIMSE status to answer (PS3.4 F.7.2.1 / F.7.2.2,
PS3.7 C): the row is left as it was.

``forward_to`` destinations get the accepted N-CREATE / N-SET recorded in :class:`MppsForwardQueue`'s
table in the same transaction: what was answered Success is sent on even after a stop or a crash.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pacskit.dicom.status import DimseRefusal, Status
from pacskit.store.index.extract import is_valid_uid
from pacskit.store.index.database import Index
from pacskit.store.workflow.models import FORWARD_FAILED, FORWARD_QUEUED, MppsForward, PerformedProcedureStep, PerformedStepLink
from pacskit.store.workflow.worklist import WorklistStore, decoded_copy

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
FINAL = (COMPLETED, DISCONTINUED)
STATES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
#: MPPS state -> the Scheduled Procedure Step Status it gives the linked worklist steps
SCHEDULED_STATUS = {IN_PROGRESS: "STARTED", COMPLETED: "COMPLETED", DISCONTINUED: "DISCONTINUED"}

#: Error ID (0000,0903) of 0x0110 when the step is final (PS3.4 F.7.2.2.2)
ERROR_ID_NO_LONGER_UPDATABLE = 0xA710

_STATUS_TAG = 0x00400252
_SSAS = 0x00400270
#: Type 1 at N-CREATE (PS3.4 Table F.7.2-1)
CREATE_TYPE1 = ("PerformedProcedureStepStatus", "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
                "PerformedProcedureStepStartTime", "Modality", "PerformedStationAETitle",
                "ScheduledStepAttributesSequence")
#: attributes an N-SET may not change (PS3.4 Table F.7.2-1, "Not allowed" for N-SET)
NOT_SETTABLE = ("ScheduledStepAttributesSequence", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "ReferencedPatientSequence", "PerformedProcedureStepID", "PerformedStationAETitle",
                "PerformedStationName", "PerformedLocation", "PerformedProcedureStepStartDate",
                "PerformedProcedureStepStartTime", "Modality", "StudyID", "SOPInstanceUID", "SOPClassUID")
#: what a final step must have (PS3.4 F.7.2.2: "Final State" requirements; a DISCONTINUED step may
#: have performed no series: its Performed Series Sequence may be empty)
FINAL_REQUIRED = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "PerformedSeriesSequence")


class MppsRefused(DimseRefusal):
    """The N-CREATE / N-SET is refused: ``status`` to answer, ``comment``, the offending ``tag``."""

    def __init__(self, status: int, comment: str, tag: int | None = None, error_id: int | None = None) -> None:
        super().__init__(status, comment, tag)
        self.error_id = error_id


@dataclass(slots=True)
class PerformedStep:
    """One stored MPPS instance (a snapshot)."""

    sop_instance_uid: str
    status: str
    dataset: Dataset
    calling_ae: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    worklist_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "status": self.status,
            "calling_ae": self.calling_ae,
            "patient_id": str(ds.get("PatientID", "") or ""),
            "patient_name": str(ds.get("PatientName", "") or ""),
            "modality": str(ds.get("Modality", "") or ""),
            "pps_id": str(ds.get("PerformedProcedureStepID", "") or ""),
            "worklist_ids": self.worklist_ids,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "dataset": ds.to_json_dict(),
        }


def _text(ds: Dataset, keyword: str, length: int) -> str | None:
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or value == "":
        return None
    text = str(value).strip()
    return text[:length] or None


def _status_of(ds: Dataset) -> str:
    return str(ds.get("PerformedProcedureStepStatus", "") or "").strip().upper()


def _empty(ds: Dataset, keyword: str) -> bool:
    value = ds[keyword].value
    return value is None or value == "" or (isinstance(value, (list, DicomSequence)) and len(value) == 0)


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    return int(tag)


def _snapshot(row: PerformedProcedureStep) -> PerformedStep:
    return PerformedStep(row.sop_instance_uid, row.status, Dataset.from_json(row.dataset), row.calling_ae,
                         row.created_at, row.updated_at, sorted(link.worklist_fk for link in row.links if link.worklist_fk))


class MppsStore:
    """MPPS instances in the index database; shares the worklist's tables for the links."""

    def __init__(self, index: Index, *, require_type1: bool = True) -> None:
        self.index = index
        self.worklist = WorklistStore(index)
        self.require_type1 = require_type1

    # N-CREATE ---------------------------------------------------------------------------------------

    def check_create(self, ds: Dataset) -> None:
        """The N-CREATE rules that need no database: status IN PROGRESS, Type 1 attributes present."""
        if "PerformedProcedureStepStatus" not in ds:
            raise MppsRefused(Status.MISSING_ATTRIBUTE, "PerformedProcedureStepStatus missing", _STATUS_TAG)
        if _status_of(ds) != IN_PROGRESS:
            raise MppsRefused(Status.INVALID_ATTRIBUTE_VALUE, "N-CREATE needs PerformedProcedureStepStatus IN PROGRESS",
                              _STATUS_TAG)
        if self.require_type1:
            for keyword in CREATE_TYPE1:
                if keyword not in ds:
                    raise MppsRefused(Status.MISSING_ATTRIBUTE, f"{keyword} missing", _tag(keyword))
                if _empty(ds, keyword):
                    raise MppsRefused(Status.MISSING_ATTRIBUTE_VALUE, f"{keyword} has no value", _tag(keyword))
            for item in ds.ScheduledStepAttributesSequence:
                if not str(item.get("StudyInstanceUID", "") or ""):
                    raise MppsRefused(Status.MISSING_ATTRIBUTE_VALUE, "ScheduledStepAttributesSequence item without "
                                      "StudyInstanceUID", _SSAS)

    def create(self, sop_instance_uid: str, ds: Dataset, *, calling_ae: str | None = None,
               forward_to: Sequence[str] = ()) -> PerformedStep:
        """Store a new MPPS instance (N-CREATE) and start its scheduled steps; queue the N-CREATE for
        each ``forward_to`` destination in the same transaction."""
        if not is_valid_uid(sop_instance_uid):
            raise MppsRefused(Status.INVALID_OBJECT_INSTANCE, "not a valid SOP Instance UID")
        try:
            clean = decoded_copy(ds)
        except Exception as exc:
            raise MppsRefused(Status.PROCESSING_FAILURE, f"cannot decode the attributes: {exc}") from None
        self.check_create(clean)
        clean.PerformedProcedureStepStatus = IN_PROGRESS
        document = json.dumps(clean.to_json_dict(), ensure_ascii=False, separators=(",", ":"))

        def work(s: Session) -> PerformedStep:
            if s.execute(select(PerformedProcedureStep.pk).where(
                    PerformedProcedureStep.sop_instance_uid == sop_instance_uid)).first() is not None:
                raise MppsRefused(Status.DUPLICATE_SOP_INSTANCE, "an MPPS with this SOP Instance UID exists")
            now = dt.datetime.now(dt.UTC)
            row = PerformedProcedureStep(sop_instance_uid=sop_instance_uid, status=IN_PROGRESS, calling_ae=calling_ae,
                                         dataset=document, created_at=now, updated_at=now)
            self._columns(row, clean)
            s.add(row)
            s.flush()
            for item in clean.get("ScheduledStepAttributesSequence") or []:
                self._link(s, row, item)
            s.flush()
            self._move_scheduled(s, row, IN_PROGRESS)
            _queue_forwards(s, forward_to, "N-CREATE", sop_instance_uid, document)
            return _snapshot(row)

        try:
            return self.index.run_write(work, attempts=3)
        except IntegrityError:  # a concurrent N-CREATE of the same UID won
            raise MppsRefused(Status.DUPLICATE_SOP_INSTANCE, "an MPPS with this SOP Instance UID exists") from None

    def _link(self, s: Session, row: PerformedProcedureStep, item: Dataset) -> None:
        sps_id = _text(item, "ScheduledProcedureStepID", 16)
        accession = _text(item, "AccessionNumber", 16)
        rp_id = _text(item, "RequestedProcedureID", 16)
        study = _text(item, "StudyInstanceUID", 64)
        ids = self.worklist.matching_steps(s, sps_id=sps_id, accession_number=accession,
                                           requested_procedure_id=rp_id, study_instance_uid=study)
        have = {link.worklist_fk for link in row.links}
        for wl_id in ids or [None]:
            if wl_id is not None and wl_id in have:
                continue
            have.add(wl_id)
            row.links.append(PerformedStepLink(worklist_fk=wl_id, accession_number=accession,
                                               requested_procedure_id=rp_id, sps_id=sps_id, study_instance_uid=study))

    def _move_scheduled(self, s: Session, row: PerformedProcedureStep, state: str) -> None:
        for link in row.links:
            if link.worklist_fk is not None:
                self.worklist.set_status_in(s, link.worklist_fk, SCHEDULED_STATUS[state])

    @staticmethod
    def _columns(row: PerformedProcedureStep, ds: Dataset) -> None:
        row.patient_id = _text(ds, "PatientID", 64)
        row.patient_name = _text(ds, "PatientName", 324)
        row.modality = _text(ds, "Modality", 16)
        row.performed_station_ae_title = _text(ds, "PerformedStationAETitle", 16)
        row.pps_id = _text(ds, "PerformedProcedureStepID", 16)
        row.pps_start_date = _text(ds, "PerformedProcedureStepStartDate", 8)
        row.pps_start_time = _text(ds, "PerformedProcedureStepStartTime", 16)
        row.pps_end_date = _text(ds, "PerformedProcedureStepEndDate", 8)
        row.pps_end_time = _text(ds, "PerformedProcedureStepEndTime", 16)

    # N-SET ------------------------------------------------------------------------------------------

    def update(self, sop_instance_uid: str, changes: Dataset, *, forward_to: Sequence[str] = ()) -> PerformedStep:
        """Apply an N-SET (queued for each ``forward_to`` destination in the same transaction): refused when the step is final (0x0110, Error ID A710), when it names no
        stored instance (0x0112), changes an attribute N-SET may not change or sets an unknown state
        (0x0106), or would make a final step without its final-state attributes (0x0120 / 0x0121)."""
        try:
            clean = decoded_copy(changes)
        except Exception as exc:
            raise MppsRefused(Status.PROCESSING_FAILURE, f"cannot decode the attributes: {exc}") from None
        new_status = _status_of(clean) if "PerformedProcedureStepStatus" in clean else None
        if new_status is not None and new_status not in STATES:
            raise MppsRefused(Status.INVALID_ATTRIBUTE_VALUE, f"PerformedProcedureStepStatus {new_status!r} is not "
                              "IN PROGRESS, COMPLETED or DISCONTINUED", _STATUS_TAG)

        def work(s: Session) -> PerformedStep:
            row = s.execute(select(PerformedProcedureStep).where(
                PerformedProcedureStep.sop_instance_uid == sop_instance_uid).with_for_update()).scalar_one_or_none()
            if row is None:
                raise MppsRefused(Status.NO_SUCH_SOP_INSTANCE, "no such MPPS instance")
            if row.status in FINAL:
                raise MppsRefused(Status.PROCESSING_FAILURE, "Performed Procedure Step Object may no longer be "
                                  "updated", error_id=ERROR_ID_NO_LONGER_UPDATABLE)
            stored = Dataset.from_json(row.dataset)
            for elem in clean:
                keyword = keyword_for_tag(elem.tag)
                if keyword in NOT_SETTABLE and keyword in stored and stored[keyword].value != elem.value:
                    raise MppsRefused(Status.INVALID_ATTRIBUTE_VALUE, f"{keyword} may not be changed by N-SET", int(elem.tag))
                stored[elem.tag] = copy.deepcopy(elem)
            state = _status_of(stored)
            if state in FINAL:
                for keyword in FINAL_REQUIRED:
                    if keyword not in stored:
                        raise MppsRefused(Status.MISSING_ATTRIBUTE, f"{state} needs {keyword}", _tag(keyword))
                    if _empty(stored, keyword) and not (state == DISCONTINUED and keyword == "PerformedSeriesSequence"):
                        raise MppsRefused(Status.MISSING_ATTRIBUTE_VALUE, f"{state} needs a value for {keyword}", _tag(keyword))
            row.status = state
            row.dataset = json.dumps(stored.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
            row.updated_at = dt.datetime.now(dt.UTC)
            self._columns(row, stored)
            if state in FINAL:
                self._move_scheduled(s, row, state)
            if forward_to:
                _queue_forwards(s, forward_to, "N-SET", sop_instance_uid,
                                json.dumps(clean.to_json_dict(), ensure_ascii=False, separators=(",", ":")))
            s.flush()
            return _snapshot(row)

        return self.index.run_write(work, attempts=3)

    # reading ----------------------------------------------------------------------------------------

    def get(self, sop_instance_uid: str) -> PerformedStep | None:
        with self.index.reading() as s:
            row = s.execute(select(PerformedProcedureStep).where(
                PerformedProcedureStep.sop_instance_uid == sop_instance_uid)).scalar_one_or_none()
            return _snapshot(row) if row is not None else None

    def steps(self, *, status: str | None = None, limit: int | None = None, offset: int = 0) -> list[PerformedStep]:
        stmt = select(PerformedProcedureStep).order_by(PerformedProcedureStep.pk).offset(offset)
        if status is not None:
            stmt = stmt.where(PerformedProcedureStep.status == status)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.index.reading() as s:
            return [_snapshot(row) for row in s.execute(stmt).scalars()]


def _queue_forwards(s: Session, destinations: Sequence[str], service: str, uid: str, document: str) -> None:
    now = dt.datetime.now(dt.UTC)
    for destination in destinations:
        s.add(MppsForward(destination=destination, service=service, sop_instance_uid=uid, dataset=document,
                          state=FORWARD_QUEUED, attempts=0, created_at=now))


@dataclass(frozen=True, slots=True)
class QueuedForward:
    """One message owed to a destination (a row of ``mpps_forwards``)."""

    pk: int
    destination: str
    service: str
    sop_instance_uid: str
    dataset: str
    attempts: int
    last_error: str | None
    created_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"pk": self.pk, "destination": self.destination, "service": self.service,
                "sop_instance_uid": self.sop_instance_uid, "attempts": self.attempts, "last_error": self.last_error,
                "created_at": self.created_at.isoformat()}


class MppsForwardQueue:
    """The forwarding queue of the MPPS add-in in the index database (``mpps_forwards``).

    Per destination, messages go out in the order they were accepted (:meth:`next`); one sender per
    destination at a time is the caller's business (the add-in holds an archive-wide exclusive lock
    per destination, so workers and cluster nodes never interleave)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def next(self, destination: str) -> QueuedForward | None:
        """The oldest message still queued for ``destination``."""
        with self.index.reading() as s:
            row = s.execute(select(MppsForward).where(MppsForward.state == FORWARD_QUEUED,
                                                      MppsForward.destination == destination)
                            .order_by(MppsForward.pk).limit(1)).scalar_one_or_none()
            return _queued(row) if row is not None else None

    def delivered(self, pk: int) -> None:
        """The destination answered: the message leaves the queue."""
        self.index.run_write(lambda s: s.execute(delete(MppsForward).where(MppsForward.pk == pk)))

    def attempted(self, pk: int, error: str, *, give_up: bool) -> None:
        """One more failed attempt; ``give_up``: it was the last (the message is kept as ``failed``)."""
        values: dict[str, Any] = {"attempts": MppsForward.attempts + 1, "last_error": error[:255]}
        if give_up:
            values["state"] = FORWARD_FAILED
        self.index.run_write(lambda s: s.execute(update(MppsForward).where(MppsForward.pk == pk).values(**values)))

    def listing(self, state: str = FORWARD_QUEUED, limit: int = 100) -> list[QueuedForward]:
        with self.index.reading() as s:
            rows = s.execute(select(MppsForward).where(MppsForward.state == state)
                             .order_by(MppsForward.pk).limit(limit)).scalars()
            return [_queued(row) for row in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """(destination, state) -> messages."""
        with self.index.reading() as s:
            return {(d, st): int(n) for d, st, n in s.execute(
                select(MppsForward.destination, MppsForward.state, func.count()).group_by(
                    MppsForward.destination, MppsForward.state)).all()}


def _queued(row: MppsForward) -> QueuedForward:
    return QueuedForward(row.pk, row.destination, row.service, row.sop_instance_uid, row.dataset, row.attempts,
                         row.last_error, row.created_at)


__all__ = [
    "COMPLETED",
    "DISCONTINUED",
    "IN_PROGRESS",
    "MPPS_SOP_CLASS",
    "MppsForwardQueue",
    "MppsRefused",
    "MppsStore",
    "PerformedStep",
    "QueuedForward",
]
