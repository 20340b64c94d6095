"""Routing add-in: forward (or forward anonymized) each stored instance by rules, through a durable queue.

Off by default. ``[addins.routing]``::

    enabled = true
    rules = [
      { name = "ct-to-reading", modalities = ["CT"], destinations = ["READING1"] },
      { name = "research", calling_aes = ["MRI3"], match = { StudyDescription = "*BRAIN*" },
        destinations = ["RESEARCH"], anonymize_project = "brain-2026" },
    ]

A rule matches an instance when every condition given holds: ``calling_aes`` (the AE that sent it),
``modalities`` (its series), ``sop_classes``, ``match`` (attribute keyword -> shell-style pattern on the
stored file's value), ``time_window`` (``"HH:MM-HH:MM"``, the server's local time of reception;
``"22:00-06:00"`` wraps midnight). Every matching rule adds one job per destination (AE titles of the registry).
``anonymize_project`` sends a de-identified copy (:mod:`pacskit.dicom.anonymize`, that project's key,
the same one ``pacskit anonymize --project`` uses).

A rule with ``drop_status`` instead of ``destinations`` is a drop rule: evaluated on each C-STORE
before it is stored (:meth:`RoutingAddIn.admit_instance`, the public ``admit_instance`` hook), the
first that matches answers it with that status (0x0000: acknowledged and discarded; a warning or
failure, with ``drop_comment``: refused) and nothing is stored. A rule with ``correct`` (keyword -> value) instead
rewrites each matching stored instance (:func:`pacskit.store.correction.correct_instances`, UIDs kept)
through the durable queue (the ``<apply-correction>`` destination), audited; forwards of an instance
wait for its correction. ``forward_corrections = true`` on a
forward rule queues again the instances of a study or series corrected through the admin API
(:meth:`RoutingAddIn.workflow_event`, a ``correction`` event).

Durability, retries and order: :mod:`pacskit.addins.routing.queue`. The instances are read from the
index after they were committed, so an instance acknowledged to the modality is routed even if the
server is killed right after; a job is removed only once the destination answered. Each destination
has one sender; a destination that cannot be reached keeps its jobs (retried with exponential backoff
from ``retry_initial`` to ``retry_max`` seconds) without holding up the others; a failure status from
the peer marks the job ``failed`` (list, retry, purge).

Admin API: ``GET /addins/routing/queue`` (``?state=&destination=``), ``GET /addins/routing/status``,
``POST /addins/routing/retry`` and ``/purge`` (``{"destination": ..., "ids": [...], "state": ...}``);
``pacskit route list | retry | purge`` calls them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
import datetime as dt
import fnmatch
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from pacskit.addins.routing.queue import ForwardQueue, Job, NewJob, SharedForwardQueue
from pacskit.dicom.status import status_category
from pacskit.dicom.transcode import (
    DEFAULT_MAX_SIZE,
    NATIVE_SYNTAXES,
    CannotConvert,
    can_convert,
    encodable_syntaxes,
    transcode,
)
from pacskit.net import NetError, RequestedContext
from pacskit.net import events as ev
from pacskit.services import AddIn, AddInOptions, IncomingInstance, Response, WorkflowEvent
from pacskit.store import Instance, Series, Study

log = logging.getLogger("pacskit.addin.routing")

_FALLBACK = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: the queue's "destination" of correction jobs (longer than an AE title: it can never be one)
CORRECTIONS = "<apply-correction>"
#: rows below the watermark read again at each scan (commits out of row order), remembered in ``routed``
LOOK_BACK = 256


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    destinations: list[str] = Field(default_factory=list, description="AE titles of the registry")
    drop_status: int | None = Field(
        None, ge=0, le=0xFFFF,
        description="drop rule: answer a matching C-STORE with this status and store nothing (0 acknowledges "
        "and discards; a failure status such as 0xA700, 0xA900, 0xC000 refuses it)")
    drop_comment: str = Field("", max_length=64, description="Error Comment of a drop rule's answer")
    calling_aes: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)
    match: dict[str, str] = Field(default_factory=dict, description="keyword -> shell-style pattern")
    time_window: str | None = Field(None, pattern=r"^\d\d:\d\d-\d\d:\d\d$",
                                    description="HH:MM-HH:MM, server local time of reception (may wrap midnight)")
    anonymize_project: str | None = Field(None, description="send de-identified copies (this project's key)")
    correct: dict[str, str] = Field(
        default_factory=dict,
        description="correction rule: keyword -> new value written into each matching stored instance "
        "(files and index, UIDs kept; the engine of `pacskit correct`), through the durable queue")
    forward_corrections: bool = Field(
        False, description="also send the instances of a study/series corrected through the admin API "
        "(pacskit correct) again, when they match the rule")

    @model_validator(mode="after")
    def _one_action(self) -> Rule:
        actions = [bool(self.destinations), self.drop_status is not None, bool(self.correct)]
        if not any(actions):
            raise ValueError(f"rule {self.name!r}: give destinations (forward), drop_status (drop) "
                             "or correct (apply a correction)")
        if self.drop_status is not None and (self.destinations or self.anonymize_project):
            raise ValueError(f"rule {self.name!r}: a drop rule has no destinations")
        if sum(actions) > 1:
            raise ValueError(f"rule {self.name!r}: give one action only: destinations, drop_status or correct")
        if self.correct:
            from pacskit.store.correction import CorrectionError, _checked_changes

            try:
                _checked_changes("instance", self.correct)
            except CorrectionError as exc:
                raise ValueError(f"rule {self.name!r}: correct: {exc}") from None
            if self.anonymize_project or self.forward_corrections:
                raise ValueError(f"rule {self.name!r}: a correction rule neither anonymizes nor forwards")
        if self.drop_status is not None and (self.destinations or self.anonymize_project):
            raise ValueError(f"rule {self.name!r}: a drop rule has no destinations")
        if self.drop_status is not None and status_category(self.drop_status) not in ("Success", "Warning", "Failure"):
            raise ValueError(f"rule {self.name!r}: drop_status 0x{self.drop_status:04X} is not a final C-STORE status")
        return self


class RoutingOptions(AddInOptions):
    enabled: bool = False
    rules: list[Rule] = Field(default_factory=list)
    route_existing: bool = Field(False, description="at the first start, route what the archive already holds")
    scan_interval: float = Field(2.0, gt=0, description="seconds between scans of the index (new C-STOREs wake it)")
    batch: int = Field(64, ge=1, le=1000, description="instances per association")
    retry_initial: float = Field(2.0, gt=0)
    retry_max: float = Field(300.0, gt=0)
    queue_file: str = Field("routing/queue.db", description="relative: data folder")


def _in_window(window: str, when: dt.datetime) -> bool:
    """``when`` (local time of day) is within ``HH:MM-HH:MM``; a window like 22:00-06:00 wraps midnight."""
    start, end = (dt.time.fromisoformat(part) for part in window.split("-"))
    if when.tzinfo is None:  # the index stores UTC
        when = when.replace(tzinfo=dt.UTC)
    now = when.astimezone().time().replace(second=0, microsecond=0)
    return start <= now < end if start <= end else (now >= start or now < end)


@dataclass(frozen=True, slots=True)
class _Incoming:
    """What a rule looks at, for a C-STORE not stored yet (the index row's columns for a stored one)."""

    received_at: dt.datetime
    source_ae: str
    modality: str
    sop_class_uid: str


def _rule_matches(rule: Rule, row: Any, header: Any) -> bool:
    if rule.time_window and not _in_window(rule.time_window, row.received_at):
        return False
    if rule.calling_aes and (row.source_ae or "") not in rule.calling_aes:
        return False
    if rule.modalities and (row.modality or "") not in rule.modalities:
        return False
    if rule.sop_classes and row.sop_class_uid not in rule.sop_classes:
        return False
    for keyword, pattern in rule.match.items():
        value = "" if header is None else str(header.get(keyword, "") or "")
        if not fnmatch.fnmatchcase(value, pattern):
            return False
    return True


class RoutingAddIn(AddIn):
    name = "routing"
    description = "Routing: forward stored instances by rules (durable queue, retries, order per destination)"
    Options = RoutingOptions
    options: RoutingOptions

    async def start(self) -> None:
        self.queue: ForwardQueue | SharedForwardQueue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._sender_wake: dict[str, asyncio.Event] = {}
        self._loop = asyncio.get_running_loop()
        self.sent = 0
        self.corrected = 0
        if self.base.store is None:
            log.error("routing: the server has no store; nothing is routed")
            return
        settings = self.base.settings
        if getattr(settings, "cluster_enabled", False):
            # one queue for every node, in the shared database (exactly-once routing, one sender per
            # destination): see SharedForwardQueue
            self.queue = SharedForwardQueue(self.base.store.index.engine, settings.cluster_node_name)
        else:
            path = Path(self.options.queue_file)
            self.queue = ForwardQueue(path if path.is_absolute() else self.base.data_dir / path)
        self.base.events.subscribe(ev.OPERATION_COMPLETED, self._on_operation)
        self._tasks.append(asyncio.create_task(self._router(), name="routing-router"))

    async def stop(self) -> None:
        if getattr(self, "queue", None) is None:
            return
        self.base.events.unsubscribe(ev.OPERATION_COMPLETED, self._on_operation)
        tasks = [*self._tasks, *self._senders.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert self.queue is not None
        self.queue.close()

    def _on_operation(self, event: Any) -> None:
        if event.detail.get("service") == "C-STORE":
            self._loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ drop rules (before storage)

    def admit_instance(self, instance: IncomingInstance) -> Response | None:
        """The first drop rule the C-STORE matches answers it with its status; nothing is stored."""
        drops = [rule for rule in self.options.rules if rule.drop_status is not None]
        if not drops:
            return None
        needs_header = any(rule.match or rule.modalities for rule in drops)
        header = instance.header() if needs_header else None
        row = _Incoming(received_at=dt.datetime.now(dt.UTC), source_ae=instance.calling_ae,
                        modality=str(header.get("Modality", "") or "") if header is not None else "",
                        sop_class_uid=instance.sop_class_uid)
        for rule in drops:
            if _rule_matches(rule, row, header):
                assert rule.drop_status is not None
                log.info("routing rule %s drops %s from %s: 0x%04X", rule.name, instance.sop_instance_uid,
                         instance.calling_ae, rule.drop_status)
                comment = rule.drop_comment or f"dropped by routing rule {rule.name}"
                return Response(rule.drop_status,
                                elements={} if rule.drop_status == 0 else {"ErrorComment": comment[:64]})
        return None

    # ------------------------------------------------------------------ corrections forwarded again

    def workflow_event(self, event: WorkflowEvent) -> None:
        """A study or series corrected through the admin API (``kind = "correction"``, ``level``,
        ``uid``: its UID after the correction): its instances are queued again for the destinations
        of the forward rules with ``forward_corrections`` that they match, before the correction's
        answer is sent."""
        queue, store = getattr(self, "queue", None), self.base.store
        if event.kind != "correction" or queue is None or store is None:
            return
        rules = [r for r in self.options.rules if r.destinations and r.forward_corrections]
        if not rules:
            return
        column = Study.study_instance_uid if event.detail.get("level") == "study" else Series.series_instance_uid
        columns = (Instance.pk, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.source_ae,
                   Series.modality, Study.study_instance_uid, Instance.blob_key, Instance.received_at)
        with store.index.reading() as s:
            rows = list(s.execute(select(*columns).join(Series, Instance.series_fk == Series.pk)
                                  .join(Study, Series.study_fk == Study.pk)
                                  .where(column == event.detail.get("uid", "")).order_by(Instance.pk)).all())
        needs_header = any(rule.match for rule in rules)
        jobs: list[NewJob] = []
        for row in rows:
            header = self._header(row.blob_key) if needs_header else None
            for rule in rules:
                if _rule_matches(rule, row, header):
                    jobs.extend(NewJob(dest, rule.name, rule.anonymize_project, row.pk, row.sop_instance_uid,
                                       row.study_instance_uid) for dest in rule.destinations)
        if jobs:
            queue.record(jobs, [], 0, 0)
            log.info("routing: %d corrected instances queued again (%d jobs)", len(rows), len(jobs))
            self._loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ rules -> jobs

    async def _router(self) -> None:
        while True:
            try:
                more = await asyncio.to_thread(self._scan)
            except Exception:
                log.exception("routing: scanning the index failed")
                more = False
            self._start_senders()
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.scan_interval)
            self._wake.clear()

    def _scan(self) -> bool:
        """Route the instances committed since the watermark; True when there may be more."""
        store, queue = self.base.store, self.queue
        assert store is not None and queue is not None
        watermark = queue.watermark()
        if watermark is None:
            with store.index.reading() as s:
                top = s.scalar(select(Instance.pk).order_by(Instance.pk.desc()).limit(1)) or 0
            start = 0 if self.options.route_existing else top
            with store.index.reading() as s:  # what is already there counts as routed (unless asked)
                existing = [] if start == 0 else list(s.scalars(
                    select(Instance.pk).where(Instance.pk > start - LOOK_BACK, Instance.pk <= start)))
            queue.record([], existing, start, max(0, start - LOOK_BACK))
            return start < top
        # Rows may commit out of pk order (concurrent writers): the last LOOK_BACK rows below the
        # watermark are read again and ``routed`` says which were done; the new rows come after.
        look_back = max(0, watermark - LOOK_BACK)
        limit = self.options.batch * 16
        columns = (Instance.pk, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.source_ae,
                   Series.modality, Study.study_instance_uid, Instance.blob_key, Instance.received_at)
        with store.index.reading() as s:
            def rows_where(condition: Any, n: int | None) -> list[Any]:
                stmt = (select(*columns).join(Series, Instance.series_fk == Series.pk)
                        .join(Study, Series.study_fk == Study.pk).where(condition).order_by(Instance.pk))
                return list(s.execute(stmt.limit(n) if n else stmt).all())

            late = rows_where((Instance.pk > look_back) & (Instance.pk <= watermark), None)
            fresh = rows_where(Instance.pk > watermark, limit)
        done = queue.routed(r.pk for r in late)
        rows = [r for r in late if r.pk not in done] + fresh
        if not rows:
            return False
        jobs: list[NewJob] = []
        routed: list[int] = []
        needs_header = any(rule.match for rule in self.options.rules)
        for row in rows:
            header = self._header(row.blob_key) if needs_header else None
            for rule in self.options.rules:
                if rule.drop_status is None and _rule_matches(rule, row, header):
                    destinations = [CORRECTIONS] if rule.correct else rule.destinations
                    jobs.extend(NewJob(dest, rule.name, rule.anonymize_project, row.pk, row.sop_instance_uid,
                                       row.study_instance_uid) for dest in destinations)
            routed.append(row.pk)
        top = max(watermark, fresh[-1].pk if fresh else watermark)
        queue.record(jobs, routed, top, max(0, top - LOOK_BACK))
        return len(fresh) == limit


    def _header(self, blob_key: str) -> Any:
        import pydicom

        store = self.base.store
        assert store is not None
        path = store.blobs.path(blob_key)
        try:
            if path is not None:
                return pydicom.dcmread(path, stop_before_pixels=True)
            with store.blobs.open(blob_key) as fh:
                return pydicom.dcmread(fh, stop_before_pixels=True)
        except Exception as exc:
            log.warning("routing: cannot read blob %s for attribute rules: %s", blob_key, exc)
            return None

    # ------------------------------------------------------------------ senders

    def _start_senders(self) -> None:
        assert self.queue is not None
        for destination in self.queue.destinations():
            event = self._sender_wake.setdefault(destination, asyncio.Event())
            event.set()
            task = self._senders.get(destination)
            if task is None or task.done():
                self._senders[destination] = asyncio.create_task(self._sender(destination, event),
                                                                 name=f"routing-{destination}")

    async def _sender(self, destination: str, wake: asyncio.Event) -> None:
        queue = self.queue
        assert queue is not None
        while True:
            wake.clear()
            jobs = await asyncio.to_thread(queue.head, destination, self.options.batch)
            if not jobs:
                await wake.wait()
                continue
            delay = jobs[0].next_at - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                continue
            await self._send_batch(destination, jobs)

    def _backoff(self, attempts: int) -> float:
        return float(min(self.options.retry_max, self.options.retry_initial * (2 ** min(attempts, 20))))

    async def _send_batch(self, destination: str, jobs: Sequence[Job]) -> None:
        queue, store = self.queue, self.base.store
        assert queue is not None and store is not None
        if destination == CORRECTIONS:
            await self._correct_batch(jobs)
            return
        # an instance a correction rule matched is sent once corrected: its forward waits for that job
        waiting = await asyncio.to_thread(queue.waiting, CORRECTIONS, [job.sop_instance_uid for job in jobs])
        if waiting:
            held = next(i for i, job in enumerate(jobs) if job.sop_instance_uid in waiting)
            if held == 0:
                await asyncio.to_thread(queue.postpone, jobs[0].id, "waits for its correction",
                                        time.time() + self.options.retry_initial)
                return
            jobs = jobs[:held]
        items: list[tuple[Job, str, str, str]] = []  # job, path, sop class, transfer syntax
        uids = [job.sop_instance_uid for job in jobs]
        with store.index.reading() as s:
            stored = {row.sop_instance_uid: row for row in s.execute(
                select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid,
                       Instance.blob_key).where(Instance.sop_instance_uid.in_(uids)))}
        copies: list[str] = []  # local copies of blobs of a store without paths (S3), deleted at the end
        try:
            for job in jobs:
                row = stored.get(job.sop_instance_uid)
                path = store.blobs.path(row.blob_key) if row is not None else None
                if row is not None and path is None:
                    path = await asyncio.to_thread(self._local_copy, row.blob_key)
                    if path is not None:
                        copies.append(path)
                if row is None or path is None:
                    await asyncio.to_thread(queue.fail, job.id, "the instance is no longer in the archive")
                    continue
                items.append((job, path, row.sop_class_uid, row.transfer_syntax_uid or _FALLBACK[0]))
            if items:
                await self._send_items(destination, jobs, items)
        finally:
            for copy in copies:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(copy)

    async def _correct_batch(self, jobs: Sequence[Job]) -> None:
        """Apply the correction rules' changes to the jobs' instances, one rule at a time, oldest first;
        a job leaves the queue once its instance's files and rows are committed (a crash before that
        applies it again after the restart: the same values)."""
        from pacskit.store.correction import CorrectionError, correct_instances

        queue, store = self.queue, self.base.store
        assert queue is not None and store is not None
        rules = {rule.name: rule for rule in self.options.rules if rule.correct}
        group: list[Job] = []
        for job in jobs:  # consecutive jobs of one rule are applied together
            if group and group[0].rule != job.rule:
                break
            group.append(job)
        rule = rules.get(group[0].rule)
        if rule is None:
            for job in group:
                await asyncio.to_thread(queue.fail, job.id, f"no correction rule {job.rule!r} is configured")
            return
        user = f"routing:{rule.name}"

        def audit(part: Any) -> None:
            self.base.audit.instances_accessed(part.study_instance_uid, part.patient_id, user=user, action="U",
                                               sop_classes=part.sop_classes)

        try:
            report = await asyncio.to_thread(correct_instances, store, [job.sop_instance_uid for job in group],
                                             rule.correct, reason=f"routing rule {rule.name}", on_study=audit)
        except CorrectionError as exc:
            for job in group:
                await asyncio.to_thread(queue.fail, job.id, str(exc))
            return
        except Exception as exc:  # the store could not write: the same jobs again later
            log.warning("routing: correction %s failed: %s; retry in %.0f s", rule.name, exc,
                        self._backoff(group[0].attempts))
            await asyncio.to_thread(queue.postpone, group[0].id, str(exc),
                                    time.time() + self._backoff(group[0].attempts))
            return
        await asyncio.to_thread(queue.done, [job.id for job in group])
        self.corrected += report.instances
        log.info("routing rule %s corrected %d instances", rule.name, report.instances)
        self._start_senders()  # forwards held for these corrections may go

    def _local_copy(self, blob_key: str) -> str | None:
        """The blob copied to a temp file (a store without local paths), or None when it is gone."""
        store = self.base.store
        assert store is not None
        fd, out = tempfile.mkstemp(prefix="route-blob-", suffix=".dcm", dir=self._temp_dir())
        try:
            with os.fdopen(fd, "wb") as dst, store.blobs.open(blob_key) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except (OSError, LookupError) as exc:
            log.warning("routing: cannot read blob %s: %s", blob_key, exc)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            return None
        return out

    async def _send_items(self, destination: str, jobs: Sequence[Job], items: list[tuple[Job, str, str, str]]) -> None:
        queue = self.queue
        assert queue is not None
        contexts: list[RequestedContext] = []
        seen: set[tuple[str, str]] = set()
        for _job, _path, sop_class, ts in items:
            if (sop_class, ts) not in seen:
                seen.add((sop_class, ts))
                contexts.append(RequestedContext(sop_class, (ts,)))
        classes = sorted({c for _j, _p, c, _t in items})
        for sop_class in classes:
            contexts.append(RequestedContext(sop_class, _FALLBACK))
        if encodable_syntaxes() and len(contexts) + len(classes) <= 128:  # a peer taking only those
            contexts.extend(RequestedContext(sop_class, encodable_syntaxes()) for sop_class in classes)
        try:
            assoc = await self.base.dicom_request.associate(destination, contexts[:128])
        except (NetError, OSError, LookupError) as exc:
            head = items[0][0]
            log.warning("routing: %s unreachable (%s); %d jobs wait, retry in %.0f s", destination, exc,
                        len(jobs), self._backoff(head.attempts))
            await asyncio.to_thread(queue.postpone, head.id, str(exc), time.time() + self._backoff(head.attempts))
            return
        answered: list[int] = []  # removed from the queue together (one commit per 64, and at the end)
        try:
            async with assoc:
                for job, path, sop_class, ts in items:
                    try:
                        status = await self._send_one(assoc, job, path, sop_class, ts)
                    except _Unsendable as exc:
                        await asyncio.to_thread(queue.fail, job.id, str(exc))
                        continue
                    if status_category(status) in ("Success", "Warning"):
                        answered.append(job.id)
                        self.sent += 1
                        if len(answered) >= 64:
                            await asyncio.to_thread(queue.done, answered)
                            answered = []
                    else:
                        await asyncio.to_thread(queue.fail, job.id, f"{destination} answered 0x{status:04X}")
            await asyncio.to_thread(queue.done, answered)
        except (NetError, OSError) as exc:  # the association broke: the job at the head is retried
            await asyncio.to_thread(queue.done, answered)
            waiting = await asyncio.to_thread(queue.head, destination, 1)
            if waiting:
                await asyncio.to_thread(queue.postpone, waiting[0].id, str(exc),
                                        time.time() + self._backoff(waiting[0].attempts))
            log.warning("routing: association with %s failed: %s", destination, exc)

    async def _send_one(self, assoc: Any, job: Job, path: str, sop_class: str, ts: str) -> int:
        accepted = {pc.transfer_syntax for pc in assoc.accepted_contexts if pc.abstract_syntax == sop_class}
        target = ts if ts in accepted else next(
            (t for t in (*NATIVE_SYNTAXES, *encodable_syntaxes()) if t in accepted and can_convert(ts, t)), None)
        if target is None:
            raise _Unsendable(f"{assoc.remote_ae_title} accepted no usable context for {sop_class} in {ts}")
        temps: list[str] = []
        try:
            source = path
            if job.project:
                source = await asyncio.to_thread(self._anonymized, path, job.project, temps)
            if target != ts:
                fd, converted = tempfile.mkstemp(prefix="route-", suffix=".dcm", dir=self._temp_dir())
                os.close(fd)
                temps.append(converted)
                try:
                    await asyncio.to_thread(transcode, source, converted, target, max_size=DEFAULT_MAX_SIZE)
                except CannotConvert as exc:
                    raise _Unsendable(str(exc)) from exc
                source = converted
            rsp = await assoc.store(source)
            return int(rsp.status)
        except FileNotFoundError as exc:
            raise _Unsendable(f"stored file missing: {exc}") from exc
        finally:
            for temp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    def _anonymized(self, path: str, project: str, temps: list[str]) -> str:
        from pacskit.dicom.anonymize import AnonymizeError, Anonymizer, project_key

        anonymizer = Anonymizer(project_key(self.base.settings.folder, project))
        fd, out = tempfile.mkstemp(prefix="route-anon-", suffix=".dcm", dir=self._temp_dir())
        os.close(fd)
        temps.append(out)
        try:
            anonymizer.anonymize_file(path, out)
        except AnonymizeError as exc:
            raise _Unsendable(f"not anonymized: {exc}") from exc
        return out

    def _temp_dir(self) -> str:
        store = self.base.store
        return getattr(store, "temp_dir", None) or tempfile.gettempdir()

    # ------------------------------------------------------------------ admin API

    def admin_router(self) -> Any | None:
        from fastapi import APIRouter, Body, HTTPException

        router = APIRouter()

        def queue() -> ForwardQueue | SharedForwardQueue:
            if self.queue is None:
                raise HTTPException(409, "routing has no queue (no store)")
            return self.queue

        @router.get("/status")
        async def status() -> dict[str, Any]:
            return {"sent": self.sent, "corrected": self.corrected, "queue": queue().counts(),
                    "watermark": queue().watermark()}

        @router.get("/queue")
        async def list_jobs(state: str | None = None, destination: str | None = None,
                            limit: int = 1000) -> list[dict[str, Any]]:
            return [job.to_json() for job in await asyncio.to_thread(queue().list, state=state,
                                                                     destination=destination, limit=limit)]

        @router.post("/retry")
        async def retry(destination: str | None = Body(None, embed=True),
                        ids: list[int] | None = Body(None, embed=True)) -> dict[str, int]:
            n = await asyncio.to_thread(queue().retry, destination=destination, ids=ids)
            self._start_senders()
            return {"retried": n}

        @router.post("/purge")
        async def purge(destination: str | None = Body(None, embed=True),
                        state: str | None = Body(None, embed=True)) -> dict[str, int]:
            return {"purged": await asyncio.to_thread(queue().purge, destination=destination, state=state)}

        return router


class _Unsendable(RuntimeError):
    """This job can never be sent as it is (marked failed, not retried)."""


__all__ = ["Rule", "RoutingAddIn", "RoutingOptions"]
