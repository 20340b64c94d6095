"""Several ``pacskit serve`` processes sharing one PostgreSQL database and one S3 bucket: the nodes of a
cluster (docs/deployment.md), for the scale-out tests and benchmarks.

:func:`fresh_postgres_database` creates a database of its own for a run (dropped afterwards);
:func:`start_node` writes a node's ``server.toml`` (same AE title, same ``[database]`` and
``[storage]``, its own local folder, DICOMweb on, ``[cluster]`` on) and starts it, waiting (bounded)
for its ``/healthz`` to answer 200; :func:`pacs_nodes` runs N of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacskit.testing.peers import LOCALHOST, PeerError, _stop, _tail, free_port

#: the PostgreSQL server of the tests (an account that may CREATE and DROP databases)
POSTGRES_URL = os.environ.get("PACSKIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str = POSTGRES_URL, prefix: str = "pacskit_cluster") -> Iterator[str]:
    """A new, empty database on the server of ``admin_url`` (its URL), dropped at the end (connections
    still open to it are terminated first). Raises what the driver raises when the server is away."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


@dataclass
class Node:
    """One running ``pacskit serve`` of the cluster."""

    name: str
    folder: Path
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[Any]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def admin_socket(self) -> Path:
        return self.folder / "admin.sock"

    def health(self) -> int | None:
        """The HTTP status of ``/healthz`` (None when nothing answers)."""
        try:
            with urllib.request.urlopen(f"http://{LOCALHOST}:{self.http_port}/healthz", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request to this node's admin API over its Unix socket: (status, JSON body or None)."""
        import httpx

        transport = httpx.HTTPTransport(uds=str(self.admin_socket))
        with httpx.Client(transport=transport, base_url="http://pacskit", timeout=30) as client:
            response = client.request(method, path, json=body)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    def kill(self) -> None:
        """kill -9 (a machine lost in the middle of whatever it was doing)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def node_settings(name: str, *, ae_title: str, database_url: str, s3_options: dict[str, Any], dicom_port: int,
                  http_port: int, lease_seconds: float = 30.0, **extra: Any) -> dict[str, Any]:
    """The ``server.toml`` of one node (as a dict)."""
    settings: dict[str, Any] = {
        "ae_title": ae_title, "port": dicom_port, "data_dir": "data",
        "database": {"url": database_url},
        "storage": {"backend": "s3", "options": s3_options},
        "cluster": {"enabled": True, "node_name": name, "lease_seconds": lease_seconds},
        "admin": {"enabled": True, "socket": "admin.sock", "statistics": False},
        "http": {"port": http_port},
        "addins": {"dicomweb": {"enabled": True}},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return settings


def start_node(folder: Path, name: str, *, ae_title: str, database_url: str, s3_options: dict[str, Any],
               lease_seconds: float = 30.0, startup_timeout: float = 60, attempts: int = 4,
               env: dict[str, str] | None = None, **extra: Any) -> Node:
    """Write ``folder/server.toml`` and start ``pacskit serve`` there; returns once ``/healthz``
    answers 200 (a port clash retries on new ports). Raises :class:`PeerError` with the log's tail."""
    import tomli_w

    folder.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TCP_NODELAY": "1", **(env or {})}
    last = ""
    for _attempt in range(attempts):
        dicom_port, http_port = free_port(), free_port()
        (folder / "server.toml").write_text(tomli_w.dumps(node_settings(
            name, ae_title=ae_title, database_url=database_url, s3_options=s3_options, dicom_port=dicom_port,
            http_port=http_port, lease_seconds=lease_seconds, **extra)))
        log_path = folder / "node.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(folder)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment)
        node = Node(name, folder, dicom_port, http_port, proc, log_path)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if node.health() == 200:
                return node
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
        text = node.log_text()
        _stop(proc)
        last = f"node {name} did not start (exit {proc.poll()}):\n{_tail(text)}"
        if "address already in use" not in text:
            break
    raise PeerError(last)


@contextlib.contextmanager
def pacs_nodes(base: Path, names: list[str], **kwargs: Any) -> Iterator[list[Node]]:
    """Start a node per name under ``base/<name>`` (see :func:`start_node`); all stopped at the end."""
    from concurrent.futures import ThreadPoolExecutor

    nodes: list[Node] = []
    try:
        with ThreadPoolExecutor(len(names)) as pool:  # started side by side: each takes seconds to import
            futures = [pool.submit(start_node, base / name, name, **kwargs) for name in names]
            errors = []
            for future in futures:
                try:
                    nodes.append(future.result())
                except PeerError as exc:
                    errors.append(str(exc))
        if errors:
            raise PeerError("\n".join(errors))
        yield nodes
    finally:
        for node in nodes:
            _stop(node.proc, timeout=15)


def cluster_rows(database_url: str) -> dict[str, Any]:
    """The shared cluster tables' state: nodes (name -> alive), and the number of in-flight records
    (ingests in flight and keys recorded ahead) of nodes that have no row (``in_flight_unowned``:
    a recovered node leaves none)."""
    from sqlalchemy import create_engine

    from pacskit.store.cluster import cluster_nodes
    from pacskit.store.engine import make_url

    engine = create_engine(make_url(database_url))
    try:
        nodes = cluster_nodes(engine)
        with engine.connect() as conn:
            from sqlalchemy import text

            inflight = conn.execute(text("SELECT count(*) FROM cluster_inflight")).scalar_one()
            unowned = conn.execute(text(
                "SELECT count(*) FROM cluster_inflight i WHERE NOT EXISTS "
                "(SELECT 1 FROM cluster_nodes n WHERE n.node_id = i.node_id)")).scalar_one()
    finally:
        engine.dispose()
    return {"nodes": {n["name"]: bool(n["alive"]) for n in nodes}, "in_flight": int(inflight),
            "in_flight_unowned": int(unowned),
            "raw": json.loads(json.dumps(nodes, default=str))}
