"""The public HTTP listener: what add-ins serve over HTTP (:meth:`pacskit.services.AddIn.http_service`).

The server starts it (``[http]`` in ``server.toml``) only when an enabled add-in contributes an
:class:`~pacskit.services.HttpService`: a FastAPI ``APIRouter`` is included under the service's
prefix (its routes join the listener's OpenAPI document at ``/openapi.json``), any other ASGI
application is mounted there. Two add-ins claiming the same prefix is a start-up error naming both.
A reload rebuilds the application from the new add-ins and swaps it in; requests already running
finish on the old one.

Unlike the admin API this listener is public: it has no authentication of its own, and it runs on the
server's event loop like everything else (no thread, no second process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pacskit.config.settings import ServerSettings
from pacskit.server.asgi import AsgiServers, bind_tcp
from pacskit.services import AddIn, HttpService

log = logging.getLogger("pacskit.http")


class HttpServiceError(RuntimeError):
    """The add-ins' HTTP services cannot be served (a prefix claimed twice, a bad prefix, no port)."""


def http_services(addins: Sequence[AddIn]) -> list[tuple[str, HttpService]]:
    """(add-in name, service) for every add-in that serves HTTP."""
    out = []
    for addin in addins:
        served = addin.http_service()
        if served is None:
            continue
        for service in [served] if isinstance(served, HttpService) else served:
            out.append((addin.name, service))
    return out


#: the path of the health endpoint (load balancers' checks): 200 when this node can serve, else 503
HEALTH_PATH = "/healthz"


def build_app(title: str, services: Sequence[tuple[str, HttpService]],
              health: Callable[[], tuple[bool, dict[str, Any]]] | None = None) -> Any:
    """One FastAPI application with every service under its prefix, and :data:`HEALTH_PATH` when
    ``health`` is given (it answers ``(ok, details)``). Raises :class:`HttpServiceError`."""
    from fastapi import APIRouter, FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title=title, description="HTTP services of the add-ins of one pacskit server")
    if health is not None:
        @app.get(HEALTH_PATH, tags=["server"], include_in_schema=True)
        def healthz() -> Any:
            """This node's health for load balancers: 200 when its index database answers and (in a
            cluster) its lease is current, else 503 with the reason."""
            ok, details = health()
            return JSONResponse({"status": "ok" if ok else "unavailable", **details}, status_code=200 if ok else 503)
    _problem_errors(app)
    owners: dict[str, str] = {}
    for name, service in services:
        prefix = (service.prefix if service.prefix is not None else f"/{name}").rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise HttpServiceError(f"add-in {name!r}: HTTP prefix {service.prefix!r} must start with '/'")
        if prefix in owners:
            raise HttpServiceError(f"add-ins {owners[prefix]!r} and {name!r} both serve HTTP under {prefix or '/'!r}")
        owners[prefix] = name
        if isinstance(service.app, APIRouter):
            app.include_router(service.app, prefix=prefix)
        elif not prefix:
            raise HttpServiceError(f"add-in {name!r}: only a router may be served at the root, not an application")
        else:
            app.mount(prefix or "/", service.app)
    return app


def _problem_errors(app: Any) -> None:
    """The listener's own refusals (no such path, method not allowed) as RFC 9457 problem+json, like
    the add-ins' (those mounted as applications answer their own errors)."""
    from http import HTTPStatus

    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def _http_problem(_request: Any, exc: HTTPException) -> Any:
        status = exc.status_code
        body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": str(exc.detail)}
        return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=exc.headers)


class _Current:
    """The ASGI application in use, replaced on reload (the listener and its socket stay)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class PublicHttp:
    """The listener of one server; :meth:`start` binds and serves, :meth:`replace` swaps the add-ins'
    services after a reload."""

    def __init__(self, settings: ServerSettings, services: Sequence[tuple[str, HttpService]], *,
                 reuse_port: bool = False, health: Callable[[], tuple[bool, dict[str, Any]]] | None = None) -> None:
        self.settings = settings
        self.reuse_port = reuse_port  # worker processes share the port, as they share the DICOM one
        self.title = f"pacskit {settings.ae_title}"
        self.health = health
        self._current = _Current(build_app(self.title, services, health))
        self._servers = AsgiServers("pacskit-http")
        self.address: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        assert self.address is not None
        return self.address[1]

    async def start(self) -> None:
        """Listen on ``[http] host:port``. Raises :class:`HttpServiceError` with one clear line."""
        http = self.settings.http
        host = http.host or self.settings.host
        try:
            sock = bind_tcp(host, http.port, reuse_port=self.reuse_port)
        except OSError as exc:
            raise HttpServiceError(f"cannot listen for HTTP on {host}:{http.port}: {exc.strerror or exc}") from exc
        ssl = {}
        if http.tls_cert and http.tls_key:
            ssl = {"ssl_certfile": str(self.settings.folder_path(http.tls_cert)),
                   "ssl_keyfile": str(self.settings.folder_path(http.tls_key))}
        try:
            await self._servers.serve(self._current, sock, forwarded_from=self.settings.proxy_protocol_from, **ssl)
        except Exception as exc:
            sock.close()
            raise HttpServiceError(f"HTTP listener cannot start: {type(exc).__name__}: {exc}") from exc
        self.address = sock.getsockname()[:2]
        log.info("add-in HTTP services on %s://%s:%d", "https" if ssl else "http", self.address[0], self.address[1])

    def replace(self, services: Sequence[tuple[str, HttpService]]) -> None:
        """Serve the services of a new generation of add-ins (raises :class:`HttpServiceError`
        before changing anything when they conflict)."""
        self._current.app = build_app(self.title, services, self.health)

    async def stop(self) -> None:
        await self._servers.stop()
