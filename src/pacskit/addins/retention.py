"""Retention add-in: delete old studies, and the oldest ones when the archive or the disk is full.

Off by default (it deletes data): ``[addins.retention] enabled = true``. Every ``interval`` seconds,
and on ``POST /addins/retention/run``, it evaluates its rules (:mod:`pacskit.store.retention`):

- ``rules``: ``[{name = "ct-90d", max_age_days = 90, source_aes = ["CT1"]}]``: studies last received
  more than ``max_age_days`` ago (from those AEs only, when given);
- ``max_bytes``: the archive's indexed size is kept at or under it, oldest-received studies first;
- ``min_free_bytes`` / ``min_free_percent``: the file system of the stored files keeps that much
  free, oldest-received studies first;
- ``protect_days``: the watermarks never take a study received more recently than that.

Studies are deleted with the store's crash-safe deletion (:mod:`pacskit.store.deletion`) and each is
audited (*DICOM Study Deleted*, the rule named as the active participant ``retention:<rule>``). With
``dry_run = true`` nothing is deleted and the report says what would go. With several processes on
one archive (``serve --workers N``, cluster nodes) one pass runs at a time: a process that finds
another's pass running skips its turn (its report says ``skipped``). Each run's report (rules,
studies with patient, reception time and size, the free space before and after, a watermark that
could not be met) is appended to ``reports_file`` (JSON lines) and served at
``GET /addins/retention/reports``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pacskit.services import AddIn, AddInOptions
from pacskit.store.deletion import Deleter, StudyDeletion
from pacskit.store.retention import RetentionRule, Selection, plan

log = logging.getLogger("pacskit.addin.retention")


class RuleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    max_age_days: float = Field(gt=0, description="studies last received longer ago than this")
    source_aes: list[str] = Field(default_factory=list, description="only studies all from these calling AEs")


class RetentionOptions(AddInOptions):
    enabled: bool = False  # deletes data: only when asked for
    interval: float = Field(3600.0, gt=0, description="seconds between runs")
    dry_run: bool = Field(False, description="report what would be deleted; delete nothing")
    rules: list[RuleOptions] = Field(default_factory=list)
    max_bytes: int | None = Field(None, ge=0, description="keep the archive's indexed size at or under this")
    min_free_bytes: int | None = Field(None, ge=0, description="keep this much free on the storage file system")
    min_free_percent: float | None = Field(None, ge=0, lt=100, description="the same, in percent of its size")
    protect_days: float = Field(1.0, ge=0, description="watermarks never delete a study received more recently")
    reports_file: str = Field("retention/reports.jsonl", description="JSON lines, relative: data folder")
    reports_kept: int = Field(50, ge=1, description="reports the admin API keeps in memory")


class RetentionAddIn(AddIn):
    name = "retention"
    description = "Retention rules: delete by age and AE, keep quota and free-space watermarks"
    Options = RetentionOptions
    options: RetentionOptions

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._reports: deque[dict[str, Any]] = deque(maxlen=self.options.reports_kept)
        self._task: asyncio.Task[None] | None = None
        if self.base.store is None:
            log.error("retention: the server has no store; nothing to do")
            return
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            try:
                await self.run(self.options.dry_run)
            except Exception:
                log.exception("retention run failed; next in %.0f s", self.options.interval)
            try:
                await asyncio.wait_for(self._wake.wait(), self.options.interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def run(self, dry_run: bool) -> dict[str, Any]:
        """One evaluation (never two at once); returns its report."""
        async with self._lock:
            report = await asyncio.to_thread(self._run, dry_run)
        self._reports.append(report)
        return report

    # ------------------------------------------------------------------ the work (a thread)

    def _storage_path(self) -> Path:
        return Path(self.base.settings.storage_path)

    def _min_free(self, total: int) -> int | None:
        opts = self.options
        wanted = [v for v in (opts.min_free_bytes,
                              int(total * opts.min_free_percent / 100) if opts.min_free_percent is not None else None)
                  if v is not None]
        return max(wanted) if wanted else None

    def _run(self, dry_run: bool) -> dict[str, Any]:
        # every worker process and every cluster node runs this add-in: one pass at a time, archive-wide
        with self.base.exclusive("retention") as mine:
            if not mine:
                log.info("retention: another process of the archive is running a pass; this one is skipped")
                return {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "dry_run": dry_run,
                        "skipped": "another process of the archive (worker or node) is running retention"}
            return self._pass(dry_run)

    def _pass(self, dry_run: bool) -> dict[str, Any]:
        store = self.base.store
        assert store is not None
        opts = self.options
        usage = shutil.disk_usage(self._storage_path())
        min_free = self._min_free(usage.total)
        started = dt.datetime.now(dt.UTC)
        selections = plan(
            store, [RetentionRule(r.name, r.max_age_days, tuple(r.source_aes)) for r in opts.rules],
            now=started, max_bytes=opts.max_bytes, free_bytes=usage.free, min_free_bytes=min_free,
            protect_days=opts.protect_days,
        )
        deleted_instances = 0
        deleted_bytes = 0
        failed: list[dict[str, str]] = []
        deleter = Deleter(store)
        for sel in selections:
            if dry_run or not sel.studies:
                continue
            def audit(part: StudyDeletion, rule: str = sel.rule) -> None:
                self._audit(part, rule)

            for study in sel.studies:
                try:
                    done = deleter.delete("study", [study.study_instance_uid], reason=f"retention rule {sel.rule}",
                                          on_study=audit)
                except Exception as exc:  # one study failing does not stop the others
                    log.exception("retention: study %s not deleted", study.study_instance_uid)
                    failed.append({"study_instance_uid": study.study_instance_uid, "error": str(exc)})
                    continue
                deleted_instances += done.instances
                deleted_bytes += done.bytes
        report = {
            "at": started.isoformat(timespec="seconds"),
            "dry_run": dry_run,
            "free_bytes_before": usage.free,
            "free_bytes_after": shutil.disk_usage(self._storage_path()).free,
            "total_bytes": usage.total,
            "min_free_bytes": min_free,
            "max_bytes": opts.max_bytes,
            "selections": [sel.to_json() for sel in selections],
            "studies": sum(len(sel.studies) for sel in selections),
            "deleted_instances": deleted_instances,
            "deleted_bytes": deleted_bytes,
            "failed": failed,
        }
        self._write(report, selections)
        return report

    def _audit(self, part: StudyDeletion, rule: str) -> None:
        self.base.audit.study_deleted(part.study_instance_uid, part.patient_id, user=f"retention:{rule}",
                                      sop_classes=part.sop_classes)

    def _write(self, report: dict[str, Any], selections: list[Selection]) -> None:
        path = Path(self.options.reports_file)
        if not path.is_absolute():
            path = self.base.data_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(report) + "\n")
        for sel in selections:
            if sel.studies:
                log.warning("retention %s%s: %d studies, %d bytes", sel.rule, " (dry run)" if report["dry_run"] else "",
                            len(sel.studies), sel.bytes)
            if sel.shortfall:
                log.error("retention watermark not met: %d bytes short (the remaining studies are protected)",
                          sel.shortfall)

    # ------------------------------------------------------------------ admin API

    def admin_router(self) -> Any | None:
        """``GET /reports`` (the recent runs, newest last), ``POST /run`` (``{"dry_run": bool}``; default
        the add-in's ``dry_run``): evaluate now and return the report."""
        from fastapi import APIRouter, Body, HTTPException

        router = APIRouter()

        @router.get("/reports")
        async def reports() -> list[dict[str, Any]]:
            return list(self._reports)

        @router.post("/run")
        async def run_now(dry_run: bool | None = Body(None, embed=True)) -> dict[str, Any]:
            if self.base.store is None:
                raise HTTPException(409, "the server has no store")
            return await self.run(self.options.dry_run if dry_run is None else dry_run)

        return router
