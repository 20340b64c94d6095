"""The durable queue of media creation requests (what the Media Creation Management SCP and the
workstation's "burn / export" action submit to).

Each request is two files in the queue folder: ``<uid>.refs.json`` (the referenced instances, written
once) and ``<uid>.json`` (options and state), each written to a temporary name, flushed (``fsync``)
and renamed, so a reader (an N-GET in another worker process) never sees half a file and a crash loses
nothing acknowledged. States follow PS3.4 Annex S's Execution Status: ``IDLE`` (created, not yet
initiated), ``PENDING`` (initiated, queued), ``CREATING``, then ``DONE`` or ``FAILURE``.

One process at a time runs builds: the one holding the lock on ``queue.lock``; the others only record
requests, which the builder picks up within ``poll_interval`` seconds. Requests run by priority (HIGH,
MED, LOW), then in the order they were initiated, one at a time.

Crash safety: a request becomes ``DONE`` only after its media are complete (the image renamed into
place and flushed, the burner finished). A request found ``CREATING`` at start-up was interrupted: its
work folder is removed and it is queued again, so a restart finishes it (or fails it with a reason);
never is a half-written image reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacskit.media.build import MediaCancelled, MediaOptions, build_media, select_sources
from pacskit.media.burners import BurnCancelled, BurnError, BurnJob
from pacskit.media.fileset import MediaError, UnusableInstance

if TYPE_CHECKING:
    from pacskit.store import DataStore

IDLE, PENDING, CREATING, DONE, FAILURE = "IDLE", "PENDING", "CREATING", "DONE", "FAILURE"
PRIORITIES = {"HIGH": 0, "MED": 1, "LOW": 2}

#: Failure Reasons of the Failed SOP Sequence (PS3.4 Annex S uses those of PS3.4 J.3.3.1.1 / C.4)
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110


class QueueError(Exception):
    """A request cannot be accepted or changed; ``reason`` is one of the class attributes."""

    NOT_FOUND = "not-found"
    DUPLICATE = "duplicate"
    ALREADY_INITIATED = "already-initiated"
    ALREADY_COMPLETED = "already-completed"
    IN_PROGRESS = "in-progress"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(slots=True)
class MediaRequest:
    """One media creation request: what to put on the media, how, and where it stands."""

    uid: str
    profile: str
    label: str = ""
    label_from_instances: bool = False
    fileset_id: str = ""
    fileset_uid: str = ""
    allow_split: bool = True
    allow_lossy: bool = False
    include_non_dicom: str = "NO"
    include_display_application: str = "NO"
    preserve_instances: str = ""
    disposition: str = ""
    barcode_value: str = ""
    barcode_symbology: str = ""
    label_style: str = ""
    copies: int = 1
    priority: str = "MED"
    calling_ae: str = ""
    state: str = IDLE
    info: str = "NORMAL"
    created: str = ""
    initiated: str = ""
    finished: str = ""
    media_count: int = 0
    #: one line per piece of media made (the burner's words)
    outputs: list[str] = field(default_factory=list)
    #: volumes made: (File-set ID, File-set UID)
    volumes: list[list[str]] = field(default_factory=list)
    #: (SOP class, SOP instance, failure reason) of the instances that could not go on the media
    failed: list[list[Any]] = field(default_factory=list)
    #: number of referenced instances
    count: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _write_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: What does the work: ``(request, references, work folder, cancelled) -> (outputs, volumes, media count)``.
Executor = Callable[["MediaRequest", list[Reference], Path, Callable[[], bool]], tuple[list[str], list[list[str]], int]]


class MediaQueue:
    """Requests in ``folder`` (see the module docstring); :meth:`run` is the builder loop."""

    def __init__(self, folder: str | os.PathLike[str], executor: Executor, *, log: logging.Logger | None = None,
                 poll_interval: float = 5.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "work").mkdir(exist_ok=True)
        self.executor = executor
        self.log = log or logging.getLogger("pacskit.media.queue")
        self.poll_interval = poll_interval
        self._lock = threading.Lock()  # state transitions within this process
        self._wake: asyncio.Event | None = None
        self._cancel: set[str] = set()
        self._running: str | None = None
        self._lock_fd: int | None = None
        self._stopping = False

    # ------------------------------------------------------------------ files

    def _state_path(self, uid: str) -> Path:
        return self.folder / f"{uid}.json"

    def _refs_path(self, uid: str) -> Path:
        return self.folder / f"{uid}.refs.json"

    def _save(self, req: MediaRequest) -> None:
        _write_atomic(self._state_path(req.uid), req.to_json())

    def get(self, uid: str) -> MediaRequest | None:
        """The request ``uid`` as last saved, or ``None``."""
        try:
            data = json.loads(self._state_path(uid).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return MediaRequest(**data)

    def references(self, uid: str) -> list[Reference]:
        data = json.loads(self._refs_path(uid).read_text(encoding="utf-8"))
        return [Reference(c, i) for c, i in data]

    def requests(self) -> list[MediaRequest]:
        out = []
        for path in sorted(self.folder.glob("*.json")):
            if path.name.endswith(".refs.json") or path.name.startswith("."):
                continue
            req = self.get(path.name[: -len(".json")])
            if req is not None:
                out.append(req)
        return out

    # ------------------------------------------------------------------ operations

    def create(self, req: MediaRequest, references: Sequence[Reference]) -> MediaRequest:
        """Record a new request (``IDLE``); :class:`QueueError` ``DUPLICATE`` if its UID exists."""
        with self._lock:
            if self._state_path(req.uid).exists():
                raise QueueError(QueueError.DUPLICATE, f"media creation request {req.uid} exists")
            req.state, req.created, req.count = IDLE, _now(), len(references)
            _write_atomic(self._refs_path(req.uid), [[r.sop_class_uid, r.sop_instance_uid] for r in references])
            self._save(req)
        return req

    def initiate(self, uid: str, *, copies: int | None = None, priority: str | None = None) -> MediaRequest:
        """Queue the request (``PENDING``). :class:`QueueError` ``NOT_FOUND``, ``ALREADY_INITIATED``."""
        with self._lock:
            req = self.get(uid)
            if req is None:
                raise QueueError(QueueError.NOT_FOUND, f"no media creation request {uid}")
            if req.state != IDLE:
                raise QueueError(QueueError.ALREADY_INITIATED, f"request {uid} was already initiated ({req.state})")
            if copies is not None:
                req.copies = copies
            if priority:
                req.priority = priority
            req.state, req.initiated, req.info = PENDING, _now(), "QUEUED"
            self._save(req)
        self._notify()
        return req

    def cancel(self, uid: str, *, wait: float = 30.0) -> None:
        """Cancel and delete the request (PS3.4 S.3.2.3). A request being built is stopped first (at its
        next instance, file or written block; up to ``wait`` seconds). :class:`QueueError`
        ``NOT_FOUND``, ``ALREADY_COMPLETED`` (DONE or FAILURE), ``IN_PROGRESS`` (it did not stop in time:
        the burner is writing a disc)."""
        import time

        with self._lock:
            req = self.get(uid)
            if req is None:
                raise QueueError(QueueError.NOT_FOUND, f"no media creation request {uid}")
            if req.state in (DONE, FAILURE):
                raise QueueError(QueueError.ALREADY_COMPLETED, f"request {uid} is already {req.state}")
            if req.state in (IDLE, PENDING) and self._running != uid:
                self._delete(uid)
                return
            self._cancel.add(uid)
            # the builder may be another worker process: it sees this file at its next check
            self._cancel_marker(uid).touch()
        deadline = time.monotonic() + wait
        done = threading.Event()
        while not done.wait(0.05):  # the builder thread stops at its next check; no event crosses processes
            current = self.get(uid)
            if current is None:
                return
            if current.state in (DONE, FAILURE):  # it finished before it saw the cancel
                self._cancel.discard(uid)
                with contextlib.suppress(FileNotFoundError):
                    self._cancel_marker(uid).unlink()
                raise QueueError(QueueError.ALREADY_COMPLETED, f"request {uid} is already {current.state}")
            if time.monotonic() > deadline:
                break
        self._cancel.discard(uid)
        with contextlib.suppress(FileNotFoundError):
            self._cancel_marker(uid).unlink()
        raise QueueError(QueueError.IN_PROGRESS, f"request {uid} is being written and cannot be interrupted")

    def _cancel_marker(self, uid: str) -> Path:
        return self.folder / f"{uid}.cancel"

    def _cancelled(self, uid: str) -> bool:
        return uid in self._cancel or self._cancel_marker(uid).exists()

    def _delete(self, uid: str) -> None:
        for path in (self._state_path(uid), self._refs_path(uid), self._cancel_marker(uid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(self.folder / "work" / uid, ignore_errors=True)

    # ------------------------------------------------------------------ the builder

    def stop(self) -> None:
        """Ask the build in progress to stop at its next check (the server is stopping): the request
        goes back to ``PENDING`` and is built again at the next start. Cancel the :meth:`run` task
        afterwards."""
        self._stopping = True

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(wake.set)

    def _take_lock(self) -> bool:
        fd = os.open(self.folder / "queue.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def recover(self) -> int:
        """Queue again what a crash interrupted (``CREATING`` -> ``PENDING``, work removed). Only the
        lock holder calls it. Returns the number of requests waiting."""
        waiting = 0
        for req in self.requests():
            if req.state == CREATING:
                self.log.warning("media creation request %s was interrupted; building it again", req.uid)
                shutil.rmtree(self.folder / "work" / req.uid, ignore_errors=True)
                req.state, req.info = PENDING, "QUEUED"
                self._save(req)
            if req.state == PENDING:
                waiting += 1
        return waiting

    def _next(self) -> MediaRequest | None:
        pending = [r for r in self.requests() if r.state == PENDING]
        if not pending:
            return None
        return min(pending, key=lambda r: (PRIORITIES.get(r.priority, 1), r.initiated, r.uid))

    async def run(self) -> None:
        """Build requests until cancelled or :meth:`stop` (then it returns after the build in progress
        stopped). While another process holds the queue's lock this only retries to take it every
        ``poll_interval`` seconds, so there is a builder while any process lives."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while not self._take_lock():
                if self._stopping:
                    return
                await asyncio.sleep(self.poll_interval)
            waiting = await asyncio.to_thread(self.recover)
            if waiting:
                self.log.info("%d media creation requests waiting", waiting)
            while not self._stopping:
                req = await asyncio.to_thread(self._next)
                if req is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                    continue
                await asyncio.to_thread(self._execute, req.uid)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _execute(self, uid: str) -> None:
        with self._lock:
            req = self.get(uid)
            if req is None or req.state != PENDING or self._stopping:
                return
            req.state, req.info = CREATING, "CREATING"
            self._save(req)
            self._running = uid
        work = self.folder / "work" / uid
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cancelled = lambda: self._stopping or self._cancelled(uid)  # noqa: E731
        try:
            self.log.info("building media for request %s (%d instances, %s, %d copies)", uid, req.count,
                          req.profile, req.copies)
            outputs, volumes, count = self.executor(req, self.references(uid), work, cancelled)
        except (MediaCancelled, BurnCancelled):
            with self._lock:
                self._running = None
                if self._cancelled(uid):
                    self._delete(uid)
                    self._cancel.discard(uid)
                    self.log.info("media creation request %s cancelled", uid)
                    return
                current = self.get(uid)
                if current is not None and self._stopping:  # built again at the next start
                    current.state, current.info = PENDING, "QUEUED"
                    self._save(current)
                    self.log.info("media creation request %s interrupted by shutdown; queued again", uid)
                    return
            self._finish(uid, FAILURE, "PROCESSING_FAILURE", failed=[], message="stopped without a cancel")
            return
        except FailedInstances as exc:
            self._finish(uid, FAILURE, exc.info, failed=exc.failed)
            return
        except (MediaError, BurnError, ValueError, OSError) as exc:
            self._finish(uid, FAILURE, _info_of(exc), failed=[], message=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must fail the request, not the builder
            self.log.exception("media creation request %s failed", uid)
            self._finish(uid, FAILURE, "PROCESSING_FAILURE", failed=[], message=str(exc))
            return
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._finish(uid, DONE, "NORMAL", outputs=outputs, volumes=volumes, count=count)

    def _finish(self, uid: str, state: str, info: str, *, failed: list[list[Any]] | None = None,
                outputs: list[str] | None = None, volumes: list[list[str]] | None = None, count: int = 0,
                message: str = "") -> None:
        with self._lock:
            self._running = None
            self._cancel.discard(uid)
            with contextlib.suppress(FileNotFoundError):
                self._cancel_marker(uid).unlink()
            req = self.get(uid)
            if req is None:
                return
            req.state, req.info, req.finished = state, info, _now()
            req.failed = failed or []
            req.outputs = outputs or []
            req.volumes = volumes or []
            req.media_count = count
            self._save(req)
        if state == DONE:
            self.log.info("media creation request %s DONE: %s", uid, "; ".join(req.outputs))
        else:
            self.log.warning("media creation request %s FAILED (%s) %s", uid, info, message)


class FailedInstances(MediaError):
    """Referenced instances cannot go on the media (the request fails with a Failed SOP Sequence)."""

    def __init__(self, info: str, failed: list[list[Any]]) -> None:
        super().__init__(f"{info}: {len(failed)} instances")
        self.info = info
        self.failed = failed


def _info_of(exc: Exception) -> str:
    """Execution Status Info (implementation-defined terms, docs/media-pdi-conformance.md)."""
    from pacskit.media.fileset import DoesNotFit
    from pacskit.media.label import LabelError

    if isinstance(exc, DoesNotFit):
        return "DOES_NOT_FIT"
    if isinstance(exc, LabelError):
        return "LABEL_FAILURE"
    if isinstance(exc, BurnError):
        return "BURNER_FAILURE"
    if isinstance(exc, OSError):
        return "OUT_OF_RESOURCES" if getattr(exc, "errno", None) == 28 else "PROCESSING_FAILURE"
    return "PROCESSING_FAILURE"


def _labels(req: MediaRequest, sources: list[Any], volumes: list[Path], work: Path) -> list[Path]:
    """One label PDF per volume when the request asks for a label (text, from the instances, a barcode);
    :class:`pacskit.media.label.LabelError` fails the request before anything is burnt."""
    from pacskit.media.label import LabelRequest, label_name, studies_of, write_label

    wanted = LabelRequest(req.label, req.label_from_instances, req.barcode_value, req.barcode_symbology, req.label_style)
    if not wanted.wanted:
        return []
    work.mkdir(parents=True, exist_ok=True)
    studies = studies_of(_first_per_study(sources)) if wanted.from_instances else []
    return [write_label(work / label_name(volume), wanted, studies, n, len(volumes))
            for n, volume in enumerate(volumes, 1)]


def _first_per_study(sources: list[Any]) -> list[str]:
    """One file per study (the index knows the study of each source; unknown ones are all read)."""
    seen: dict[str, str] = {}
    rest = []
    for s in sources:
        if not s.study_uid:
            rest.append(s.path)
        elif s.study_uid not in seen:
            seen[s.study_uid] = s.path
    return list(seen.values()) + rest


def archive_executor(store: DataStore, burner: Any, fmt: str, log: logging.Logger,
                     fetch: Callable[[list[Reference]], None] | None = None) -> Executor:
    """The executor building from the local archive (``store``) and handing the volumes to ``burner``.
    ``fetch`` (optional) is given the references the archive lacks, to retrieve them into it (it
    returns when done; what is still missing afterwards fails the request)."""

    def execute(req: MediaRequest, refs: list[Reference], work: Path,
                cancelled: Callable[[], bool]) -> tuple[list[str], list[list[str]], int]:
        sources, missing = select_sources(store, instances=[r.sop_instance_uid for r in refs])
        wanted = {r.sop_instance_uid: r.sop_class_uid for r in refs}
        if missing and fetch is not None:
            log.info("request %s: %d instances are not in the archive; retrieving them", req.uid, len(missing))
            try:
                fetch([Reference(wanted[uid], uid) for uid in missing])
            except Exception as exc:  # noqa: BLE001 - a peer's failure leaves them missing (reported below)
                log.warning("request %s: retrieval failed: %s", req.uid, exc)
            sources, missing = select_sources(store, instances=[r.sop_instance_uid for r in refs])
        failed: list[list[Any]] = [[wanted[uid], uid, NO_SUCH_OBJECT_INSTANCE] for uid in missing]
        for s in sources:
            if s.sop_class_uid and wanted.get(s.sop_instance_uid) and s.sop_class_uid != wanted[s.sop_instance_uid]:
                failed.append([wanted[s.sop_instance_uid], s.sop_instance_uid, CLASS_INSTANCE_CONFLICT])
        if failed:
            raise FailedInstances("NO_SUCH_INSTANCE" if missing else "CLASS_INSTANCE_CONFLICT", failed)
        options = MediaOptions(profile=req.profile, fmt=fmt, label=req.label or req.fileset_id,
                               fileset_id=req.fileset_id or req.label, fileset_uid=req.fileset_uid,
                               allow_split=req.allow_split,
                               include_viewer=req.include_display_application == "YES"
                               or req.include_non_dicom in ("FOR_PATIENT", "FOR_PHYSICIAN"))
        out = work / "out"
        ext = "" if fmt == "folder" else f".{fmt}"
        try:
            result = build_media(sources, out / f"{req.uid}{ext}", options, work_dir=work / "plan",
                                 should_stop=cancelled)
        except UnusableInstance as exc:
            raise FailedInstances("UNUSABLE_INSTANCE", [[wanted.get(exc.sop_instance_uid, ""), exc.sop_instance_uid,
                                                          PROCESSING_FAILURE]]) from exc
        volumes = [[fid, fuid] for fid, fuid in result.filesets]
        labels = _labels(req, sources, result.paths, work / "labels")
        made = burner.burn(BurnJob(req.uid, result.paths, fmt, req.label, req.copies, log, cancelled, labels))
        return list(made), volumes, len(made) if made else len(result.paths)

    return execute

