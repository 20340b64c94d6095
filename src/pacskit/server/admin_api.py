"""The admin API of one server: FastAPI, served by uvicorn on the server's own event loop.

:class:`AdminService` is started by :meth:`pacskit.server.server.Server.start` when ``[admin] enabled``
(the default) and stopped first at shutdown. It listens on

- a Unix domain socket in the server folder (``<AE title>.sock`` unless ``[admin] socket`` says
  otherwise), mode 0600: the file system decides who may administer the server, no token needed;
- optionally TCP (``[admin] tcp_host``/``tcp_port``), always with TLS and a bearer token
  (``Authorization: Bearer <token>``, the token read from ``token_file``); every route, add-in routes
  included, is behind that check.

Endpoints (the OpenAPI document is at ``/openapi.json``, interactive docs at ``/docs``):

==========================  ============================================================================
``GET /status``             AE title, port, pid, uptime, associations, add-ins
``GET /statistics``         counters: associations, operations per service (statuses, latency), bytes
``GET /metrics``            the same in Prometheus text format
``GET /cluster``            a cluster node: this node and every registered node (lease, ingests in flight)
``GET|POST /ae-titles``     the AE registry (the ``ae_titles`` base service; effective at once)
``GET|PUT|DELETE /ae-titles/{title}``
``GET /clients``            open connections: calling AE, address, since, contexts, bytes, operation
``DELETE /clients/{id}``    A-ABORT that association
``GET /addins``             add-ins with their options and options JSON schema
``PATCH /addins/{name}``    change options (written to server.toml; applied by a reload)
``POST /reload``            re-read server.toml, rebuild the add-ins (open associations keep working)
``GET /events``             Server-Sent Events: connection, operation, error, admin
``POST /store/delete``      delete patients / studies / series / instances (:mod:`pacskit.server.admin_store`)
``/addins/{name}/...``      the add-in's own routes (:meth:`pacskit.services.AddIn.admin_router`)
==========================  ============================================================================
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

import pacskit
from pacskit.server.asgi import AsgiServers, bind_tcp
from pacskit.server.stats import ErrorNotifier, Notifications, Statistics
from pacskit.server.access import is_open
from pacskit.server.addin_manager import AddInError
from pacskit.config.aetitles import RemoteAE
from pacskit.config.settings import SettingsError

if TYPE_CHECKING:
    from pacskit.server.server import Server

log = logging.getLogger("pacskit.admin")

MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL


class AdminError(RuntimeError):
    """The admin API cannot start; the message is one line meant for the operator."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return "" if name == uid else name


class AdminService:
    """The admin API of ``server``: statistics, notifications and the HTTP listeners."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.settings = server.settings
        self.started_at = time.time()
        self.loop = asyncio.get_running_loop()
        self.notifications = Notifications(self.loop)
        self.statistics = Statistics(
            server.bus, notifications=self.notifications, connection_id=self._connection_id
        )
        self._error_notifier = ErrorNotifier(self.notifications)
        self._uvicorns = AsgiServers("pacskit-admin")
        self._addin_routes: list[Any] = []
        self.socket_path: Path = self.settings.admin_socket_path
        self._socket_inode: tuple[int, int] | None = None  # the socket file this service created
        self.tcp_address: tuple[str, int] | None = None
        self.app: FastAPI = create_app(self)

    def _connection_id(self, assoc: Any) -> int | None:
        for acceptor in self.server.acceptors:
            connection = acceptor.connection_of(assoc)
            if connection is not None:
                return connection.id
        return None

    def connections(self) -> list[Any]:
        """Open connections of every listener of the server, oldest first."""
        out = [c for acceptor in self.server.acceptors for c in acceptor.connections()]
        return sorted(out, key=lambda c: c.id)

    def abort_connection(self, connection_id: int) -> bool:
        return any(acceptor.abort_connection(connection_id) for acceptor in self.server.acceptors)

    # ------------------------------------------------------------------ life cycle

    def collect(self) -> None:
        """Start the statistics (unless ``[admin] statistics = false``) and the error notifications."""
        if self.settings.admin.statistics:
            self.statistics.start()
        logging.getLogger("pacskit").addHandler(self._error_notifier)

    async def start(self) -> None:
        """Start listening (and collecting, if :meth:`collect` was not called). Raises :class:`AdminError`."""
        admin = self.settings.admin
        self.collect()
        unix_sock = self._bind_unix(self.socket_path)
        tcp_sock = None
        try:
            token = None
            if admin.tcp_port is not None:
                token = self._read_token(self.settings.folder_path(admin.token_file or ""))
                tcp_sock = self._bind_tcp(admin.tcp_host or "127.0.0.1", admin.tcp_port)
            self.mount_addin_routers()
            await self._serve(self.app, unix_sock)
            if tcp_sock is not None:
                assert token is not None
                await self._serve(
                    BearerTokenGuard(self.app, token),
                    tcp_sock,
                    ssl_certfile=str(self.settings.folder_path(admin.tls_cert or "")),
                    ssl_keyfile=str(self.settings.folder_path(admin.tls_key or "")),
                )
                self.tcp_address = tcp_sock.getsockname()[:2]
        except BaseException:
            await self.stop()
            unix_sock.close()
            if tcp_sock is not None:
                tcp_sock.close()
            raise
        log.info(
            "admin API on %s%s", self.socket_path,
            f" and https://{self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else "",
        )

    def _bind_unix(self, path: Path) -> socket.socket:
        if len(os.fsencode(str(path))) > MAX_UNIX_PATH:
            raise AdminError(
                f"admin socket path {path} is longer than {MAX_UNIX_PATH} bytes; set [admin] socket to a shorter path"
            )
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise AdminError(f"admin socket path {path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a server that did not stop cleanly
            else:
                raise AdminError(f"admin socket {path} is in use: is this server already running?")
            finally:
                probe.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
            st = path.lstat()
            self._socket_inode = (st.st_dev, st.st_ino)
        except OSError as exc:
            sock.close()
            raise AdminError(f"cannot create the admin socket {path}: {exc.strerror or exc}") from exc
        sock.setblocking(False)
        return sock

    def _bind_tcp(self, host: str, port: int) -> socket.socket:
        try:
            return bind_tcp(host, port)
        except OSError as exc:
            raise AdminError(f"admin API cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

    @staticmethod
    def _read_token(path: Path) -> str:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminError(f"cannot read the admin token file {path}: {exc.strerror or exc}") from exc
        if len(token) < 16:
            raise AdminError(f"the admin token in {path} is shorter than 16 characters")
        if path.stat().st_mode & 0o077:
            log.warning("admin token file %s is readable by others than its owner (chmod 600 it)", path)
        return token

    async def _serve(self, app: Any, sock: socket.socket, **ssl: str) -> None:
        try:
            await self._uvicorns.serve(app, sock, **ssl)
        except Exception as exc:
            raise AdminError(f"admin API cannot start: {type(exc).__name__}: {exc}") from exc

    async def stop(self) -> None:
        """End the event streams, close the listeners, stop collecting."""
        self.notifications.close()
        await self._uvicorns.stop()
        self.statistics.stop()
        logging.getLogger("pacskit").removeHandler(self._error_notifier)
        try:  # only the socket file we created: never another server's (or a refused start's)
            st = self.socket_path.lstat()
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._socket_inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass
        self._socket_inode = None

    # ------------------------------------------------------------------ add-in routes

    def mount_addin_routers(self) -> None:
        """(Re)mount each loaded add-in's :meth:`~pacskit.services.AddIn.admin_router` under
        ``/addins/<name>/``; after a reload, the new instances' routers replace the old ones."""
        routes = self.app.router.routes
        for route in self._addin_routes:
            if route in routes:
                routes.remove(route)
        self._addin_routes = []
        for addin in self.server.addins:
            try:
                router = addin.admin_router()
            except Exception:
                log.exception("add-in %s: admin_router() failed; its admin routes are not mounted", addin.name)
                continue
            if router is None:
                continue
            before = list(routes)
            self.app.include_router(router, prefix=f"/addins/{addin.name}", tags=[f"add-in {addin.name}"])
            self._addin_routes.extend(r for r in routes if r not in before)
        self.app.openapi_schema = None  # rebuilt on the next /openapi.json

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        server, settings = self.server, self.settings
        acceptor = server.acceptor
        connections = self.connections()
        established = sum(
            1 for c in connections
            if c.association.is_established and not (c.association.is_aborted or c.association.is_released)
        )
        pending = 0
        for c in connections:
            activity = self.statistics.activity(c.association)
            pending += len(activity.running) if activity is not None else 0
        return {
            "ae_title": settings.ae_title,
            "host": settings.host,
            "port": server.port if acceptor is not None else settings.port,
            "pid": os.getpid(),
            "folder": str(settings.folder.resolve()),
            "started_at": _iso(self.started_at),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "associations_active": established,
            "connections_open": len(connections),
            "pending_requests": pending,
            "max_associations": settings.max_associations,
            "addins": [a.name for a in server.addins],
            "access": {
                "open_mode": settings.open_mode,
                "loopback": settings.is_loopback,
                "unregistered_aes_accepted": is_open(settings),
            },
            "admin": {
                "socket": str(self.socket_path),
                "tcp": f"{self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else None,
                "statistics": self.statistics.running,
                "notifications_dropped": self.notifications.dropped,
            },
        }

    def clients(self) -> list[dict[str, Any]]:
        now = self.statistics._clock()
        out = []
        for connection in self.connections():
            assoc = connection.association
            activity = self.statistics.activity(assoc)
            if assoc.is_aborted:
                state = "aborted"
            elif assoc.is_released:
                state = "released"
            elif assoc.reject is not None:
                state = "rejected"
            elif assoc.is_established:
                state = "established"
            else:
                state = "negotiating"
            peer = assoc.peer_address
            out.append(
                {
                    "id": connection.id,
                    "calling_ae": assoc.remote_ae_title,
                    "called_ae": assoc.requested.called_ae_title if assoc.requested is not None else "",
                    "address": f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or ""),
                    "since": _iso(connection.since),
                    "state": state,
                    "implementation_class_uid": assoc.peer_implementation_class_uid,
                    "implementation_version_name": assoc.peer_implementation_version_name,
                    "contexts": [
                        {
                            "id": pc.id,
                            "abstract_syntax": pc.abstract_syntax,
                            "name": _uid_name(pc.abstract_syntax),
                            "transfer_syntax": pc.transfer_syntax,
                            "scu": pc.as_scu,
                            "scp": pc.as_scp,
                        }
                        for pc in assoc.accepted_contexts
                    ],
                    "bytes_in": activity.bytes_in if activity else None,
                    "bytes_out": activity.bytes_out if activity else None,
                    "operations": activity.operations if activity else None,
                    "pending_requests": len(activity.running) if activity else None,
                    "current_operation": activity.current_operation(now) if activity else None,
                    "busy": assoc.busy,
                }
            )
        return out

    def addins(self) -> list[dict[str, Any]]:
        server = self.server
        loaded = {a.name: a for a in server.addins}
        mounted = {r.path.split("/")[2] for r in self._addin_routes if getattr(r, "path", "").startswith("/addins/")}
        out = []
        for name, found in sorted(server.manager.found.items()):
            section = server.settings.addin_section(name)
            addin = loaded.get(name)
            entry: dict[str, Any] = {
                "name": name,
                "description": found.cls.description or (found.cls.__doc__ or "").strip().split("\n")[0],
                "origin": found.origin,
                "loaded": addin is not None,
                "configured": section,
                "schema": found.cls.options_schema(),
                "admin_routes": f"/addins/{name}/" if name in mounted else None,
            }
            if addin is not None:
                entry["options"] = addin.options.model_dump(mode="json")
            else:
                try:
                    entry["options"] = found.cls.Options.model_validate(section).model_dump(mode="json")
                except Exception as exc:
                    entry["options"] = None
                    entry["error"] = str(exc)
            out.append(entry)
        return out

    def metrics(self) -> str:
        return prometheus_text(self)


def prometheus_text(service: AdminService) -> str:
    """The Prometheus text exposition format (version 0.0.4) of the server's counters."""
    stats = service.statistics
    ae = _label(service.settings.ae_title)
    status = service.status()
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            extra = f",{labels}" if labels else ""
            lines.append(f'{name}{{ae="{ae}"{extra}}} {_num(value)}')

    metric("pacskit_up", "gauge", "1 while the server runs", [("", 1)])
    metric("pacskit_uptime_seconds", "gauge", "seconds since the server started", [("", status["uptime_seconds"])])
    metric("pacskit_associations_active", "gauge", "established incoming associations", [("", status["associations_active"])])
    metric("pacskit_connections_open", "gauge", "open incoming connections (any state)", [("", status["connections_open"])])
    metric("pacskit_pending_requests", "gauge", "requests received and not yet answered", [("", status["pending_requests"])])
    metric("pacskit_addins_loaded", "gauge", "add-ins loaded", [("", len(status["addins"]))])
    metric("pacskit_connections_total", "counter", "incoming connections", [("", stats.connections_total)])
    metric("pacskit_associations_total", "counter", "incoming associations accepted", [("", stats.associations_total)])
    metric("pacskit_associations_rejected_total", "counter", "incoming associations rejected", [("", stats.associations_rejected)])
    metric("pacskit_associations_aborted_total", "counter", "incoming associations aborted", [("", stats.associations_aborted)])
    metric("pacskit_associations_released_total", "counter", "incoming associations released", [("", stats.associations_released)])
    metric("pacskit_outgoing_associations_total", "counter", "associations opened to other AEs", [("", stats.outgoing_associations_total)])
    metric("pacskit_received_bytes_total", "counter", "bytes of PDUs received", [("", stats.bytes_in)])
    metric("pacskit_sent_bytes_total", "counter", "bytes of PDUs sent", [("", stats.bytes_out)])
    metric("pacskit_notifications_dropped_total", "counter", "events a slow subscriber of /events lost", [("", service.notifications.dropped)])
    with stats._lock:
        operations = {name: (dict(op.statuses), op.latency.cumulative(), op.latency.sum, op.latency.count) for name, op in stats.operations.items()}
    samples: list[tuple[str, float]] = []
    for name, (statuses, _, _, _) in sorted(operations.items()):
        for code, n in sorted(statuses.items()):
            samples.append((f'service="{_label(name)}",status="0x{code:04X}"', n))
    metric("pacskit_operations_total", "counter", "DIMSE operations answered, by service and final status", samples)
    lines.append("# HELP pacskit_operation_duration_seconds time from request received to final response sent")
    lines.append("# TYPE pacskit_operation_duration_seconds histogram")
    for name, (_, buckets, total, count) in sorted(operations.items()):
        svc = _label(name)
        for le, n in buckets:
            lines.append(f'pacskit_operation_duration_seconds_bucket{{ae="{ae}",service="{svc}",le="{le}"}} {n}')
        lines.append(f'pacskit_operation_duration_seconds_sum{{ae="{ae}",service="{svc}"}} {_num(total)}')
        lines.append(f'pacskit_operation_duration_seconds_count{{ae="{ae}",service="{svc}"}} {count}')
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class BearerTokenGuard:
    """ASGI middleware of the TCP listener: every request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                body = b'{"detail":"a bearer token is required"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="pacskit"'),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------- the FastAPI application


class ReloadResult(BaseModel):
    """What ``POST /reload`` did."""

    addins: list[str]
    restart_needed: list[str]
    previous_associations: int



def create_app(service: AdminService) -> FastAPI:
    """The FastAPI application of one server's admin API (see the module docstring)."""
    from pacskit.config.settings import update_settings_file

    server = service.server
    app = FastAPI(
        title=f"pacskit admin API — {service.settings.ae_title}",
        version=getattr(pacskit, "__version__", "0"),
        description="Administration of one pacskit DICOM server (see docs/admin.md).",
    )

    @app.get("/status", tags=["server"])
    async def get_status() -> dict[str, Any]:
        """The server at a glance."""
        return service.status()

    @app.get("/statistics", tags=["server"])
    async def get_statistics() -> dict[str, Any]:
        """Counters since start: associations, operations per service (statuses, latency), bytes."""
        data = service.statistics.snapshot()
        status = service.status()
        data["associations_active"] = status["associations_active"]
        data["pending_requests"] = status["pending_requests"]
        return data

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse)
    async def get_metrics() -> PlainTextResponse:
        """Prometheus text exposition format."""
        return PlainTextResponse(service.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/cluster", tags=["server"])
    async def get_cluster() -> dict[str, Any]:
        """This node and the nodes sharing its archive (``[cluster]``, docs/deployment.md); 404 on a
        single server."""
        node = server.cluster
        if node is None:
            raise HTTPException(404, "this server is not a cluster node ([cluster] in server.toml)")
        from pacskit.store.cluster import cluster_nodes

        nodes = await asyncio.to_thread(cluster_nodes, node.engine)
        return {"node": node.name, "node_id": node.node_id, "healthy": node.healthy(),
                "recovered_blobs": node.recovered_blobs,
                "nodes": [{**n, "started_at": str(n["started_at"]), "lease_until": str(n["lease_until"])}
                          for n in nodes]}

    # -------------------------------------------------------------- AE titles

    def _ae_or_404(title: str) -> RemoteAE:
        entry = server.ae_titles.get(title)
        if entry is None:
            raise HTTPException(404, f"AE {title!r} is not registered")
        return entry

    def _ae_json(entry: RemoteAE) -> dict[str, Any]:
        data = entry.model_dump(mode="json")
        if entry.allowed_services is not None:
            data["allowed_services"] = sorted(entry.allowed_services)
        return data

    @app.get("/ae-titles", tags=["AE titles"])
    def list_ae_titles() -> list[dict[str, Any]]:
        """The registry of remote AEs."""
        return [_ae_json(e) for e in server.ae_titles.all()]

    @app.get("/ae-titles/{title}", tags=["AE titles"])
    def get_ae_title(title: str) -> dict[str, Any]:
        return _ae_json(_ae_or_404(title))

    @app.post("/ae-titles", tags=["AE titles"], status_code=201)
    def add_ae_title(entry: RemoteAE) -> dict[str, Any]:
        """Register a remote AE; it may associate at once (where registration is required)."""
        try:
            server.ae_titles.add(entry)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("admin: AE %s registered (%s:%d)", entry.title, entry.host, entry.port)
        service.notifications.publish("admin", action="ae-added", title=entry.title)
        return _ae_json(entry)

    @app.put("/ae-titles/{title}", tags=["AE titles"])
    def edit_ae_title(title: str, entry: RemoteAE) -> dict[str, Any]:
        """Replace a registered AE's entry (the title in the body must be the same)."""
        _ae_or_404(title)
        if entry.title != title.strip():
            raise HTTPException(422, f"the body names {entry.title!r}, the path {title!r}; remove and add to rename")
        server.ae_titles.add(entry, replace=True)
        log.info("admin: AE %s changed", entry.title)
        service.notifications.publish("admin", action="ae-changed", title=entry.title)
        return _ae_json(entry)

    @app.delete("/ae-titles/{title}", tags=["AE titles"], status_code=204)
    def remove_ae_title(title: str) -> None:
        if not server.ae_titles.remove(title):
            raise HTTPException(404, f"AE {title!r} is not registered")
        log.info("admin: AE %s removed", title)
        service.notifications.publish("admin", action="ae-removed", title=title)

    # -------------------------------------------------------------- clients

    @app.get("/clients", tags=["clients"])
    async def list_clients() -> list[dict[str, Any]]:
        """Open incoming connections, oldest first."""
        return service.clients()

    @app.get("/clients/{client_id}", tags=["clients"])
    async def get_client(client_id: int) -> dict[str, Any]:
        for client in service.clients():
            if client["id"] == client_id:
                return client
        raise HTTPException(404, f"no open connection {client_id}")

    @app.delete("/clients/{client_id}", tags=["clients"], status_code=204)
    async def disconnect_client(client_id: int) -> None:
        """Abort the association (the peer receives an A-ABORT)."""
        if not service.abort_connection(client_id):
            raise HTTPException(404, f"no open connection {client_id}")
        service.notifications.publish("admin", action="client-disconnected", id=client_id)

    # -------------------------------------------------------------- add-ins

    @app.get("/addins", tags=["add-ins"])
    def list_addins() -> list[dict[str, Any]]:
        """Every installed add-in: loaded or not, its options, its options JSON schema."""
        return service.addins()

    @app.get("/addins/{name}", tags=["add-ins"])
    def get_addin(name: str) -> dict[str, Any]:
        for entry in service.addins():
            if entry["name"] == name:
                return entry
        raise HTTPException(404, f"no add-in {name!r} is installed")

    @app.patch("/addins/{name}", tags=["add-ins"])
    async def edit_addin(
        name: str,
        changes: dict[str, Any] = Body(..., description="options to set; null resets an option to its default"),
        reload: bool = Query(False, description="reload at once"),
    ) -> dict[str, Any]:
        """Change an add-in's options in server.toml (validated first); they apply on reload."""
        found = server.manager.found.get(name)
        if found is None:
            raise HTTPException(404, f"no add-in {name!r} is installed")

        def mutate(data: dict[str, Any]) -> None:
            section = dict(data.get("addins", {}).get(name, {}))
            for key, value in changes.items():
                if value is None:
                    section.pop(key, None)
                else:
                    section[key] = value
            try:
                found.cls.Options.model_validate(section)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise HTTPException(422, f"options of add-in {name!r} are invalid: {problems}") from None
            target = data.setdefault("addins", {}).setdefault(name, {})  # in place: comments stay
            for key, value in changes.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value

        try:
            await asyncio.to_thread(update_settings_file, server.settings.folder, mutate)
        except SettingsError as exc:
            raise HTTPException(422, str(exc)) from None
        log.info("admin: options of add-in %s changed: %s", name, ", ".join(sorted(changes)))
        service.notifications.publish("admin", action="addin-options-changed", addin=name)
        result: dict[str, Any] = {"name": name, "written": True, "reloaded": False}
        if reload:
            result["reload"] = (await _reload()).model_dump()
            result["reloaded"] = True
        return result

    async def _reload() -> ReloadResult:
        try:
            report = await server.reload()
        except SettingsError as exc:
            raise HTTPException(422, str(exc)) from None
        except AddInError as exc:
            raise HTTPException(409, str(exc)) from None
        service.mount_addin_routers()
        service.notifications.publish(
            "admin", action="reloaded", addins=report.addins, restart_needed=report.restart_needed,
            previous_associations=report.previous_associations,
        )
        return ReloadResult(
            addins=report.addins, restart_needed=report.restart_needed, previous_associations=report.previous_associations
        )

    @app.post("/reload", tags=["server"])
    async def reload_settings() -> ReloadResult:
        """Re-read server.toml and rebuild the add-ins; open associations keep the previous ones."""
        return await _reload()

    # -------------------------------------------------------------- notifications

    @app.get("/events", tags=["server"])
    async def events(
        request: Request,
        kinds: str | None = Query(None, description="comma-separated: connection, operation, error, admin"),
    ) -> StreamingResponse:
        """Server-Sent Events; each ``data:`` line is one JSON object with an ``event`` key."""
        wanted = frozenset(k.strip() for k in kinds.split(",")) if kinds else None
        queue = service.notifications.subscribe(wanted)

        async def stream() -> Any:
            try:
                yield ": pacskit events\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), 15.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:
                        return
                    yield f"event: {item['event']}\ndata: {json.dumps(item, default=str)}\n\n"
            finally:
                service.notifications.unsubscribe(queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    from pacskit.server.admin_store import store_router  # archive management: docs/admin-guide.md

    app.include_router(store_router(server))
    return app
