"""Archive management in the admin API: deleting patients, studies, series and instances.

=====================================  ===========================================================
``POST /store/merge-patients``         body ``{"source": "A", "target": "B", "dry_run": false}``: patient
                                       A's studies filed under B, files rewritten
                                       (:mod:`pacskit.store.correction`), audited (action U)
``POST /store/move-series``            body ``{"series_instance_uid": ..., "study_instance_uid": ...}``
``POST /store/correct``                body ``{"level": "study", "uid": ..., "changes": {"StudyDescription":
                                       "CT CHEST"}, "uid_policy": "keep", "forward_to": ["WS1"]}``:
                                       study/series attributes corrected, files rewritten, audited;
                                       the corrected instances sent to ``forward_to`` (C-STORE)
``POST /store/compress``               body ``{"level": "study", "uids": [...], "syntax": "j2k"}``
``POST /store/delete``                 body ``{"level": "study", "uids": [...], "dry_run": false,
                                       "reason": "...", "user": "..."}``: the deletion report
                                       (:class:`pacskit.store.deletion.DeletionReport` as JSON)
=====================================  ===========================================================

The deletion runs in the server's process (the one that owns the data folder), in a thread, with
the store's crash-safe protocol (:mod:`pacskit.store.deletion`), and each study removed is reported
to the audit trail: *DICOM Study Deleted* (PS3.15 A.5.3.5) when the whole study went, *DICOM
Instances Accessed* with action D when part of it did. ``pacskit delete`` calls this route when the
server of the folder runs; otherwise it deletes itself, holding the data folder's lock
(:func:`deleting_offline`).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from pacskit.audit.service import Audit
from pacskit.store.deletion import Deleter, StudyDeletion

if TYPE_CHECKING:
    from pacskit.config.settings import ServerSettings
    from pacskit.server.server import Server
    from pacskit.store import DataStore

log = logging.getLogger("pacskit.admin")


class MergeRequest(BaseModel):
    source: str = Field(min_length=1, description="Patient ID merged away (ID|ISSUER to name the issuer)")
    target: str = Field(min_length=1, description="Patient ID that receives the studies")
    dry_run: bool = False
    reason: str = Field("", max_length=1024)
    user: str = Field("", max_length=256)


def merge(store: DataStore, audit: Audit, request: MergeRequest, *, user: str) -> dict[str, Any]:
    """Merge two patients (blocking); each study moved is audited as Instances Accessed, action U."""
    from pacskit.store.correction import merge_patients

    def audited(part: StudyDeletion) -> None:
        audit.instances_accessed(part.study_instance_uid, request.target.partition("|")[0], user=user,
                                 action="U", sop_classes=part.sop_classes)

    report = merge_patients(store, request.source, request.target, dry_run=request.dry_run, on_study=audited)
    if not request.dry_run and report.studies:
        log.warning("patient %s merged into %s by %s (%d studies)%s", request.source, request.target, user,
                    len(report.studies), f": {request.reason}" if request.reason else "")
    return report.to_json()


class MoveSeriesRequest(BaseModel):
    series_instance_uid: str = Field(min_length=1)
    study_instance_uid: str = Field(min_length=1, description="the existing study that receives the series")
    dry_run: bool = False
    reason: str = Field("", max_length=1024)
    user: str = Field("", max_length=256)


def move(store: DataStore, audit: Audit, request: MoveSeriesRequest, *, user: str) -> dict[str, Any]:
    """Move a series to another study (blocking); audited as Instances Accessed (U) on both studies."""
    from pacskit.store.correction import move_series

    def audited(part: StudyDeletion) -> None:
        for study in (part.study_instance_uid, request.study_instance_uid):
            audit.instances_accessed(study, part.patient_id, user=user, action="U", sop_classes=part.sop_classes)

    report = move_series(store, request.series_instance_uid, request.study_instance_uid,
                         dry_run=request.dry_run, on_study=audited)
    if not request.dry_run:
        log.warning("series %s moved to study %s by %s%s", request.series_instance_uid, request.study_instance_uid,
                    user, f": {request.reason}" if request.reason else "")
    return report.to_json()


class CorrectRequest(BaseModel):
    level: Literal["study", "series"]
    uid: str = Field(min_length=1, description="Study or Series Instance UID")
    changes: dict[str, str] = Field(min_length=1, description="keyword -> new value ('' empties it)")
    uid_policy: Literal["keep", "new"] = Field("keep", description="keep the UIDs, or give new ones")
    forward_to: list[str] = Field(default_factory=list, description="AE titles that get the corrected instances")
    dry_run: bool = False
    reason: str = Field("", max_length=1024)
    user: str = Field("", max_length=256)


def correct(store: DataStore, audit: Audit, request: CorrectRequest, *, user: str) -> dict[str, Any]:
    """Correct study or series attributes (blocking); audited as Instances Accessed (U), the new
    study too when it got a new UID."""
    from pacskit.store.correction import correct_attributes

    report_holder: dict[str, Any] = {}

    def audited(part: StudyDeletion) -> None:
        audit.instances_accessed(part.study_instance_uid, part.patient_id, user=user, action="U",
                                 sop_classes=part.sop_classes)
        report_holder.setdefault("parts", []).append(part)

    report = correct_attributes(store, request.level, request.uid, request.changes, uid_policy=request.uid_policy,
                                reason=request.reason, dry_run=request.dry_run, on_study=audited)
    for part in report_holder.get("parts", []):
        new_study = report.new_uids.get(part.study_instance_uid)
        if new_study:
            audit.instances_accessed(new_study, part.patient_id, user=user, action="C", sop_classes=part.sop_classes)
    if not request.dry_run:
        log.warning("%s %s corrected by %s: %s%s", request.level, request.uid, user,
                    ", ".join(f"{k}={v!r}" for k, v in request.changes.items()),
                    f" ({request.reason})" if request.reason else "")
    return report.to_json()


async def forward_corrected(server: Server, report: dict[str, Any], destinations: list[str]) -> dict[str, Any]:
    """C-STORE the instances of a correction to each of ``destinations`` (the corrected files, as stored)."""
    from sqlalchemy import select

    from pacskit.dicom.status import status_category
    from pacskit.net import NetError, RequestedContext
    from pacskit.store import Instance, Series, Study

    store = server.store
    assert store is not None
    level, uid = report["level"], report["uid"]
    uid = report["new_uids"].get(uid, uid)
    column = Study.study_instance_uid if level == "study" else Series.series_instance_uid

    def instances() -> list[tuple[str, str, str, str]]:
        with store.index.reading() as s:
            return [tuple(r) for r in s.execute(  # type: ignore[misc]
                select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid, Instance.blob_key)
                .join(Series, Instance.series_fk == Series.pk).join(Study, Series.study_fk == Study.pk)
                .where(column == uid).order_by(Instance.pk)).all()]

    rows = await asyncio.to_thread(instances)
    contexts = [RequestedContext(sop_class, tuple(dict.fromkeys((ts, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"))))
                for sop_class, ts in dict.fromkeys((r[1], r[2]) for r in rows)][:128]
    outcome: dict[str, Any] = {}
    for title in destinations:
        sent, failed, errors = 0, 0, []
        try:
            async with await server.dicom_request.associate(title, contexts) as assoc:
                for sop_uid, _cls, _ts, key in rows:
                    path = store.blobs.path(key)
                    try:
                        if path is None:
                            raise ValueError("the blob store has no file paths")
                        rsp = await assoc.store(path)
                    except (NetError, ValueError, OSError) as exc:
                        failed += 1
                        errors.append(f"{sop_uid}: {exc}")
                        continue
                    if status_category(rsp.status) in ("Success", "Warning"):
                        sent += 1
                    else:
                        failed += 1
                        errors.append(f"{sop_uid}: status 0x{rsp.status:04X}")
        except (NetError, OSError, LookupError) as exc:
            failed = len(rows) - sent
            errors.append(str(exc))
        if failed:
            log.warning("corrected %s %s: %d of %d instances not sent to %s", level, uid, failed, len(rows), title)
        outcome[title] = {"sent": sent, "failed": failed, "errors": errors[:20]}
    return outcome


class CompressRequest(BaseModel):
    level: Literal["patient", "study", "series", "instance"]
    uids: list[str] = Field(min_length=1)
    syntax: Literal["rle", "j2k", "jpeg-ls"] = "j2k"


class DeleteRequest(BaseModel):
    level: Literal["patient", "study", "series", "instance"]
    uids: list[str] = Field(min_length=1, description="Patient IDs (ID|ISSUER to name the issuer) or UIDs")
    dry_run: bool = Field(False, description="say what would be deleted; change nothing")
    reason: str = Field("", max_length=1024, description="why (logged with the deletion)")
    user: str = Field("", max_length=256, description="who asked (the audit's active participant); empty: admin-api")


def report_deleted(audit: Audit, part: StudyDeletion, *, user: str, address: str | None = None) -> bool:
    """Audit one study's deletion: Study Deleted when the whole study went, else Instances Accessed (D)."""
    if part.whole_study:
        return audit.study_deleted(part.study_instance_uid, part.patient_id, user=user, address=address,
                                   sop_classes=part.sop_classes)
    return audit.instances_accessed(part.study_instance_uid, part.patient_id, user=user, action="D",
                                    address=address, sop_classes=part.sop_classes)


def delete(store: DataStore, audit: Audit, request: DeleteRequest, *, user: str) -> dict[str, Any]:
    """Run one deletion (blocking) and return its report as JSON."""
    def audited(part: StudyDeletion) -> None:
        report_deleted(audit, part, user=user)

    report = Deleter(store).delete(request.level, request.uids, dry_run=request.dry_run, on_study=audited,
                                   reason=request.reason)
    if not request.dry_run and report.studies:
        log.warning("%s by %s%s", report.summary(), user, f" ({request.reason})" if request.reason else "")
    return report.to_json()


@contextmanager
def offline_audit(settings: ServerSettings, store: DataStore) -> Iterator[Audit]:
    """The audit trail for a command working on a stopped server's folder: the audit add-in's table in
    the index database, when the add-in is enabled and keeps it (its syslog collector is not used:
    its spool belongs to the server). Messages are written before this returns."""
    from pacskit.audit import messages as m
    from pacskit.audit.trail import AuditTrail

    audit = Audit()
    section = settings.addin_section("audit")
    trail = None
    if section.get("enabled", True) and section.get("store_in_database", True):
        source = m.AuditSource(section.get("source_id") or settings.ae_title,
                               section.get("enterprise_site_id") or None)
        trail = AuditTrail(source, engine=store.index.engine)
        audit.attach(trail, "audit")
    try:
        yield audit
    finally:
        if trail is not None:
            trail.flush()
            trail.close()


def store_router(server: Server) -> APIRouter:
    """The routes above, on ``server``'s store and audit trail."""
    router = APIRouter(tags=["archive"])

    def require_store() -> DataStore:
        if server.store is None:
            raise HTTPException(409, "this server runs without a store")
        return server.store

    @router.post("/store/delete")
    async def delete_route(request: DeleteRequest) -> dict[str, Any]:
        """Delete (or, ``dry_run``, list) patients, studies, series or instances with their files."""
        store = require_store()
        try:
            return await asyncio.to_thread(delete, store, server.audit, request,
                                           user=request.user or "admin-api")
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.post("/store/merge-patients")
    async def merge_route(request: MergeRequest) -> dict[str, Any]:
        """Merge patient ``source`` into ``target``: studies moved, files rewritten, audited."""
        from pacskit.store.correction import CorrectionError

        store = require_store()
        try:
            return await asyncio.to_thread(merge, store, server.audit, request, user=request.user or "admin-api")
        except CorrectionError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.post("/store/correct")
    async def correct_route(request: CorrectRequest) -> dict[str, Any]:
        """Correct study or series attributes (UIDs kept or new), files rewritten, audited, forwarded."""
        from pacskit.store.correction import CorrectionError

        store = require_store()
        unknown = [t for t in request.forward_to if server.ae_titles.get(t) is None]
        if unknown:
            raise HTTPException(422, f"forward_to: {', '.join(unknown)} not in the AE registry")
        try:
            report = await asyncio.to_thread(correct, store, server.audit, request, user=request.user or "admin-api")
        except CorrectionError as exc:
            raise HTTPException(422, str(exc)) from None
        if not request.dry_run and report["studies"]:
            # the routing add-in's forward_corrections rules queue the corrected instances again
            from pacskit.services import WorkflowEvent

            detail = {"level": request.level, "uid": report["new_uids"].get(request.uid, request.uid)}
            event = WorkflowEvent("correction", report["studies"][0]["patient_id"] or "", detail)
            await asyncio.to_thread(server.workflow.publish, event)
        if request.forward_to and not request.dry_run:
            report["forwarded"] = await forward_corrected(server, report, request.forward_to)
        return report

    @router.post("/store/compress")
    async def compress_route(request: CompressRequest) -> dict[str, Any]:
        """Compress stored uncompressed instances losslessly (pixels verified byte for byte)."""
        from pacskit.store.compression import CompressionError, compress

        store = require_store()
        try:
            report = await asyncio.to_thread(compress, store, request.level, request.uids, request.syntax)
        except (CompressionError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from None
        return report.to_json()

    @router.post("/store/move-series")
    async def move_route(request: MoveSeriesRequest) -> dict[str, Any]:
        """File a series under another existing study: files rewritten, index moved, audited."""
        from pacskit.store.correction import CorrectionError

        store = require_store()
        try:
            return await asyncio.to_thread(move, store, server.audit, request, user=request.user or "admin-api")
        except CorrectionError as exc:
            raise HTTPException(422, str(exc)) from None

    return router


def local_user() -> str:
    """The operator running a command (the audit's active participant)."""
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


__all__ = ["CompressRequest", "CorrectRequest", "DeleteRequest", "correct", "forward_corrected", "MergeRequest", "MoveSeriesRequest", "delete", "merge", "move", "local_user", "offline_audit", "report_deleted", "store_router"]
