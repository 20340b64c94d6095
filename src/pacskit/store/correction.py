"""Corrections of stored data: merging patient A into patient B (files rewritten, index moved), crash-safely.

The index and the files must always agree, so a merge rewrites every file of A's studies with B's
patient attributes (Patient's Name, Patient ID, Issuer of Patient ID, Birth Date, Sex) under *new*
blob keys, then switches the rows and moves the studies in one transaction, then deletes the old
files. One intent of the deletion journal (:mod:`pacskit.store.deletion`: a local intent file, or on
a cluster node a shared intent in the database) lists both the old and the new keys before any file
is written: recovery deletes whichever of them no row refers to. Killed before the commit, the new
files go and A is as it was; after it, the old files go and the merge is complete. On a cluster the
node that recovers a dead node does this for it, and the rows' commit is fenced on the intent still
being ours. SOP Instance UIDs are kept (the instances are the same acquisitions; the patient
they were filed under was wrong).

:func:`correct_attributes` changes any descriptive attribute of a study or a series the same way,
recording the old values in each file's Original Attributes Sequence, with the UID policy the admin
chooses (keep the UIDs, or new ones with a Source Image Sequence reference to what they replace).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pydicom
from sqlalchemy import and_, delete, func, select, update

from pacskit.store.blobs import new_key
from pacskit.store.deletion import Deleter, StudyDeletion, _SharedIntent, finish_interrupted, open_intent
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
    plan = [(r, new_key()) for study_rows in rows.values() for r in study_rows]
    # local intent file, or in a cluster the shared database: a node that dies mid-correction is
    # finished by the node that recovers it (each listed blob no row refers to is deleted)
    intent = open_intent(store, [k for r, new in plan for k in (r.blob_key, new)], what)
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
                if isinstance(intent, _SharedIntent):  # a node that took our intent over must not see this commit
                    intent.fence(s)

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
        if isinstance(intent, _SharedIntent):
            intent.done = True
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


#: keyword -> column of the study / series row that the index keeps for it (others live in the files only)
_STUDY_COLUMNS = {"StudyDate": "study_date", "StudyTime": "study_time", "AccessionNumber": "accession_number",
                  "StudyID": "study_id", "ReferringPhysicianName": "referring_physician_name",
                  "StudyDescription": "study_description"}
_SERIES_COLUMNS = {"Modality": "modality", "SeriesNumber": "series_number", "SeriesDescription": "series_description",
                   "BodyPartExamined": "body_part_examined"}
#: never changed by an attribute correction: identity (the UID policy decides), the patient (update_patient,
#: merge_patients), and what is not a descriptive attribute
_NOT_CORRECTABLE = frozenset({
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "TransferSyntaxUID", "SpecificCharacterSet",
    "OriginalAttributesSequence", "SourceImageSequence", *_PATIENT_ATTRS, "OtherPatientIDsSequence",
})
UidPolicy = Literal["keep", "new"]


@dataclass(slots=True)
class CorrectionReport:
    level: str
    uid: str
    uid_policy: str
    dry_run: bool
    changes: dict[str, str]
    studies: list[StudyDeletion] = field(default_factory=list)
    #: old UID -> new UID (studies, series and instances), with ``uid_policy = "new"``
    new_uids: dict[str, str] = field(default_factory=dict)

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.studies)

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "uid": self.uid, "uid_policy": self.uid_policy, "dry_run": self.dry_run,
                "changes": self.changes, "instances": self.instances, "new_uids": self.new_uids,
                "studies": [s.to_json() for s in self.studies]}


def _checked_changes(level: str, changes: dict[str, str]) -> dict[str, str]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from pacskit.store.workflow.worklist import check_entry_values

    if not changes:
        raise CorrectionError("nothing to change: give attribute=value pairs")
    if level not in ("study", "series", "instance"):
        raise CorrectionError(f"level must be study, series or instance, not {level!r}")
    probe = pydicom.Dataset()
    for keyword, value in changes.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise CorrectionError(f"{keyword!r} is not a DICOM keyword")
        if keyword in _NOT_CORRECTABLE or (tag >> 16) in (0x0002, 0x0000):
            raise CorrectionError(f"{keyword} cannot be corrected this way"
                                  + (" (update the patient, or merge patients)" if keyword in _PATIENT_ATTRS else ""))
        vr = dictionary_VR(tag)
        if vr == "SQ" or vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            raise CorrectionError(f"{keyword} ({vr}) cannot be corrected this way")
        if level == "study" and keyword in _SERIES_COLUMNS:
            raise CorrectionError(f"{keyword} is a series attribute: correct the series")
        if level == "series" and keyword in _STUDY_COLUMNS:
            raise CorrectionError(f"{keyword} is a study attribute: correct the study")
        if keyword == "SeriesNumber" and value and not value.strip().lstrip("+-").isdigit():
            raise CorrectionError(f"SeriesNumber must be an integer, not {value!r}")
        with warnings.catch_warnings():  # pydicom warns of the invalid value the check below names
            warnings.simplefilter("ignore")
            probe.add_new(tag, vr, value)
    try:
        check_entry_values(probe)
    except ValueError as exc:
        raise CorrectionError(str(exc)) from None
    return dict(changes)


def correct_attributes(
    store: DataStore,
    level: Literal["study", "series"],
    uid: str,
    changes: dict[str, str],
    *,
    uid_policy: UidPolicy = "keep",
    reason: str = "",
    dry_run: bool = False,
    on_study: Callable[[StudyDeletion], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> CorrectionReport:
    """Change attributes of a stored study or series (keyword -> value; an empty value empties a type 2
    attribute and removes an optional one): the index rows and every file, crash-safely (as a merge).

    Each rewritten file records what was there before in an Original Attributes Sequence item
    (PS3.3 C.12.1: the old values, the time, ``PACSKIT`` as the modifying system, ``CORRECT`` as the
    reason). ``uid_policy``: ``"keep"`` keeps every UID (the same objects, described better);
    ``"new"`` gives the study (level study) or the series new UIDs and every instance a new SOP
    Instance UID, with a Source Image Sequence item referencing the instance it replaces: copies that
    went elsewhere before the correction can no longer be mistaken for the corrected ones. The old ->
    new UIDs are in the report. Patient attributes are corrected with :func:`update_patient`."""
    import datetime as dt

    from pydicom.uid import generate_uid

    from pacskit.store.index.models import Series

    changes = _checked_changes(level, changes)
    if uid_policy not in ("keep", "new"):
        raise CorrectionError(f"uid_policy must be keep or new, not {uid_policy!r}")
    with store.index.reading() as s:
        if level == "study":
            target_study = s.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
            if target_study is None:
                raise CorrectionError(f"no study {uid} in the archive")
            study_pk, series_pks = target_study.pk, list(s.scalars(select(Series.pk).where(Series.study_fk == target_study.pk)))
        else:
            target_series = s.scalars(select(Series).where(Series.series_instance_uid == uid)).one_or_none()
            if target_series is None:
                raise CorrectionError(f"no series {uid} in the archive")
            study_pk, series_pks = target_series.study_fk, [target_series.pk]
        series_uids = dict(s.execute(select(Series.pk, Series.series_instance_uid).where(Series.pk.in_(series_pks))).all())
    studies, rows, _nf = Deleter(store).select(level, [uid])
    report = CorrectionReport(level, uid, uid_policy, dry_run, changes, list(studies.values()))
    if dry_run or not rows:
        return report
    new_uids: dict[str, str] = {}
    if uid_policy == "new":
        if level == "study":
            new_uids[uid] = generate_uid(prefix=None)
        for series_uid in series_uids.values():
            new_uids[series_uid] = generate_uid(prefix=None)
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S.%f+0000")

    transform = _attribute_transform(changes, uid_policy, new_uids, now)

    study_values, series_values = _column_values(changes)

    def switch(s: Any) -> None:
        if level == "study" and uid in new_uids:
            study_values["study_instance_uid"] = new_uids[uid]
        if study_values:
            s.execute(update(Study).where(Study.pk == study_pk).values(**study_values))
        for series_pk, series_uid in series_uids.items():
            values = dict(series_values)
            if series_uid in new_uids:
                values["series_instance_uid"] = new_uids[series_uid]
            if values:
                s.execute(update(Series).where(Series.pk == series_pk).values(**values))
        if "modality" in series_values:
            store.index._refresh_modalities(s, study_pk)  # noqa: SLF001 - the index's own rule

    what = f"correct {level} {uid}: " + ", ".join(f"{k}={v!r}" for k, v in changes.items())
    _apply(store, rows, studies, {}, switch, what, on_study, before_commit, transform=transform)
    report.new_uids = new_uids
    log.warning("%s (UIDs %s)%s", what, "new" if uid_policy == "new" else "kept", f": {reason}" if reason else "")
    return report


def _attribute_transform(changes: dict[str, str], uid_policy: UidPolicy, new_uids: dict[str, str],
                         now: str) -> Callable[[Any], dict[str, Any]]:
    """The in-place change of one file of a correction (see :func:`correct_attributes`)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    def transform(ds: Any) -> dict[str, Any]:
        old = pydicom.Dataset()
        for keyword in changes:
            if keyword in ds:
                old[keyword] = copy.deepcopy(ds[keyword])  # a copy: the element itself is changed below
            else:
                tag = tag_for_keyword(keyword)
                assert tag is not None
                old.add_new(tag, dictionary_VR(tag), None)  # was absent: recorded empty
        extra: dict[str, Any] = {}
        if uid_policy == "new":
            old_sop = str(ds.SOPInstanceUID)
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                old[keyword] = copy.deepcopy(ds[keyword])
            new_sop = new_uids.setdefault(old_sop, generate_uid(prefix=None))
            ds.SOPInstanceUID = new_sop
            if "MediaStorageSOPInstanceUID" in ds.file_meta:
                ds.file_meta.MediaStorageSOPInstanceUID = new_sop
            ds.SeriesInstanceUID = new_uids.get(str(ds.SeriesInstanceUID), ds.SeriesInstanceUID)
            ds.StudyInstanceUID = new_uids.get(str(ds.StudyInstanceUID), ds.StudyInstanceUID)
            source = pydicom.Dataset()
            source.ReferencedSOPClassUID = ds.SOPClassUID
            source.ReferencedSOPInstanceUID = old_sop
            ds.SourceImageSequence = DicomSequence([*(ds.get("SourceImageSequence") or []), source])
            extra["sop_instance_uid"] = new_sop
        for keyword, value in changes.items():
            tag = tag_for_keyword(keyword)
            assert tag is not None
            if value:
                ds.add_new(tag, dictionary_VR(tag), value)
            elif keyword in ds:
                if keyword in _OPTIONAL or keyword not in _STUDY_COLUMNS and keyword not in _SERIES_COLUMNS:
                    del ds[keyword]
                else:
                    ds[keyword].value = ""
        item = pydicom.Dataset()
        item.ModifiedAttributesSequence = DicomSequence([old])
        item.AttributeModificationDateTime = now
        item.ModifyingSystem = "PACSKIT"
        item.ReasonForTheAttributeModification = "CORRECT"
        item.SourceOfPreviousValues = ""
        ds.OriginalAttributesSequence = DicomSequence([*(ds.get("OriginalAttributesSequence") or []), item])
        return extra

    return transform


def _column_values(changes: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study and series index columns a correction changes (column -> value)."""
    from pacskit.store.index.models import normalise_person_name

    study_values: dict[str, Any] = {}
    series_values: dict[str, Any] = {}
    for keyword, value in changes.items():
        if keyword in _STUDY_COLUMNS:
            study_values[_STUDY_COLUMNS[keyword]] = value or None
            if keyword == "ReferringPhysicianName":
                study_values["referring_physician_name_search"] = normalise_person_name(value or None)
        elif keyword in _SERIES_COLUMNS:
            series_values[_SERIES_COLUMNS[keyword]] = (int(value) if value else None) if keyword == "SeriesNumber" \
                else (value or None)
    return study_values, series_values


def correct_instances(
    store: DataStore,
    sop_instance_uids: Sequence[str],
    changes: dict[str, str],
    *,
    reason: str = "",
    on_study: Callable[[StudyDeletion], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> CorrectionReport:
    """Change attributes of some stored instances (keyword -> value, as :func:`correct_attributes`),
    keeping every UID: the files are rewritten crash-safely with an Original Attributes Sequence
    item, and the study and series rows of those instances take the new values of their indexed
    attributes (StudyDescription, Modality...). For per-instance rules (the routing add-in's
    ``correct`` action): a study or series corrected as a whole is :func:`correct_attributes`.
    Instances not (or no longer) in the archive are skipped; the report lists what was changed."""
    import datetime as dt

    from pacskit.store.index.models import Series

    changes = _checked_changes("instance", changes)
    uids = [u for u in dict.fromkeys(sop_instance_uids) if u]
    report = CorrectionReport("instance", uids[0] if len(uids) == 1 else f"{len(uids)} instances", "keep", False,
                              changes)
    if not uids:
        return report
    studies, rows, _missing = Deleter(store).select("instance", uids)
    report.studies = list(studies.values())
    if not rows:
        return report
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S.%f+0000")
    transform = _attribute_transform(changes, "keep", {}, now)
    study_values, series_values = _column_values(changes)
    series_uids = sorted({r.series_uid for study_rows in rows.values() for r in study_rows})

    def switch(s: Any) -> None:
        if study_values:
            s.execute(update(Study).where(Study.pk.in_(list(studies))).values(**study_values))
        if series_values:
            s.execute(update(Series).where(Series.series_instance_uid.in_(series_uids)).values(**series_values))
            if "modality" in series_values:
                for study_pk in studies:
                    store.index._refresh_modalities(s, study_pk)  # noqa: SLF001 - the index's own rule

    what = f"correct {report.uid}: " + ", ".join(f"{k}={v!r}" for k, v in changes.items())
    _apply(store, rows, studies, {}, switch, what, on_study, before_commit, transform=transform)
    log.warning("%s (UIDs kept)%s", what, f": {reason}" if reason else "")
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


__all__ = ["CorrectionError", "CorrectionReport", "MergeReport", "UidPolicy", "correct_attributes", "correct_instances",
           "merge_patients",
           "move_series", "update_patient"]
