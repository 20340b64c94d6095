"""Which study and patient hold given instances or studies: the lookups record keepers make.

The transaction log and the audit trail name the study and patient of the instances an operation
touched; both ask the index in batches of bound UID lists, on a connection the caller owns (their own
engine, not the ingest's).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select

from pacskit.store.index.models import Instance, Patient, Series, Study

BATCH = 500  # UIDs per IN list (bound parameters; well under every backend's limit)


def _batches(uids: Iterable[str]) -> Iterable[list[str]]:
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), BATCH):
        yield ordered[start : start + BATCH]


def instances_to_studies(conn: Connection, sop_uids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """SOP Instance UID -> (Study Instance UID, Patient ID) for the instances the index holds."""
    found: dict[str, tuple[str, str | None]] = {}
    for batch in _batches(sop_uids):
        stmt = (
            select(Instance.sop_instance_uid, Study.study_instance_uid, Patient.patient_id)
            .join(Series, Instance.series_fk == Series.pk)
            .join(Study, Series.study_fk == Study.pk)
            .join(Patient, Study.patient_fk == Patient.pk)
            .where(Instance.sop_instance_uid.in_(batch))
        )
        for sop, study, patient in conn.execute(stmt):
            found[sop] = (study, patient)
    return found


def studies_to_patients(conn: Connection, study_uids: Iterable[str]) -> dict[str, str | None]:
    """Study Instance UID -> Patient ID for the studies the index holds."""
    found: dict[str, str | None] = {}
    for batch in _batches(study_uids):
        stmt = (
            select(Study.study_instance_uid, Patient.patient_id)
            .join(Patient, Study.patient_fk == Patient.pk)
            .where(Study.study_instance_uid.in_(batch))
        )
        for study, patient in conn.execute(stmt):
            found[study] = patient
    return found
