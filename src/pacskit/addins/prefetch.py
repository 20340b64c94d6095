"""Prefetch add-in: fetch a patient's prior studies from a remote PACS before the reader asks for them.

Off by default. ``[addins.prefetch]``::

    enabled = true
    remote = "ORTHANC"                  # AE title of the registry holding the priors
    triggers = ["worklist", "mpps", "hl7", "study"]
    max_studies = 3                     # the newest this many priors (by Study Date)
    modalities = ["CT", "MR"]           # only priors with one of these in Modalities in Study ([]: any)
    same_modality = false               # only priors with the modality of what triggered it
    max_age_days = 1825                 # only priors at most this old ([]: any age)
    fetch_with = "C-GET"                # or "C-MOVE" (the remote must know pacskit's AE title)

**Triggers**, each a patient (Patient ID) to prefetch for:

* ``worklist``: a scheduled step written to the worklist (``pacskit worklist add``, the admin API,
  an import), its Modality;
* ``mpps``: a Modality Performed Procedure Step created (N-CREATE), its Modality;
* ``hl7``: an HL7 message with a PID published by the hl7 add-in (``hl7_events``: by default
  ADT^A01/A04/A05/A08 and ORM^O01), OBR-24 as its modality;
* ``study``: a study arriving (its first instances stored), its series' Modality; instances that
  came from the prefetch remote itself (calling AE = ``remote``) are no trigger.

Worklist steps, MPPS and stored instances are read from the index after they were committed (from
a watermark kept in the queue file, as the routing add-in does), so nothing is missed while the add-in
was not running, and what was there at its first start is not prefetched. HL7 messages come through
:meth:`workflow_event` and are written to the queue before the ACK is sent.

**The queue** (``queue_file``, SQLite, every change committed before it returns) holds one job per
patient waiting (a second trigger for a patient already waiting adds nothing). A job: C-FIND at the
remote (Study level, the patient's studies with Study Date, Modalities in Study and Number of Study
Related Instances), the rules, then a retrieve of each chosen study into the store; a study the
archive already holds whole (as many instances as the remote counts) is skipped. A remote that
cannot be reached leaves the job queued, retried with a doubling delay (``retry_initial`` to
``retry_max`` seconds); a failure status from the remote marks it ``failed`` after ``max_attempts``.
A job is done only once every chosen study was fetched, so a crash or a kill -9 in the middle
repeats it at the next start (instances already fetched are kept, not fetched twice into the index).

Admin API: ``GET /addins/prefetch/jobs`` (``?state=``), ``POST /addins/prefetch/request``
(``{"patient_id": ...}``: prefetch now), ``POST /addins/prefetch/retry`` (failed jobs queued again).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from pacskit.addins.fetching import RemoteFailed, fetch, find_remote
from pacskit.dicom.status import status_category
from pacskit.net import NetError
from pacskit.net import events as ev
from pacskit.records.durable_sqlite import DurableSqlite
from pacskit.services import AddIn, AddInOptions, WorkflowEvent

log = logging.getLogger("pacskit.addin.prefetch")

Trigger = Literal["worklist", "mpps", "hl7", "study"]
_ALL_TRIGGERS: tuple[Trigger, ...] = ("worklist", "mpps", "hl7", "study")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL,
    trigger TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'queued',      -- queued | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    studies_fetched INTEGER NOT NULL DEFAULT 0,
    instances_fetched INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (state, next_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS triggered (key TEXT PRIMARY KEY);  -- studies that already triggered a job
"""


class PrefetchOptions(AddInOptions):
    enabled: bool = False
    timeout: float | None = Field(None, gt=0)
    remote: str = Field("", description="AE title (registry) of the PACS holding the prior studies")
    triggers: list[Trigger] = Field(default_factory=lambda: list(_ALL_TRIGGERS))
    hl7_events: list[str] = Field(default_factory=lambda: ["A01", "A04", "A05", "A08", "O01"],
                                  description="HL7 trigger events that prefetch (MSH-9.2)")
    max_studies: int = Field(3, ge=1, le=1000, description="the newest this many prior studies")
    modalities: list[str] = Field(default_factory=list, description="only priors with one of these modalities")
    same_modality: bool = Field(False, description="only priors with the modality of what triggered the job")
    max_age_days: float | None = Field(None, gt=0, description="only priors at most this many days old")
    fetch_with: Literal["C-GET", "C-MOVE"] = "C-GET"
    scan_interval: float = Field(2.0, gt=0, description="seconds between scans of worklist, MPPS and studies")
    retry_initial: float = Field(5.0, gt=0)
    retry_max: float = Field(600.0, gt=0)
    max_attempts: int = Field(5, ge=1, description="failure statuses from the remote before a job is failed")
    queue_file: str = Field("prefetch/queue.db", description="relative: data folder")


@dataclass(frozen=True, slots=True)
class PrefetchJob:
    id: int
    patient_id: str
    trigger: str
    modality: str
    state: str
    attempts: int
    next_at: float
    last_error: str | None
    studies_fetched: int
    instances_fetched: int
    created: float
    finished: float | None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class PrefetchQueue(DurableSqlite):
    """Thread-safe; every change committed (``synchronous = FULL``) before the call returns."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    def watermark(self, key: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def enqueue(self, items: list[tuple[str, str, str, str]], watermarks: dict[str, int] | None = None) -> int:
        """``(patient_id, trigger, modality, once_key)`` jobs, skipping patients already waiting and
        ``once_key`` values seen before (a study triggers once, whatever the batches its instances
        arrive in), and the new watermarks, in one transaction; returns how many jobs were added."""
        added = 0
        now = time.time()
        with self._tx() as db:
            for patient_id, trigger, modality, once_key in items:
                if not patient_id:
                    continue
                if once_key:
                    if db.execute("SELECT 1 FROM triggered WHERE key = ?", (once_key,)).fetchone():
                        continue
                    db.execute("INSERT INTO triggered (key) VALUES (?)", (once_key,))
                waiting = db.execute("SELECT 1 FROM jobs WHERE patient_id = ? AND state = 'queued'",
                                     (patient_id,)).fetchone()
                if waiting:
                    continue
                db.execute("INSERT INTO jobs (patient_id, trigger, modality, created) VALUES (?, ?, ?, ?)",
                           (patient_id, trigger, modality or "", now))
                added += 1
            for key, value in (watermarks or {}).items():
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                           (key, value, value))
        return added

    def due(self, now: float) -> PrefetchJob | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE state = 'queued' AND next_at <= ? ORDER BY id LIMIT 1",
                                   (now,)).fetchone()
        return PrefetchJob(*row) if row else None

    def next_due_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT min(next_at) FROM jobs WHERE state = 'queued'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def finish(self, job_id: int, studies: int, instances: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'done', attempts = attempts + 1, studies_fetched = ?, "
                       "instances_fetched = ?, last_error = NULL, finished = ? WHERE id = ?",
                       (studies, instances, time.time(), job_id))

    def retry_later(self, job_id: int, error: str, next_at: float, *, fail: bool = False) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts = attempts + 1, last_error = ?, next_at = ?, state = ? WHERE id = ?",
                       (error[:500], next_at, "failed" if fail else "queued", job_id))

    def jobs(self, state: str | None = None) -> list[PrefetchJob]:
        with self._lock:
            if state:
                rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return [PrefetchJob(*row) for row in rows]

    def requeue_failed(self) -> int:
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state = 'queued', next_at = 0 WHERE state = 'failed'").rowcount


class PrefetchAddIn(AddIn):
    name = "prefetch"
    description = "Auto-prefetch: a patient's prior studies fetched from a remote PACS on worklist, MPPS, HL7, arrival"
    Options = PrefetchOptions
    options: PrefetchOptions

    async def start(self) -> None:
        self.queue: PrefetchQueue | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self.base.store is None or not self.options.remote:
            log.error("prefetch: %s; nothing is prefetched",
                      "the server has no store" if self.base.store is None else "no remote configured")
            return
        if self.base.ae_titles.get(self.options.remote) is None:
            log.error("prefetch: remote %s is not in the AE registry (pacskit ae add)", self.options.remote)
        path = Path(self.options.queue_file)
        self.queue = PrefetchQueue(path if path.is_absolute() else self.base.data_dir / path)
        await asyncio.to_thread(self._first_watermarks)
        self.base.events.subscribe(ev.OPERATION_COMPLETED, self._on_operation)
        self._task = asyncio.create_task(self._run(), name="prefetch")

    async def stop(self) -> None:
        if self._task is None:
            return
        self.base.events.unsubscribe(ev.OPERATION_COMPLETED, self._on_operation)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.queue is not None:
            self.queue.close()

    def _on_operation(self, event: Any) -> None:
        if event.detail.get("service") in ("C-STORE", "N-CREATE", "N-SET"):
            self._wake.set()

    def workflow_event(self, event: WorkflowEvent) -> None:
        """HL7 messages (from the hl7 add-in): queued before the message is acknowledged."""
        queue = getattr(self, "queue", None)
        if queue is None or "hl7" not in self.options.triggers or event.kind != "hl7":
            return
        if event.detail.get("event", "") not in self.options.hl7_events:
            return
        if queue.enqueue([(event.patient_id, "hl7", event.detail.get("modality", ""), "")]):
            log.info("prefetch: %s queued for patient %s", event.detail.get("message_type", "HL7"), event.patient_id)
        self._loop.call_soon_threadsafe(self._wake.set)

    def request(self, patient_id: str, modality: str = "") -> bool:
        """Queue a prefetch for ``patient_id`` (the admin API's ``POST /request``)."""
        assert self.queue is not None
        added = self.queue.enqueue([(patient_id, "request", modality, "")]) > 0
        self._loop.call_soon_threadsafe(self._wake.set)
        return added

    # ------------------------------------------------------------------ triggers from the index

    def _maxima(self) -> dict[str, int]:
        from pacskit.store import Instance
        from pacskit.store.workflow.models import PerformedProcedureStep, WorklistItem

        store = self.base.store
        assert store is not None
        with store.index.reading() as s:
            return {name: int(s.scalar(select(func.max(column))) or 0) for name, column in
                    (("worklist", WorklistItem.pk), ("mpps", PerformedProcedureStep.pk), ("study", Instance.pk))}

    def _first_watermarks(self) -> None:
        """At the first start, what the archive already holds is no trigger."""
        assert self.queue is not None
        if self.queue.watermark("study") is None:
            self.queue.enqueue([], self._maxima())

    def _scan(self) -> int:
        """New worklist steps, MPPS and studies since the watermarks -> jobs (one transaction)."""
        from pacskit.store import Instance, Patient, Series, Study
        from pacskit.store.workflow.models import PerformedProcedureStep, WorklistItem

        queue, store = self.queue, self.base.store
        assert queue is not None and store is not None
        items: list[tuple[str, str, str, str]] = []
        marks: dict[str, int] = {}
        triggers = self.options.triggers
        with store.index.reading() as s:
            for name, table, modality in (("worklist", WorklistItem, WorklistItem.modality),
                                          ("mpps", PerformedProcedureStep, PerformedProcedureStep.modality)):
                mark = queue.watermark(name) or 0
                rows = s.execute(select(table.pk, table.patient_id, modality).where(table.pk > mark)
                                 .order_by(table.pk).limit(1000)).all()
                if rows:
                    marks[name] = rows[-1].pk
                    if name in triggers:
                        items += [(r.patient_id or "", name, r[2] or "", "") for r in rows]
            mark = queue.watermark("study") or 0
            rows2 = s.execute(
                select(Instance.pk, Patient.patient_id, Series.modality, Study.study_instance_uid, Instance.source_ae)
                .join(Series, Instance.series_fk == Series.pk).join(Study, Series.study_fk == Study.pk)
                .join(Patient, Study.patient_fk == Patient.pk).where(Instance.pk > mark)
                .order_by(Instance.pk).limit(5000)).all()
            if rows2:
                marks["study"] = rows2[-1].pk
                if "study" in triggers:
                    seen: set[str] = set()
                    for r in rows2:
                        if r.source_ae == self.options.remote:
                            continue  # what prefetch (or a retrieve) brought from the remote: no trigger
                        if r.study_instance_uid not in seen:
                            seen.add(r.study_instance_uid)
                            items.append((r.patient_id or "", "study", r.modality or "", f"study:{r.study_instance_uid}"))
        if not marks:
            return 0
        added = queue.enqueue(items, marks)
        if added:
            log.info("prefetch: %d patients queued", added)
        return added

    # ------------------------------------------------------------------ the worker

    async def _run(self) -> None:
        queue = self.queue
        assert queue is not None
        while True:
            try:
                await asyncio.to_thread(self._scan)
                while (job := await asyncio.to_thread(queue.due, time.time())) is not None:
                    await self._do(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("prefetch: scan failed; next in %.1f s", self.options.scan_interval)
            wait = self.options.scan_interval
            next_at = await asyncio.to_thread(queue.next_due_at)
            if next_at is not None:
                wait = max(0.0, min(wait, next_at - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _do(self, job: PrefetchJob) -> None:
        queue = self.queue
        assert queue is not None
        title = self.options.remote
        try:
            studies = await self._choose(job)
            fetched_studies = fetched_instances = 0
            for study_uid in studies:
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.StudyInstanceUID = study_uid
                result = await fetch(self.base, title, identifier, via=self.options.fetch_with)
                if status_category(result.status) == "Failure" and result.completed == 0:
                    raise RemoteFailed(title, result.status, result.comment)
                fetched_studies += 1
                fetched_instances += result.completed + result.warning
                if result.failed:
                    log.warning("prefetch: study %s of %s: %d instances failed", study_uid, job.patient_id, result.failed)
        except RemoteFailed as exc:
            fail = job.attempts + 1 >= self.options.max_attempts
            log.warning("prefetch for %s: %s%s", job.patient_id, exc, " (failed)" if fail else "")
            await asyncio.to_thread(queue.retry_later, job.id, str(exc), time.time() + self._delay(job.attempts),
                                    fail=fail)
            return
        except (NetError, OSError, LookupError) as exc:
            delay = self._delay(job.attempts)
            log.warning("prefetch for %s: %s unreachable (%s); again in %.0f s", job.patient_id, title, exc, delay)
            await asyncio.to_thread(queue.retry_later, job.id, f"{title} unreachable: {exc}", time.time() + delay)
            return
        await asyncio.to_thread(queue.finish, job.id, fetched_studies, fetched_instances)
        log.info("prefetch for %s (%s): %d prior studies, %d instances fetched from %s", job.patient_id, job.trigger,
                 fetched_studies, fetched_instances, title)

    def _delay(self, attempts: int) -> float:
        return float(min(self.options.retry_max, self.options.retry_initial * 2 ** attempts))

    async def _choose(self, job: PrefetchJob) -> list[str]:
        """The remote's studies of the patient that the rules pick and the archive lacks, newest first."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.PatientID = job.patient_id
        identifier.StudyInstanceUID = ""
        identifier.StudyDate = ""
        identifier.ModalitiesInStudy = ""
        identifier.NumberOfStudyRelatedInstances = ""
        answers = await find_remote(self.base, self.options.remote, identifier)
        opts = self.options
        oldest = ""
        if opts.max_age_days is not None:
            oldest = (dt.date.today() - dt.timedelta(days=opts.max_age_days)).strftime("%Y%m%d")
        wanted = set(opts.modalities)
        if opts.same_modality and job.modality:
            wanted = {job.modality} if not wanted else wanted & {job.modality}
            if not wanted:
                return []
        candidates: list[tuple[str, str, int | None]] = []
        for answer in answers:
            uid = str(answer.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            date = str(answer.get("StudyDate", "") or "")
            modalities = answer.get("ModalitiesInStudy")
            in_study = {str(m) for m in (modalities if isinstance(modalities, (list, tuple)) or
                                         type(modalities).__name__ == "MultiValue" else [modalities]) if m}
            if wanted and not in_study & wanted:
                continue
            if oldest and (not date or date < oldest):
                continue
            count = answer.get("NumberOfStudyRelatedInstances")
            candidates.append((date, uid, int(count) if count not in (None, "") else None))
        candidates.sort(reverse=True)
        chosen: list[str | None] = []
        held = await asyncio.to_thread(self._held_counts, [uid for _, uid, _ in candidates])
        for _date, uid, count in candidates:
            if len(chosen) >= opts.max_studies:
                break
            have = held.get(uid, 0)
            if have and (count is None or have >= count):
                chosen.append(None)  # held whole: counts as one of the priors, nothing to fetch
                continue
            chosen.append(uid)
        return [uid for uid in chosen if uid is not None]

    def _held_counts(self, uids: list[str]) -> dict[str, int]:
        from pacskit.store import Study

        store = self.base.store
        assert store is not None
        if not uids:
            return {}
        with store.index.reading() as s:
            rows = s.execute(select(Study.study_instance_uid, Study.num_instances)
                             .where(Study.study_instance_uid.in_(uids))).all()
        return {r[0]: int(r[1] or 0) for r in rows}

    # ------------------------------------------------------------------ admin API

    def admin_router(self) -> Any | None:
        """``GET /jobs`` (``?state=queued|done|failed``), ``POST /request`` (``{"patient_id": ...}``),
        ``POST /retry`` (failed jobs queued again)."""
        from fastapi import APIRouter, Body, HTTPException

        router = APIRouter()

        def queue() -> PrefetchQueue:
            if self.queue is None:
                raise HTTPException(409, "prefetch is not running (no store or no remote configured)")
            return self.queue

        @router.get("/jobs")
        async def jobs(state: str | None = None) -> list[dict[str, Any]]:
            return [job.to_json() for job in await asyncio.to_thread(queue().jobs, state)]

        @router.post("/request")
        async def request(patient_id: str = Body(..., embed=True, min_length=1, max_length=64)) -> dict[str, Any]:
            queue()
            return {"queued": await asyncio.to_thread(self.request, patient_id)}

        @router.post("/retry")
        async def retry() -> dict[str, int]:
            count = await asyncio.to_thread(queue().requeue_failed)
            self._wake.set()
            return {"retried": count}

        return router

