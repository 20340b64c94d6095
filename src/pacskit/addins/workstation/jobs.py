"""The workstation's background jobs: retrieve a study from a remote AE (C-MOVE to this server, or
C-GET) and send a study to one (C-STORE), with progress, cancel and retry.

The queue is durable: one SQLite file (``<data>/workstation/jobs.db``, ``synchronous = FULL``), every
state change committed before it is announced. At start, jobs left ``running`` by a stopped or
crashed server are queued again (a retrieve starts over; what already arrived is stored again and
kept once, a send sends again). ``max_parallel`` jobs run at once; the others wait ``queued``.

Progress comes from the peer: the C-MOVE / C-GET pending responses' sub-operation counts (completed,
failed, warning, remaining: ``total`` is completed + failed + warning + remaining), and for a send the
instances sent. Every change is published to the subscribers (:meth:`JobRunner.subscribe`, the SSE
stream of ``GET /api/jobs/events``), progress at most every 0.2 s per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from pacskit.dicom.status import PENDING_STATUSES, Status
from pacskit.records.durable_sqlite import DurableSqlite

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = frozenset({"done", "failed", "cancelled"})
PUBLISH_INTERVAL = 0.2  # seconds between two progress events of one job
CANCEL_GRACE = 10.0  # seconds a cancelled job talking to its peer has to stop by itself

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,                 -- retrieve | send
    state TEXT NOT NULL,
    source TEXT,
    destination TEXT,
    level TEXT NOT NULL,
    method TEXT,
    study_uid TEXT NOT NULL,
    series_uids TEXT NOT NULL DEFAULT '[]',
    patient_name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    total INTEGER,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    warning INTEGER NOT NULL DEFAULT 0,
    rate REAL,
    error TEXT,
    created_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
"""
_COLUMNS = ("id", "kind", "state", "source", "destination", "level", "method", "study_uid", "series_uids",
            "patient_name", "description", "total", "completed", "failed", "warning", "rate", "error",
            "created_by", "created_at", "updated_at", "started_at")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts is not None else None


@dataclass(slots=True)
class Job:
    id: int
    kind: str
    state: str
    source: str | None
    destination: str | None
    level: str
    method: str | None
    study_uid: str
    series_uids: list[str]
    patient_name: str
    description: str
    total: int | None
    completed: int
    failed: int
    warning: int
    rate: float | None
    error: str | None
    created_by: str
    created_at: float
    updated_at: float
    started_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "source": self.source,
            "destination": self.destination, "level": self.level, "method": self.method,
            "study_uid": self.study_uid, "series_uids": self.series_uids, "patient_name": self.patient_name,
            "description": self.description, "total": self.total, "completed": self.completed,
            "failed": self.failed, "warning": self.warning,
            "rate": round(self.rate, 2) if self.rate is not None else None, "error": self.error,
            "created_by": self.created_by, "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at),
        }


@dataclass(slots=True)
class NewJob:
    kind: str
    study_uid: str
    level: str = "STUDY"
    source: str | None = None
    destination: str | None = None
    method: str | None = None
    series_uids: list[str] = field(default_factory=list)
    patient_name: str = ""
    description: str = ""
    created_by: str = ""


class JobStore(DurableSqlite):
    """The durable table of jobs. Thread-safe; every change committed before the call returns."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)

    @staticmethod
    def _job(row: tuple[Any, ...]) -> Job:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["series_uids"] = json.loads(values["series_uids"] or "[]")
        return Job(**values)

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def recent(self, limit: int = 200) -> list[Job]:
        """The newest ``limit`` jobs, newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def add(self, new: NewJob) -> Job:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (kind, state, source, destination, level, method, study_uid, series_uids, "
                "patient_name, description, created_by, created_at, updated_at) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new.kind, new.source, new.destination, new.level, new.method, new.study_uid,
                 json.dumps(new.series_uids), new.patient_name, new.description, new.created_by, now, now),
            )
            job_id = int(cur.lastrowid or 0)
        job = self.get(job_id)
        assert job is not None
        return job

    def update(self, job_id: int, **values: Any) -> Job | None:
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))  # keys are ours
        return self.get(job_id)

    def claim(self) -> Job | None:
        """The oldest queued job, now ``running`` (``None`` when nothing waits)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started_at = ?, updated_at = ?, error = NULL, "
                       "completed = 0, failed = 0, warning = 0, total = NULL, rate = NULL WHERE id = ?",
                       (now, now, row[0]))
        return self.get(int(row[0]))

    def transition(self, job_id: int, from_states: tuple[str, ...], to_state: str, **values: Any) -> Job | None:
        """Set ``to_state`` when the job is in one of ``from_states``; ``None`` when it was not."""
        values.update(state=to_state, updated_at=time.time())
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in from_states)
        with self._tx() as db:
            changed = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks})",
                                 (*values.values(), job_id, *from_states)).rowcount
        return self.get(job_id) if changed else None

    def purge_finished(self, before: float) -> int:
        """Forget finished jobs (done, failed, cancelled) last changed before ``before`` (epoch s)."""
        with self._tx() as db:
            return int(db.execute("DELETE FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND updated_at < ?",
                                  (before,)).rowcount)

    def requeue_running(self) -> list[int]:
        """Jobs a stopped server left ``running``: queued again (start-up)."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
            db.execute("UPDATE jobs SET state = 'queued', updated_at = ? WHERE state = 'running'", (time.time(),))
        return ids


class JobCancelled(Exception):
    pass


class _Progress:
    """Counts of one running job, written and published at most every :data:`PUBLISH_INTERVAL`."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self.runner = runner
        self.job = job
        self.started = time.monotonic()
        self.last = 0.0
        self.total: int | None = None
        self.completed = self.failed = self.warning = 0
        self.associated = False  # the peer accepted the association (cancel: C-CANCEL, not abort)

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        done = self.completed + self.warning
        return done / elapsed if elapsed > 0 and done else None

    def update(self, *, total: int | None, completed: int, failed: int, warning: int, force: bool = False) -> None:
        self.total, self.completed, self.failed, self.warning = total, completed, failed, warning
        now = time.monotonic()
        if force or now - self.last >= PUBLISH_INTERVAL:
            self.last = now
            self.runner.save_progress(self.job.id, total=total, completed=completed, failed=failed,
                                      warning=warning, rate=self.rate())


class JobRunner:
    """Runs the queued jobs, ``max_parallel`` at a time, on the server's event loop."""

    def __init__(self, store: JobStore, base: Any, max_parallel: int, keep_days: float = 30) -> None:
        self.store = store
        self.keep_days = keep_days
        self.base = base
        self.max_parallel = max_parallel
        self.log = base.log
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._cancel: dict[int, asyncio.Event] = {}
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._stopping = False

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        if self.keep_days > 0:
            purged = await asyncio.to_thread(self.store.purge_finished, time.time() - self.keep_days * 86400)
            if purged:
                self.log.info("workstation: %d finished jobs older than %g days forgotten", purged, self.keep_days)
        requeued = await asyncio.to_thread(self.store.requeue_running)
        if requeued:
            self.log.info("workstation: %d jobs left running by the previous run are queued again: %s",
                          len(requeued), ", ".join(map(str, requeued)))
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(), name=f"workstation-job-{i}") for i in range(self.max_parallel)]
        self._wake.set()

    async def stop(self) -> None:
        """Stop the workers; running jobs stay ``running`` in the table and are queued again at the
        next start (a server stopping does not cancel what the user asked for)."""
        self._stopping = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []

    # ------------------------------------------------------------------ API

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def publish(self, job: Job | None) -> None:
        if job is None:
            return
        data = job.to_json()
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(data)

    def _publish_threadsafe(self, job: Job | None, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self.publish, job)

    async def add(self, new: NewJob) -> Job:
        job = await asyncio.to_thread(self.store.add, new)
        self.publish(job)
        self._wake.set()
        return job

    async def cancel(self, job_id: int) -> Job | None:
        """Cancel a queued job at once, a running one at its next step; ``None`` when it is finished."""
        job = await asyncio.to_thread(self.store.transition, job_id, ("queued",), "cancelled")
        if job is not None:
            self.publish(job)
            return job
        event = self._cancel.get(job_id)
        current = await asyncio.to_thread(self.store.get, job_id)
        if current is None or current.state != "running" or event is None:
            return None
        event.set()
        return current

    async def retry(self, job_id: int) -> Job | None:
        job = await asyncio.to_thread(self.store.transition, job_id, ("failed", "cancelled"), "queued",
                                      error=None, completed=0, failed=0, warning=0, total=None, rate=None)
        if job is not None:
            self.publish(job)
            self._wake.set()
        return job

    def save_progress(self, job_id: int, **values: Any) -> None:
        """Progress of a running job (from the event loop: the SQLite write is short, WAL)."""
        self.publish(self.store.update(job_id, **values))

    # ------------------------------------------------------------------ workers

    async def _work(self) -> None:
        while not self._stopping:
            job = await asyncio.to_thread(self.store.claim)
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.set()  # another worker may find more
            self.publish(job)
            cancel = self._cancel[job.id] = asyncio.Event()
            progress = _Progress(self, job)
            try:
                error = await self._run_cancellable(job, progress, cancel)
            except asyncio.CancelledError:
                raise  # the server stops: the job stays running in the table, queued again at start
            except JobCancelled:
                error = "cancelled"
            except Exception as exc:  # one job's failure never stops the queue
                self.log.warning("workstation job %d (%s) failed: %s: %s", job.id, job.kind, type(exc).__name__, exc)
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                self._cancel.pop(job.id, None)
            values: dict[str, Any] = dict(total=progress.total, completed=progress.completed, failed=progress.failed,
                                          warning=progress.warning, rate=progress.rate())
            if cancel.is_set() or error == "cancelled":
                final = "cancelled"
                values["error"] = None
            elif error is not None:
                final = "failed"
                values["error"] = error[:500]
            else:
                final = "done"
                values["error"] = None
            if final == "done" and values["total"] is None:
                values["total"] = progress.completed + progress.failed + progress.warning
            done = await asyncio.to_thread(self.store.transition, job.id, ("running",), final, **values)
            self.publish(done)
            self.log.info("workstation job %d (%s %s) %s: %d completed, %d failed", job.id, job.kind,
                          job.study_uid, final, progress.completed, progress.failed)

    async def _run_cancellable(self, job: Job, progress: _Progress, cancel: asyncio.Event) -> str | None:
        """Run the job; on cancel, a job that is talking to its peer gets :data:`CANCEL_GRACE` seconds
        to stop by itself (C-CANCEL for a retrieve, the next instance for a send), one that is still
        connecting is stopped at once."""
        work = self._retrieve(job, progress, cancel) if job.kind == "retrieve" else self._send(job, progress, cancel)
        task = asyncio.get_running_loop().create_task(work, name=f"workstation-job-{job.id}-run")
        waiter = asyncio.get_running_loop().create_task(cancel.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                if progress.associated:
                    await asyncio.wait({task}, timeout=CANCEL_GRACE)
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise JobCancelled()
            return task.result()
        finally:
            waiter.cancel()
            if not task.done():  # the server stops while the job runs
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # ------------------------------------------------------------------ retrieve

    def _identifier(self, job: Job) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = job.level
        ds.StudyInstanceUID = job.study_uid
        if job.level == "SERIES":
            ds.SeriesInstanceUID = job.series_uids
        return ds

    async def _retrieve(self, job: Job, progress: _Progress, cancel: asyncio.Event) -> str | None:
        from pacskit.net import RequestedContext

        assert job.source is not None
        identifier = self._identifier(job)
        if job.method == "get":
            from pacskit.client.query import get_contexts

            sop_class = STUDY_ROOT_GET
            contexts = [RequestedContext(sop_class), RequestedContext(STUDY_ROOT_FIND), *get_contexts()[:125]]
            assoc = await self.base.dicom_request.associate(job.source, contexts, services=self._get_services(job.source))
            elements: dict[str, Any] = {}
            field_name = "C_GET_RQ"
        else:
            sop_class = STUDY_ROOT_MOVE
            assoc = await self.base.dicom_request.associate(
                job.source, [RequestedContext(sop_class), RequestedContext(STUDY_ROOT_FIND)])
            elements = {"MoveDestination": self.base.settings.ae_title}
            field_name = "C_MOVE_RQ"
        from pacskit.net.dimse import CommandField

        final: Any = None
        progress.associated = True
        async with assoc:
            await self._describe(job, assoc, progress)
            ctx = assoc.find_context(sop_class)
            watcher = asyncio.get_running_loop().create_task(self._cancel_when(cancel, assoc, ctx))
            try:
                async for rsp, received in assoc.request(getattr(CommandField, field_name), sop_class, identifier,
                                                         context=ctx, Priority=0, **elements):
                    if received is not None:
                        received.discard()
                    remaining = rsp.get("NumberOfRemainingSuboperations")
                    completed = int(rsp.get("NumberOfCompletedSuboperations", 0) or 0)
                    failed = int(rsp.get("NumberOfFailedSuboperations", 0) or 0)
                    warning = int(rsp.get("NumberOfWarningSuboperations", 0) or 0)
                    total = completed + failed + warning + int(remaining) if remaining is not None else progress.total
                    final_rsp = rsp.status not in PENDING_STATUSES
                    progress.update(total=total, completed=completed, failed=failed, warning=warning, force=final_rsp)
                    if final_rsp:
                        final = rsp
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        if final is None:
            return "the peer sent no final response"
        status = int(final.status)
        if status == Status.CANCEL or cancel.is_set():
            raise JobCancelled()
        if status == Status.SUCCESS:
            return None
        if 0xB000 <= status <= 0xBFFF:  # warning: some sub-operations failed (done, with failed > 0)
            return None
        comment = str(final.get("ErrorComment", "") or "")
        return f"{job.source} answered 0x{status:04X}" + (f": {comment}" if comment else "")

    async def _describe(self, job: Job, assoc: Any, progress: _Progress) -> None:
        """Before the retrieve: the study's patient, description and number of instances by C-FIND on
        the same association (best effort: the total otherwise comes with the first pending response)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = job.study_uid
        ds.PatientName = ds.StudyDescription = ds.NumberOfStudyRelatedInstances = ""
        answer = None
        try:
            assoc.find_context(STUDY_ROOT_FIND)
            async for status, identifier in assoc.find(STUDY_ROOT_FIND, ds):
                if status in PENDING_STATUSES and identifier is not None and answer is None:
                    answer = identifier
        except Exception as exc:  # the peer may not answer C-FIND on this association: not needed
            self.log.debug("workstation job %d: no C-FIND before the retrieve: %s", job.id, exc)
            return
        if answer is None:
            return
        values: dict[str, Any] = {}
        if not job.patient_name:
            values["patient_name"] = str(answer.get("PatientName", "") or "")
        if not job.description:
            values["description"] = str(answer.get("StudyDescription", "") or "")
        count = answer.get("NumberOfStudyRelatedInstances")
        if job.level == "STUDY" and count not in (None, ""):
            with contextlib.suppress(TypeError, ValueError):
                progress.total = int(count)
                values["total"] = progress.total
        if values:
            self.publish(await asyncio.to_thread(self.store.update, job.id, **values))

    async def _cancel_when(self, cancel: asyncio.Event, assoc: Any, ctx: Any) -> None:
        await cancel.wait()
        with contextlib.suppress(Exception):
            await assoc.cancel(assoc.last_message_id, ctx)

    def _get_services(self, source: str) -> Any:
        """The C-STORE handler of a C-GET: the sub-operations' instances go into the archive, each
        durable and indexed before it is acknowledged (the handler the Q/R gateway and prefetch use)."""
        from pacskit.addins.fetching import store_handler
        from pacskit.net import Services

        services = Services()
        services.register("C-STORE", store_handler(self.base, source))
        return services

    # ------------------------------------------------------------------ send

    def _instances(self, job: Job) -> list[tuple[str, str, str]]:
        """(SOP instance UID, SOP class UID, transfer syntax) of the stored instances of the job's
        study / series, in series and instance number order."""
        from sqlalchemy import select

        from pacskit.store.index.models import Instance, Series, Study

        store = self.base.store
        statement = (
            select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid)
            .join(Series, Instance.series_fk == Series.pk)
            .join(Study, Series.study_fk == Study.pk)
            .where(Study.study_instance_uid == job.study_uid)
            .order_by(Series.series_number, Instance.instance_number)
        )
        if job.series_uids:
            statement = statement.where(Series.series_instance_uid.in_(job.series_uids))
        with store.index.engine.connect() as conn:
            rows = conn.execute(statement).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def _send_one(self, assoc: Any, store: Any, sop_instance_uid: str, job: Job) -> int:
        """C-STORE one stored instance (from its file, or a temporary copy when the blob store has no
        local files); its status, -1 when it could not be sent at all."""
        from pacskit.net import NoAcceptableContext

        path = await asyncio.to_thread(store.instance_path, sop_instance_uid)
        copy = None
        try:
            if path is None:
                copy = await asyncio.to_thread(self._temporary_copy, store, sop_instance_uid)
                path = str(copy)
            rsp = await assoc.store(path)
            return int(rsp.status)
        except NoAcceptableContext as exc:  # the peer refused this SOP class / transfer syntax
            self.log.warning("workstation send to %s: %s", job.destination, exc)
            return -1
        except (OSError, LookupError) as exc:  # the instance or its blob vanished (deleted meanwhile)
            self.log.warning("workstation send to %s: %s not readable: %s", job.destination, sop_instance_uid, exc)
            return -1
        finally:
            if copy is not None:
                copy.unlink(missing_ok=True)

    def _temporary_copy(self, store: Any, sop_instance_uid: str) -> Path:
        import shutil
        import tempfile

        folder = self.base.data_dir / "workstation" / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        with store.open_instance(sop_instance_uid) as source, \
                tempfile.NamedTemporaryFile(dir=folder, suffix=".dcm", delete=False) as target:
            shutil.copyfileobj(source, target, 1 << 20)
        return Path(target.name)

    async def _send(self, job: Job, progress: _Progress, cancel: asyncio.Event) -> str | None:
        from pacskit.net import RequestedContext

        assert job.destination is not None
        store = self.base.store
        if store is None:
            return "no data store"
        instances = await asyncio.to_thread(self._instances, job)
        if not instances:
            return "nothing stored for this study"
        total = len(instances)
        progress.update(total=total, completed=0, failed=0, warning=0, force=True)
        # the files' own SOP classes and transfer syntaxes: one context per pair (sent as stored)
        pairs = list(dict.fromkeys((sop_class, ts) for _, sop_class, ts in instances))
        contexts = [RequestedContext(sop_class, (ts,)) for sop_class, ts in pairs[:128]]
        completed = failed = warning = 0
        async with await self.base.dicom_request.associate(job.destination, contexts) as assoc:
            progress.associated = True
            for sop_instance_uid, _sop_class, _ts in instances:
                if cancel.is_set():
                    raise JobCancelled()
                status = await self._send_one(assoc, store, sop_instance_uid, job)
                if status == Status.SUCCESS:
                    completed += 1
                elif 0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107, 0x0116):
                    warning += 1
                else:
                    failed += 1
                progress.update(total=total, completed=completed, failed=failed, warning=warning,
                                force=completed + failed + warning == total)
        if failed:
            return f"{failed} of {total} instances were not accepted by {job.destination}"
        return None
