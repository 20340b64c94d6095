"""The workstation's HTTP API (``/api``, docs/web-api.md): one FastAPI application built by
:func:`build_api` from the add-in's collaborators, routers by resource family, errors as RFC 9457
problem+json, auth as a dependency (:class:`~.auth.Authenticator`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from pacskit.addins.workstation import logs as logviews
from pacskit.addins.workstation.auth import COOKIE, Caller
from pacskit.addins.workstation.jobs import FINISHED, NewJob
from pacskit.addins.workstation.search import FILTERS, SearchError, StudyQuery
from pacskit.addins.workstation.users import ROLES, UserError
from pacskit.services import WebAuthError
from pacskit.store.records import AuditRecord, TransactionLogEntry

if TYPE_CHECKING:
    from pacskit.addins.workstation import WorkstationAddIn

PROBLEM = "application/problem+json"
PROBLEM_TYPES = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 409: "conflict",
                 422: "invalid-body", 429: "too-many-requests", 502: "bad-gateway", 503: "unavailable",
                 504: "gateway-timeout"}


class ApiProblem(Exception):
    """Answered as problem+json with ``status`` and ``detail``."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    from http import HTTPStatus

    body = {"type": f"https://pacskit.dev/problems/{PROBLEM_TYPES.get(status, 'error')}",
            "title": HTTPStatus(status).phrase, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": 'Bearer realm="pacskit"'} if status == 401 else None
    if "retry_after" in extra:
        headers = {"Retry-After": str(extra["retry_after"])}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


# ---------------------------------------------------------------------- bodies

class Login(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class SessionInfo(BaseModel):
    user: str
    role: str
    csrf_token: str | None
    expires_at: str | None


class NodeInfo(BaseModel):
    title: str
    host: str
    port: int
    description: str = ""


class StudyPage(BaseModel):
    source: str
    total: int
    items: list[dict[str, Any]]


class SeriesList(BaseModel):
    source: str
    items: list[dict[str, Any]]


class JobRequest(BaseModel):
    kind: Literal["retrieve", "send"]
    study_uid: str = Field(pattern=r"^[0-9.]{1,64}$")
    series_uids: list[Annotated[str, Field(pattern=r"^[0-9.]{1,64}$")]] = Field(default_factory=list, max_length=1000)
    source: str | None = Field(None, max_length=16)
    destination: str | None = Field(None, max_length=16)
    level: Literal["STUDY", "SERIES"] | None = None
    method: Literal["move", "get"] = "move"
    patient_name: str | None = Field(None, max_length=200, description="shown in the queue (from the search result)")
    description: str | None = Field(None, max_length=200, description="shown in the queue (from the search result)")


class UserInfo(BaseModel):
    username: str
    role: str


class NewUser(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    role: Literal["viewer", "operator", "admin"]


class UserChange(BaseModel):
    password: str | None = Field(None, max_length=1024)
    role: Literal["viewer", "operator", "admin"] | None = None


class ServerInfo(BaseModel):
    name: str
    ae_title: str
    port: int
    state: str
    pid: int | None


class NewServer(BaseModel):
    name: str = Field(max_length=16)
    port: int = Field(ge=0, le=65535)
    host: str = "127.0.0.1"


# ---------------------------------------------------------------------- the app

def build_api(addin: WorkstationAddIn) -> FastAPI:
    """The ``/api`` application of ``addin`` (mounted by the server's HTTP listener)."""
    auth = addin.authenticator

    app = FastAPI(title="pacskit workstation API", description="docs/web-api.md", docs_url="/docs",
                  openapi_url="/openapi.json")

    @app.exception_handler(ApiProblem)
    async def _problem(_request: Request, exc: ApiProblem) -> JSONResponse:
        return problem(exc.status, exc.detail, **exc.extra)

    @app.exception_handler(WebAuthError)
    async def _auth_problem(_request: Request, exc: WebAuthError) -> JSONResponse:
        return problem(exc.status, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(422, f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request")

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    def role(minimum: str) -> Any:
        def dependency(request: Request) -> Caller:
            return auth.require(request, minimum)
        return Depends(dependency)

    viewer, operator, admin = role("viewer"), role("operator"), role("admin")

    # ------------------------------------------------------------------ session
    session = APIRouter(tags=["session"])

    def _session_body(caller: Caller) -> dict[str, Any]:
        s = caller.session
        return {"user": caller.user, "role": caller.role, "csrf_token": s.csrf_token if s else None,
                "expires_at": datetime.fromtimestamp(s.expires_at, UTC).isoformat(timespec="seconds") if s else None}

    @session.post("/session", response_model=SessionInfo)
    async def login(body: Login, request: Request) -> Response:
        address = request.client.host if request.client else None
        throttle = addin.login_throttle
        wait = throttle.wait(body.username, address or "")
        if wait > 0:
            addin.base.log.warning("workstation: login for %r from %s refused: too many failures", body.username[:64], address)
            addin.base.audit.user_authentication(body.username[:64] or "unknown", success=False, address=address,
                                                 description="workstation login refused: too many failures")
            raise ApiProblem(429, f"too many failed logins: try again in {int(wait) + 1} s",
                             retry_after=int(wait) + 1)
        user = await asyncio.to_thread(addin.users.authenticate, body.username, body.password)
        if user is None:
            throttle.failed(body.username, address or "")
            addin.base.log.warning("workstation: failed login for %r from %s", body.username[:64], address)
            addin.base.audit.user_authentication(body.username[:64] or "unknown", success=False, address=address,
                                                 description="workstation login refused")
            raise ApiProblem(401, "wrong user name or password")
        throttle.succeeded(body.username, address or "")
        token, s = addin.sessions.open(user)
        addin.base.log.info("workstation: %s (%s) logged in from %s", user.name, user.role, address)
        addin.base.audit.user_authentication(user.name, success=True, address=address, description="workstation login")
        caller = Caller(user.name, user.role, "session", s)
        response = JSONResponse(_session_body(caller))
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @session.get("/session", response_model=SessionInfo)
    async def current_session(caller: Caller = viewer) -> dict[str, Any]:
        return _session_body(caller)

    @session.delete("/session", status_code=204)
    async def logout(request: Request, caller: Caller = viewer) -> Response:
        token = request.cookies.get(COOKIE)
        if token:
            addin.sessions.close(token)
        address = request.client.host if request.client else None
        addin.base.audit.user_authentication(caller.user, login=False, address=address, description="workstation logout")
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    app.include_router(session)

    # ------------------------------------------------------------------ search
    search = APIRouter(tags=["search"])

    @search.get("/nodes", response_model=list[NodeInfo])
    def nodes(_caller: Caller = viewer) -> list[dict[str, Any]]:
        out = []
        for ae in addin.base.ae_titles.all():
            if ae.host and ae.port:
                out.append({"title": ae.title, "host": ae.host, "port": ae.port,
                            "description": getattr(ae, "description", "") or ""})
        return sorted(out, key=lambda n: n["title"])

    def _query(request: Request, sort: str, order: str, limit: int, offset: int) -> StudyQuery:
        filters = {k: v for k, v in request.query_params.items() if k in FILTERS and v}
        unknown = [k for k in request.query_params if k not in FILTERS and k not in ("source", "sort", "order", "limit", "offset")]
        if unknown:
            raise ApiProblem(400, f"unknown parameter {unknown[0][:40]!r}")
        try:
            return StudyQuery(filters, sort, order == "desc", limit, offset)
        except SearchError as exc:
            raise ApiProblem(exc.status, exc.detail) from None

    @search.get("/studies", response_model=StudyPage)
    async def studies(
        request: Request,
        source: str = "local",
        sort: str = "StudyDate",
        order: Literal["asc", "desc"] = "desc",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        _caller: Caller = viewer,
    ) -> dict[str, Any]:
        query = _query(request, sort, order, limit, offset)
        try:
            if source == "local":
                total, items = await asyncio.to_thread(addin.search_local, query)
            else:
                total, items = await addin.search_remote(source, query)
        except SearchError as exc:
            raise ApiProblem(exc.status, exc.detail, source=source) from None
        return {"source": source, "total": total, "items": items}

    @search.get("/studies/{study}/series", response_model=SeriesList)
    async def series(study: str, source: str = "local", _caller: Caller = viewer) -> dict[str, Any]:
        if not study.replace(".", "").isdigit() or len(study) > 64:
            raise ApiProblem(400, "not a Study Instance UID")
        try:
            if source == "local":
                items = await asyncio.to_thread(addin.series_local, study)
            else:
                items = await addin.series_remote(source, study)
        except SearchError as exc:
            raise ApiProblem(exc.status, exc.detail, source=source) from None
        return {"source": source, "items": items}

    app.include_router(search)

    # ------------------------------------------------------------------ jobs
    jobs = APIRouter(tags=["jobs"])
    runner = addin.jobs

    @jobs.get("/jobs")
    async def list_jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 200, _caller: Caller = viewer) -> list[dict[str, Any]]:
        return [j.to_json() for j in await asyncio.to_thread(runner.store.recent, limit)]

    @jobs.post("/jobs", status_code=201)
    async def create_job(body: JobRequest, caller: Caller = operator) -> dict[str, Any]:
        peer = body.source if body.kind == "retrieve" else body.destination
        if not peer:
            raise ApiProblem(400, f"a {body.kind} job needs {'source' if body.kind == 'retrieve' else 'destination'}")
        if addin.base.ae_titles.get(peer) is None:
            raise ApiProblem(400, f"AE {peer!r} is not in the registry")
        level = body.level or ("SERIES" if body.series_uids else "STUDY")
        if level == "SERIES" and not body.series_uids:
            raise ApiProblem(400, "level SERIES needs series_uids")
        patient_name, description = body.patient_name, body.description
        if body.kind == "send":  # from the index; a retrieve asks the remote AE when it runs
            patient_name, description = await addin.describe_local_study(body.study_uid)
            if patient_name is None:
                raise ApiProblem(404, f"study {body.study_uid} is not stored here")
        new = NewJob(kind=body.kind, study_uid=body.study_uid, level=level, series_uids=list(body.series_uids),
                     source=peer if body.kind == "retrieve" else None,
                     destination=peer if body.kind == "send" else None,
                     method=body.method if body.kind == "retrieve" else None,
                     patient_name=patient_name or "", description=description or "", created_by=caller.user)
        job = await runner.add(new)
        addin.base.log.info("workstation: %s queued job %d: %s %s %s", caller.user, job.id, body.kind, peer, body.study_uid)
        return job.to_json()

    @jobs.get("/jobs/events")
    async def job_events(request: Request, _caller: Caller = viewer) -> StreamingResponse:
        queue = runner.subscribe()
        current = await asyncio.to_thread(runner.store.recent, 1000)

        async def stream() -> AsyncIterator[bytes]:
            try:
                for job in reversed(current):
                    yield _sse("job", job.to_json())
                while True:
                    try:
                        data = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    yield _sse("job", data)
            finally:
                runner.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @jobs.get("/jobs/{job_id}")
    async def get_job(job_id: int, _caller: Caller = viewer) -> dict[str, Any]:
        job = await asyncio.to_thread(runner.store.get, job_id)
        if job is None:
            raise ApiProblem(404, f"no job {job_id}")
        return job.to_json()

    @jobs.delete("/jobs/{job_id}")
    async def cancel_job(job_id: int, caller: Caller = operator) -> dict[str, Any]:
        job = await runner.cancel(job_id)
        if job is None:
            current = await asyncio.to_thread(runner.store.get, job_id)
            if current is None:
                raise ApiProblem(404, f"no job {job_id}")
            raise ApiProblem(409, f"job {job_id} is {current.state}: nothing to cancel")
        addin.base.log.info("workstation: %s cancelled job %d", caller.user, job_id)
        return job.to_json()

    @jobs.post("/jobs/{job_id}/retry")
    async def retry_job(job_id: int, caller: Caller = operator) -> dict[str, Any]:
        job = await runner.retry(job_id)
        if job is None:
            current = await asyncio.to_thread(runner.store.get, job_id)
            if current is None:
                raise ApiProblem(404, f"no job {job_id}")
            raise ApiProblem(409, f"job {job_id} is {current.state}: only failed or cancelled jobs are retried")
        addin.base.log.info("workstation: %s retried job %d", caller.user, job_id)
        return job.to_json()

    app.include_router(jobs)

    # ------------------------------------------------------------------ users
    users = APIRouter(tags=["users"])

    def _user_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            text = str(exc)
            raise ApiProblem(409 if "exists" in text else 404 if text.startswith("no user") else 400, text) from None

    @users.get("/users", response_model=list[UserInfo])
    def list_users(_caller: Caller = admin) -> list[dict[str, str]]:
        return [u.public() for u in _user_call(addin.users.list)]

    @users.post("/users", status_code=201, response_model=UserInfo)
    def add_user(body: NewUser, caller: Caller = admin) -> dict[str, str]:
        user = _user_call(addin.users.add, body.username, body.password, body.role)
        addin.base.log.info("workstation: %s added user %s (%s)", caller.user, user.name, user.role)
        addin.base.audit.security_alert("user-security-attributes-changed", f"workstation user {user.name} added",
                                        peer_ae=caller.user, outcome=0)
        return user.public()  # type: ignore[no-any-return]

    @users.put("/users/{name}", response_model=UserInfo)
    def change_user(name: str, body: UserChange, caller: Caller = admin) -> dict[str, str]:
        user = _user_call(addin.users.update, name, password=body.password, role=body.role)
        if body.password is not None:
            addin.sessions.close_user(name)
        elif body.role is not None:
            addin.sessions.close_user(name, role=body.role)
        addin.base.log.info("workstation: %s changed user %s", caller.user, name)
        addin.base.audit.security_alert("user-security-attributes-changed", f"workstation user {name} changed",
                                        peer_ae=caller.user, outcome=0)
        return user.public()  # type: ignore[no-any-return]

    @users.delete("/users/{name}", status_code=204)
    def remove_user(name: str, caller: Caller = admin) -> Response:
        _user_call(addin.users.remove, name)
        addin.sessions.close_user(name)
        addin.base.log.info("workstation: %s removed user %s", caller.user, name)
        addin.base.audit.security_alert("user-security-attributes-changed", f"workstation user {name} removed",
                                        peer_ae=caller.user, outcome=0)
        return Response(status_code=204)

    app.include_router(users)

    # ------------------------------------------------------------------ servers
    servers = APIRouter(tags=["servers"])

    def _manager() -> Any:
        manager = addin.base.control.servers
        if manager is None:
            raise ApiProblem(404, "not managed")
        return manager

    def _server_json(info: Any) -> dict[str, Any]:
        return {"name": info.name, "ae_title": info.ae_title, "port": info.port,
                "state": "running" if info.pid is not None else "stopped", "pid": info.pid}

    async def _manage(action: str, name: str, caller: Caller) -> dict[str, Any]:
        manager = _manager()
        try:
            await asyncio.to_thread(getattr(manager, action), name)
        except Exception as exc:  # ManagerError: its message is for the operator
            raise ApiProblem(409, str(exc)) from None
        addin.base.log.info("workstation: %s: %s server %s", caller.user, action, name)
        for info in await asyncio.to_thread(manager.list):
            if info.name == name:
                return _server_json(info)
        raise ApiProblem(404, f"no server {name!r}")

    @servers.get("/servers", response_model=list[ServerInfo])
    async def list_servers(_caller: Caller = operator) -> list[dict[str, Any]]:
        manager = _manager()
        return [_server_json(i) for i in await asyncio.to_thread(manager.list)]

    @servers.post("/servers", status_code=201, response_model=ServerInfo)
    async def create_server(body: NewServer, caller: Caller = admin) -> dict[str, Any]:
        manager = _manager()
        try:
            await asyncio.to_thread(manager.create, body.name, port=body.port, host=body.host)
        except Exception as exc:
            raise ApiProblem(409, str(exc)) from None
        addin.base.log.info("workstation: %s created server %s", caller.user, body.name)
        for info in await asyncio.to_thread(manager.list):
            if info.name == body.name:
                return _server_json(info)
        raise ApiProblem(404, f"no server {body.name!r}")

    @servers.post("/servers/{name}/{action}", response_model=ServerInfo)
    async def server_action(name: str, action: Literal["start", "stop", "restart"], caller: Caller = admin) -> dict[str, Any]:
        return await _manage(action, name, caller)

    app.include_router(servers)

    # ------------------------------------------------------------------ logs
    logs = APIRouter(tags=["logs"])

    def _log_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except logviews.LogQueryError as exc:
            raise ApiProblem(400, str(exc)) from None

    def _engine(kind: str) -> Any:
        engine = addin.log_engine(kind)
        if engine is None:
            raise ApiProblem(503, f"no {'transaction log (txlog add-in)' if kind == 'transactions' else 'audit trail (audit add-in)'} on this server")
        return engine

    def _log_response(kind: str, request: Request, limit: int, offset: int, fmt: str) -> Any:
        names = ("since", "until", "ae", "operation", "status", "patient", "study") if kind == "transactions" \
            else ("since", "until", "user", "event", "outcome", "patient", "study")
        filters = {k: request.query_params.get(k) for k in names}
        query = logviews.query_transactions if kind == "transactions" else logviews.query_audit
        engine = _engine(kind)
        if fmt == "csv":
            page = _log_call(query, engine, filters, logviews.CSV_LIMIT, 0)
            fields = logviews.TRANSACTION_FIELDS if kind == "transactions" else logviews.AUDIT_FIELDS
            return Response(logviews.to_csv(page.items, fields), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="pacskit-{kind}.csv"'})
        page = _log_call(query, engine, filters, limit, offset)
        return {"total": page.total, "items": page.items}

    @logs.get("/logs/transactions")
    def transactions(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     offset: Annotated[int, Query(ge=0)] = 0, format: Literal["json", "csv"] = "json",
                     _caller: Caller = operator) -> Any:
        return _log_response("transactions", request, limit, offset, format)

    @logs.get("/logs/audit")
    def audit(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0)] = 0, format: Literal["json", "csv"] = "json",
              _caller: Caller = operator) -> Any:
        return _log_response("audit", request, limit, offset, format)

    def _tail(kind: str, request: Request) -> StreamingResponse:
        engine = _engine(kind)
        table = TransactionLogEntry if kind == "transactions" else AuditRecord
        query = logviews.query_transactions if kind == "transactions" else logviews.query_audit

        async def stream() -> AsyncIterator[bytes]:
            last = await asyncio.to_thread(logviews.last_id, engine, table)
            yield b": tail\n\n"
            idle = 0.0
            while True:
                page = await asyncio.to_thread(query, engine, {"after_id": str(last)}, 500, 0, ascending=True)
                for item in page.items:
                    last = max(last, int(item["id"]))
                    yield _sse("entry", item)
                if page.items:
                    idle = 0.0
                    continue
                if await request.is_disconnected():
                    return
                idle += addin.options.tail_interval
                if idle >= 15:
                    idle = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(addin.options.tail_interval)  # the writers have no event to wait on

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @logs.get("/logs/transactions/tail")
    def transactions_tail(request: Request, _caller: Caller = operator) -> StreamingResponse:
        return _tail("transactions", request)

    @logs.get("/logs/audit/tail")
    def audit_tail(request: Request, _caller: Caller = operator) -> StreamingResponse:
        return _tail("audit", request)

    app.include_router(logs)

    # ------------------------------------------------------------------ admin API
    app.mount("/admin", AdminProxy(addin))
    return app


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class AdminProxy:
    """``/api/admin/*``: the server's admin API (:attr:`pacskit.services.ServerControl.admin_app`)
    behind the workstation's auth: GET for operator and admin, other methods for admin."""

    def __init__(self, addin: WorkstationAddIn) -> None:
        self.addin = addin

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            needed = "operator" if request.method in ("GET", "HEAD") else "admin"
            caller = self.addin.authenticator.require(request, needed)
        except WebAuthError as exc:
            await problem(exc.status, exc.detail)(scope, receive, send)
            return
        app = self.addin.base.control.admin_app
        if app is None:
            await problem(503, "this server runs without its admin API ([admin] enabled = false)")(scope, receive, send)
            return
        if request.method not in ("GET", "HEAD"):
            self.addin.base.log.info("workstation: %s %s %s", caller.user, request.method, request.url.path)
        await app(scope, receive, send)


__all__ = ["ApiProblem", "build_api", "FINISHED", "ROLES"]
