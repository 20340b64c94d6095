"""The web workstation's back end (issue 19): the ``/api`` of docs/web-api.md and the single-page app
at ``/ui/``, on the server's public HTTP listener.

- users with roles (``users.toml``, :mod:`.users`; ``pacskit users ...``), sessions with idle expiry,
  CSRF header, admin API bearer token (:mod:`.auth`); logins and failures go to the audit trail;
- study search over the local index and remote AEs by C-FIND (:mod:`.search`);
- a durable job queue: retrieve (C-MOVE to this server or C-GET) and send (C-STORE), with progress,
  cancel, retry, parallel jobs and Server-Sent Events (:mod:`.jobs`);
- the admin API at ``/api/admin`` (through :attr:`pacskit.services.ServerControl.admin_app`), the
  servers root (``/api/servers``), the transaction log and audit trail (:mod:`.logs`).

While it runs it installs :attr:`pacskit.services.ServerControl.web_authenticator`: DICOMweb then
accepts the same sessions and tokens (and, with its ``auth = "none"``, requires them).

Off by default; ``pacskit serve --web`` turns it on with DICOMweb. Options: ``[addins.workstation]``.
"""

from __future__ import annotations

import asyncio
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from pacskit.addins.workstation.auth import Authenticator, LoginThrottle, Sessions
from pacskit.addins.workstation.jobs import JobRunner, JobStore
from pacskit.addins.workstation.search import (
    StudyQuery,
    search_local,
    search_remote,
    series_local,
    series_remote,
)
from pacskit.addins.workstation.users import USERS_FILE, UserFile
from pacskit.services import AddIn, AddInOptions, HttpService

#: the built single-page app (package data: the Vite build of ``web/`` writes it)
ASSETS_DIR = Path(__file__).resolve().parents[2] / "web_assets"


class WorkstationOptions(AddInOptions):
    enabled: bool = Field(False, description="serve the web workstation (/api, /ui) on the HTTP listener")
    session_minutes: float = Field(30, gt=0, le=7 * 24 * 60, description="idle minutes before a session expires")
    max_parallel: int = Field(2, ge=1, le=16, description="retrieve / send jobs running at the same time")
    users_file: str = Field(USERS_FILE, description="the users, relative to the server folder")
    remote_timeout: float = Field(30, gt=0, description="seconds a remote C-FIND may take")
    keep_jobs_days: float = Field(30, ge=0, description="finished jobs are forgotten after this many days (0: kept)")
    tail_interval: float = Field(1.0, gt=0, le=60, description="seconds between two reads of a log tail")
    assets_dir: str | None = Field(None, description="serve the UI from this folder instead of the packaged build")


@dataclass(slots=True)
class _Shared:
    """What the instances of the add-in share across reloads (``base.control.shared``)."""

    sessions: Sessions
    throttle: LoginThrottle
    job_store: JobStore | None = None
    runner: JobRunner | None = None
    instances: int = 0


class WorkstationAddIn(AddIn):
    name = "workstation"
    description = "Web workstation: search, loader, viewer, service manager and log viewer (/ui, /api)"
    Options = WorkstationOptions
    options: WorkstationOptions

    def __init__(self, options: AddInOptions, base: Any) -> None:
        super().__init__(options, base)
        settings = base.settings
        self.users = UserFile(settings.folder_path(self.options.users_file))
        # sessions and the job queue outlive a reload (the new instance starts before the old stops)
        state = base.control.shared.get(self.name)
        if state is None:
            sessions = Sessions(self.options.session_minutes)
            state = base.control.shared[self.name] = _Shared(sessions, LoginThrottle(lambda: sessions.clock()))
        self._state: _Shared = state
        self.sessions = state.sessions
        self.login_throttle = state.throttle
        self.sessions.lifetime = self.options.session_minutes * 60.0
        token_file = settings.admin.token_file
        self.authenticator = Authenticator(self.users, self.sessions,
                                           settings.folder_path(token_file) if token_file else None,
                                           base.audit, base.log)

    @property
    def job_store(self) -> JobStore | None:
        return self._state.job_store

    @property
    def jobs(self) -> JobRunner:
        assert self._state.runner is not None, "the add-in is not started"
        return self._state.runner

    async def start(self) -> None:
        if self.base.settings.workers > 1:
            # worker processes share the HTTP port: a login made on one would be unknown to the others,
            # and each would run the job queue
            raise ValueError("the web workstation needs workers = 1 (its sessions and job queue live in one process)")
        state = self._state
        if state.runner is None:
            state.job_store = await asyncio.to_thread(JobStore, self.base.data_dir / "workstation" / "jobs.db")
            state.runner = JobRunner(state.job_store, self.base, self.options.max_parallel, self.options.keep_jobs_days)
            await state.runner.start()
        elif state.runner.max_parallel != self.options.max_parallel:
            self.base.log.warning("workstation: max_parallel = %d applies at the next restart (running with %d)",
                                  self.options.max_parallel, state.runner.max_parallel)
        state.instances += 1
        self.base.control.web_authenticator = self.authenticator.web_user
        if not self.users.list() and self.base.settings.admin.token_file is None:
            self.base.log.warning("workstation: no users yet: create one with `pacskit users add <name> --role admin`")

    async def stop(self) -> None:
        control = self.base.control
        if control.web_authenticator == self.authenticator.web_user:
            control.web_authenticator = None
        state = self._state
        state.instances -= 1
        if state.instances > 0:
            return  # a reload: the new instance goes on with the queue
        if state.runner is not None:
            await state.runner.stop()
        if state.job_store is not None:
            state.job_store.close()
        control.shared.pop(self.name, None)

    def http_service(self) -> list[HttpService]:
        from pacskit.addins.workstation.api import build_api

        return [HttpService(build_api(self), prefix="/api"), HttpService(self._ui_router(), prefix="")]

    # ------------------------------------------------------------------ used by the API

    def _store(self) -> Any:
        from pacskit.addins.workstation.search import SearchError

        if self.base.store is None:
            raise SearchError(503, "no data store configured")
        return self.base.store

    def search_local(self, query: StudyQuery) -> tuple[int, list[dict[str, Any]]]:
        return search_local(self._store(), query)

    def series_local(self, study_uid: str) -> list[dict[str, Any]]:
        return series_local(self._store(), study_uid)

    async def search_remote(self, ae_title: str, query: StudyQuery) -> tuple[int, list[dict[str, Any]]]:
        return await search_remote(self.base.dicom_request, ae_title, query, self.options.remote_timeout)

    async def series_remote(self, ae_title: str, study_uid: str) -> list[dict[str, Any]]:
        return await series_remote(self.base.dicom_request, ae_title, study_uid, self.options.remote_timeout)

    async def describe_local_study(self, study_uid: str) -> tuple[str | None, str | None]:
        """(patient name, study description) of a stored study; ``(None, None)`` when it is not here."""
        from pacskit.addins.workstation.search import identifier
        from pacskit.store.query import STUDY_ROOT, compile_find, find

        def local() -> Any:
            q = compile_find(identifier("STUDY", ("PatientName", "StudyDescription"), {"StudyInstanceUID": study_uid}),
                             STUDY_ROOT)
            return next(iter(find(self._store(), q)), None)

        ds = await asyncio.to_thread(local)
        if ds is None:
            return None, None
        return str(ds.get("PatientName", "") or ""), str(ds.get("StudyDescription", "") or "")

    def log_engine(self, kind: str) -> Any:
        """The database engine holding the transaction log / audit trail, or ``None`` when the add-in
        writing it is not enabled on this server."""
        name = "txlog" if kind == "transactions" else "audit"
        section = self.base.settings.addin_section(name) or {}
        if not section.get("enabled", True):  # both are on by default
            return None
        url = section.get("database_url")
        if url:
            return self._other_engine(url)
        store = self.base.store
        return getattr(getattr(store, "index", None), "engine", None)

    def _other_engine(self, url: str) -> Any:
        cache = self.__dict__.setdefault("_engines", {})
        if url not in cache:
            from sqlalchemy import create_engine

            cache[url] = create_engine(url)
        return cache[url]

    # ------------------------------------------------------------------ the UI

    def assets(self) -> Path:
        if self.options.assets_dir:
            return self.base.settings.folder_path(self.options.assets_dir)
        return ASSETS_DIR

    def _ui_router(self) -> Any:
        from fastapi import APIRouter
        from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

        router = APIRouter(include_in_schema=False)

        @router.get("/")
        async def root() -> Any:
            return RedirectResponse("/ui/", status_code=307)

        @router.get("/ui")
        async def ui_root() -> Any:
            return RedirectResponse("/ui/", status_code=307)

        @router.get("/ui/{path:path}")
        async def ui(path: str) -> Any:
            folder = self.assets().resolve()
            index = folder / "index.html"
            if not index.is_file():
                return JSONResponse(
                    {"type": "https://pacskit.dev/problems/unavailable", "title": "Service Unavailable", "status": 503,
                     "detail": "the web UI is not built: npm --prefix web ci && npm --prefix web run build"},
                    status_code=503, media_type="application/problem+json")
            target = (folder / path).resolve() if path else index
            if not target.is_relative_to(folder) or not target.is_file():
                if "." in path.rsplit("/", 1)[-1]:  # a missing asset, not an app route
                    return JSONResponse({"type": "https://pacskit.dev/problems/not-found", "title": "Not Found",
                                         "status": 404, "detail": "no such file"},
                                        status_code=404, media_type="application/problem+json")
                target = index  # the single-page app's own routes
            media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            cache = "no-cache" if target == index else "public, max-age=31536000, immutable" \
                if "/assets/" in f"/{path}" else "no-cache"
            return FileResponse(target, media_type=media_type, headers={"Cache-Control": cache})

        return router


__all__ = ["WorkstationAddIn", "WorkstationOptions"]
