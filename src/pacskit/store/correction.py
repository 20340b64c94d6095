"""Corrections of stored data: merging patient A into patient B (files rewritten, index moved), crash-safely.

The index and the files must always agree, so a merge rewrites every file of A's studies with B's
patient attributes (Patient's Name, Patient ID, Issuer of Patient ID, Birth Date, Sex) under *new*
blob keys, then switches the rows and moves the studies in one transaction, then deletes the old
files. One intent file of the deletion journal (:mod:`pacskit.store.deletion`) lists both the old
and the new keys before any file is written: recovery deletes whichever of them no row refers to.
Killed before the commit, the new files go and A is as it was; after it, the old files go and the
merge is complete. SOP Instance UIDs are kept (the instances are the same acquisitions; the patient
they were filed under was wrong).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydicom
from sqlalchemy import and_, delete, func, select, update

from pacskit.store.blobs import new_key
from pacskit.store.deletion import Deleter, StudyDeletion, _Intent, finish_interrupted, journal_folder
from pacskit.store.index.extract import sha256_file
from pacskit.store.index.models import Instance, Patient, Study

if TYPE_CHECKING:
    from pacskit.store.datastore import DataStore

log = logging.getLogger("pacskit.store.correction")

_PATIENT_ATTRS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")


class CorrectionError(ValueError):
    """The correction cannot be done as asked (nothing was changed)."""


@dataclass(slots=True)
class MergeReport:
    source: str
    target: str
    dry_run: bool
    studies: list[StudyDeletion] = field(default_factory=list)  # what moved (whole studies)

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.studies)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "dry_run": self.dry_run,
                "instances": self.instances, "studies": [s.to_json() for s in self.studies]}


def _patient(store: DataStore, ident: str) -> Patient:
    pid, _, issuer = ident.partition("|")
    with store.index.reading() as s:
        rows = s.scalars(select(Patient).where(and_(Patient.patient_id == pid, Patient.issuer_of_patient_id == issuer)
                                                if issuer else Patient.patient_id == pid)).all()
    if not rows:
        raise CorrectionError(f"no patient {ident!r} in the archive")
    if len(rows) > 1:
        raise CorrectionError(f"patient ID {pid!r} has several issuers: name it as ID|ISSUER")
    return rows[0]


def merge_patients(
    store: DataStore,
    source: str,
    target: str,
    *,
    dry_run: bool = False,
    on_study: Callable[[StudyDeletion], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> MergeReport:
    """Merge patient ``source`` into ``target`` (Patient IDs, ``ID|ISSUER`` to name the issuer): every
    study of the source is filed under the target, its files rewritten with the target's patient
    attributes; the source patient row goes. ``on_study`` is called for each study moved, after the
    commit (audit it there). ``before_commit`` is for tests (a crash point)."""
    src = _patient(store, source)
    dst = _patient(store, target)
    if src.pk == dst.pk:
        raise CorrectionError("source and target are the same patient")
    studies, rows, _nf = Deleter(store).select("patient", [f"{src.patient_id}|{src.issuer_of_patient_id}"
                                                           if src.issuer_of_patient_id else src.patient_id or ""])
    report = MergeReport(source, target, dry_run, list(studies.values()))
    if dry_run or not rows:
        return report
    values = {"PatientName": dst.patient_name or "", "PatientID": dst.patient_id or "",
              "IssuerOfPatientID": dst.issuer_of_patient_id or "", "PatientBirthDate": dst.patient_birth_date or "",
              "PatientSex": dst.patient_sex or ""}

    def switch(s: Any) -> None:
        s.execute(update(Study).where(Study.pk.in_(list(studies))).values(patient_fk=dst.pk))
        for pk in (src.pk, dst.pk):
            n = s.scalar(select(func.count()).select_from(Study).where(Study.patient_fk == pk)) or 0
            s.execute(update(Patient).where(Patient.pk == pk).values(num_studies=n))
        if not s.scalar(select(func.count()).select_from(Study).where(Study.patient_fk == src.pk)):
            s.execute(delete(Patient).where(Patient.pk == src.pk))

    _apply(store, rows, studies, values, switch, f"merge {source} into {target}", on_study, before_commit)
    log.warning("merged patient %s into %s: %d studies, %d instances", source, target, len(studies), report.instances)
    return report


def _apply(store: DataStore, rows: dict[int, list[Any]], studies: dict[int, StudyDeletion], values: dict[str, str],
           switch: Callable[[Any], None], what: str, on_study: Callable[[StudyDeletion], None] | None,
           before_commit: Callable[[], None] | None, *,
           transform: Callable[[Any], dict[str, Any]] | None = None) -> None:
    """Rewrite every file of ``rows`` with ``values`` under new keys, then in one transaction point the
    rows at them and run ``switch``; then delete the old files (see the module docstring).

    ``transform(dataset)`` instead of ``values``: changes the dataset in place and returns extra
    column values of its instance row (e.g. the new transfer syntax)."""
    finish_interrupted(store)
    folder = journal_folder(store)
    plan = [(r, new_key()) for study_rows in rows.values() for r in study_rows]
    intent = _Intent(folder, [k for r, new in plan for k in (r.blob_key, new)], what) if folder else None
    written: dict[int, tuple[str, int, str, dict[str, Any]]] = {}  # pk -> (new key, size, sha256, extra columns)
    try:
        with store.writing():
            for row, key in plan:
                written[row.pk] = _rewrite(store, row.blob_key, key, values, transform)
            if before_commit is not None:
                before_commit()

            def work(s: Any) -> None:
                for pk, (key, size, sha, extra) in written.items():
                    s.execute(update(Instance).where(Instance.pk == pk).values(blob_key=key, size=size, sha256=sha,
                                                                               **extra))
                switch(s)

            store.index.run_write(work)
            store.index.sync()  # the rows point to the new files for good before the old ones go
            for part in studies.values():
                part.done = True
                if on_study is not None:
                    try:
                        on_study(part)
                    except Exception:
                        log.exception("after correcting study %s", part.study_instance_uid)
            for row, _key in plan:
                store.blobs.delete(row.blob_key)
            sync_removals = getattr(store.blobs, "sync_removals", None)
            if sync_removals is not None:
                sync_removals([row.blob_key for row, _key in plan])
    except BaseException:
        # Not committed (or unknown): the new files go if no row refers to them (recovery would too).
        for _row, key in plan:
            try:
                if store.blobs.exists(key) and not store.index.is_blob_referenced(key):
                    store.blobs.delete(key)
            except Exception:
                pass
        raise
    finally:
        if intent is not None:
            intent.close()


def move_series(
    store: DataStore,
    series_instance_uid: str,
    study_instance_uid: str,
    *,
    dry_run: bool = False,
    on_study: Callable[[StudyDeletion], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> MergeReport:
    """File the series ``series_instance_uid`` under the existing study ``study_instance_uid``: its files
    are rewritten with that study's attributes and its patient's; the source study goes if it is left
    empty (and its patient, if that was its last study). ``on_study`` gets the moved part."""
    from pacskit.store.index.models import Series

    with store.index.reading() as s:
        target = s.execute(select(Study, Patient).join(Patient, Study.patient_fk == Patient.pk)
                           .where(Study.study_instance_uid == study_instance_uid)).one_or_none()
        series = s.scalars(select(Series).where(Series.series_instance_uid == series_instance_uid)).one_or_none()
    if target is None:
        raise CorrectionError(f"no study {study_instance_uid} in the archive")
    if series is None:
        raise CorrectionError(f"no series {series_instance_uid} in the archive")
    study, patient = target
    if series.study_fk == study.pk:
        raise CorrectionError("the series is in that study already")
    studies, rows, _nf = Deleter(store).select("series", [series_instance_uid])
    report = MergeReport(series_instance_uid, study_instance_uid, dry_run, list(studies.values()))
    if dry_run or not rows:
        return report
    values = {"StudyInstanceUID": study.study_instance_uid, "StudyDate": study.study_date or "",
              "StudyTime": study.study_time or "", "AccessionNumber": study.accession_number or "",
              "StudyID": study.study_id or "", "ReferringPhysicianName": study.referring_physician_name or "",
              "StudyDescription": study.study_description or "",
              "PatientName": patient.patient_name or "", "PatientID": patient.patient_id or "",
              "IssuerOfPatientID": patient.issuer_of_patient_id or "",
              "PatientBirthDate": patient.patient_birth_date or "", "PatientSex": patient.patient_sex or ""}
    source_pk = series.study_fk
    n = report.instances

    def switch(s: Any) -> None:
        s.execute(update(Series).where(Series.pk == series.pk).values(study_fk=study.pk))
        s.execute(update(Study).where(Study.pk == study.pk).values(
            num_series=Study.num_series + 1, num_instances=Study.num_instances + n))
        s.execute(update(Study).where(Study.pk == source_pk).values(
            num_series=Study.num_series - 1, num_instances=Study.num_instances - n))
        store.index._refresh_modalities(s, study.pk)  # noqa: SLF001 - the index's own rule
        if s.scalar(select(func.count()).select_from(Series).where(Series.study_fk == source_pk)):
            store.index._refresh_modalities(s, source_pk)  # noqa: SLF001
            return
        patient_fk = s.scalar(select(Study.patient_fk).where(Study.pk == source_pk))
        s.execute(delete(Study).where(Study.pk == source_pk))
        s.execute(update(Patient).where(Patient.pk == patient_fk).values(num_studies=Patient.num_studies - 1))
        if not s.scalar(select(func.count()).select_from(Study).where(Study.patient_fk == patient_fk)):
            s.execute(delete(Patient).where(Patient.pk == patient_fk))

    _apply(store, rows, studies, values, switch, f"move series {series_instance_uid} to {study_instance_uid}",
           on_study, before_commit)
    log.warning("moved series %s (%d instances) to study %s", series_instance_uid, n, study_instance_uid)
    return report


def update_patient(
    store: DataStore,
    ident: str,
    *,
    name: str | None = None,
    birth_date: str | None = None,
    sex: str | None = None,
    dry_run: bool = False,
    on_study: Callable[[StudyDeletion], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> MergeReport:
    """Change a patient's Name, Birth Date or Sex (those given): the index row and every file of the
    patient's studies (rewritten as for a merge). ``ident``: Patient ID (``ID|ISSUER``)."""
    from pacskit.store.index.models import normalise_person_name

    patient = _patient(store, ident)
    changes = {k: v for k, v in (("PatientName", name), ("PatientBirthDate", birth_date), ("PatientSex", sex))
               if v is not None}
    if not changes:
        raise CorrectionError("nothing to change: give a name, a birth date or a sex")
    studies, rows, _nf = Deleter(store).select("patient", [ident])
    report = MergeReport(ident, ident, dry_run, list(studies.values()))
    if dry_run:
        return report
    row_values: dict[str, Any] = {}
    if name is not None:
        row_values.update(patient_name=name or None, patient_name_search=normalise_person_name(name or None))
    if birth_date is not None:
        row_values["patient_birth_date"] = birth_date or None
    if sex is not None:
        row_values["patient_sex"] = sex or None

    def switch(s: Any) -> None:
        s.execute(update(Patient).where(Patient.pk == patient.pk).values(**row_values))

    if rows:
        _apply(store, rows, studies, changes, switch, f"update patient {ident}", on_study, before_commit)
    else:
        store.index.run_write(switch)
        store.index.sync()
    log.warning("patient %s updated: %s", ident, ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    return report


_OPTIONAL = ("IssuerOfPatientID", "StudyDescription", "ReferringPhysicianName", "StudyTime")


def _rewrite(store: DataStore, old_key: str, key: str, values: dict[str, str],
             transform: Callable[[Any], dict[str, Any]] | None = None) -> tuple[str, int, str, dict[str, Any]]:
    """Write the blob ``old_key`` with ``values`` (or ``transform``) as the new blob ``key``;
    (key, size, sha256, extra row columns)."""
    path = store.blobs.path(old_key)
    ds = pydicom.dcmread(path) if path is not None else pydicom.dcmread(store.blobs.open(old_key))
    extra = transform(ds) if transform is not None else {}
    for keyword, value in values.items():
        if value:
            setattr(ds, keyword, value)
        elif keyword in ds:
            if keyword in _OPTIONAL:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, "")  # type 2 (Patient, General Study modules): present, empty
    fd, tmp = tempfile.mkstemp(prefix="merge-", suffix=".dcm", dir=store.temp_dir)
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        size = os.path.getsize(tmp)
        sha = sha256_file(tmp)
        key = store.blobs.put_file(tmp, key_hint=key)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return key, size, sha, extra


__all__ = ["CorrectionError", "MergeReport", "merge_patients", "move_series", "update_patient"]
