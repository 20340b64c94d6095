"""HAProxy (Debian ``haproxy``) as the load balancer in front of several pacskit nodes, for tests and
benchmarks; the configuration it writes is the one docs/deployment.md explains.

:func:`haproxy` starts ``haproxy -db`` (foreground) with a TCP frontend for DICOM and an HTTP frontend
for DICOMweb, both balanced over the nodes, each node health-checked on its ``/healthz`` endpoint.
Readiness is every node reported UP on the stats page, polled against a bounded deadline; a frontend
port taken between our choice and HAProxy's bind shows as an early exit and is retried on new ports.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pacskit.testing.peers import LOCALHOST, PeerError, _stop, _tail, free_port


@dataclass(frozen=True)
class Backend:
    """One pacskit node behind the balancer: its DICOM port and its public HTTP port (``/healthz``)."""

    name: str
    dicom_port: int
    http_port: int
    host: str = LOCALHOST


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


def haproxy_config(backends: Sequence[Backend], *, dicom_port: int, http_port: int, stats_port: int,
                   bind: str = LOCALHOST, check_interval_ms: int = 500, health_path: str = "/healthz",
                   send_proxy: Literal["v1", "v2"] | None = None, health_checks: bool = True) -> str:
    """The HAProxy configuration: DICOM in TCP mode (``leastconn``: associations are long and uneven),
    HTTP in HTTP mode (round robin), every node checked with ``GET /healthz`` (down after two failures,
    up after one success; ``health_checks=False``: none, every node counts as up); the stats page on
    ``stats_port``. ``send_proxy`` makes the DICOM connections open with a PROXY protocol header of
    that version (the nodes then list the balancer in ``proxy_protocol_from``)."""
    proxy = {None: "", "v1": " send-proxy", "v2": " send-proxy-v2"}[send_proxy]
    checks = (f"check port {{http}} inter {check_interval_ms} fall 2 rise 1" if health_checks else "") + proxy
    dicom_servers = "\n".join(
        f"    server {b.name} {b.host}:{b.dicom_port} {checks.format(http=b.http_port)}" for b in backends)
    http_check = f" check inter {check_interval_ms} fall 2 rise 1" if health_checks else ""
    http_servers = "\n".join(f"    server {b.name} {b.host}:{b.http_port}{http_check}" for b in backends)
    return f"""global
    maxconn 4096

defaults
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout check 2s

frontend dicom
    mode tcp
    bind {bind}:{dicom_port}
    default_backend pacs_dicom

backend pacs_dicom
    mode tcp
    balance leastconn
    option httpchk GET {health_path}
    http-check expect status 200
    # a node that fails its health check gets no new association; running ones go on
{dicom_servers}

frontend dicomweb
    mode http
    bind {bind}:{http_port}
    default_backend pacs_http

backend pacs_http
    mode http
    balance roundrobin
    option httpchk GET {health_path}
    http-check expect status 200
    retry-on conn-failure empty-response
    retries 2
{http_servers}

listen stats
    mode http
    bind {LOCALHOST}:{stats_port}
    stats enable
    stats uri /stats
"""


@dataclass
class HAProxy:
    """A running HAProxy; ``dicom_port`` / ``http_port`` are its frontends."""

    proc: subprocess.Popen[Any]
    config_path: Path
    log_path: Path
    dicom_port: int
    http_port: int
    stats_port: int

    def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status (``UP``, ``DOWN``, ...), from the stats page's CSV."""
        with urllib.request.urlopen(f"http://{LOCALHOST}:{self.stats_port}/stats;csv", timeout=2) as response:
            text = response.read().decode().lstrip("# ")
        return {(row["pxname"], row["svname"]): row["status"] for row in csv.DictReader(io.StringIO(text))
                if row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_states(self, wanted: dict[str, str], timeout: float = 30) -> None:
        """Wait until each named server has the wanted status (``UP``, ``DOWN``) in every backend."""
        deadline = time.monotonic() + timeout
        states: dict[tuple[str, str], str] = {}

        def reached() -> bool:
            return all(
                any(n == name for (_px, n) in states)
                and all(st.startswith(status) for (_px, n), st in states.items() if n == name)
                for name, status in wanted.items())

        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(urllib.error.URLError, OSError):
                states = self.server_states()
                if reached():
                    return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.1)
        raise PeerError(f"HAProxy servers not {wanted} in time: {states}\n"
                        f"{_tail(self.log_path.read_text(errors='replace'))}")


@contextlib.contextmanager
def haproxy(backends: Sequence[Backend], *, wait_up: bool = True, startup_timeout: float = 30,
            attempts: int = 5, health_path: str = "/healthz", send_proxy: Literal["v1", "v2"] | None = None,
            health_checks: bool = True) -> Iterator[HAProxy]:
    """Run HAProxy in front of ``backends`` for the duration of the block (see :func:`haproxy_config`);
    with ``wait_up``, yields once every node is UP. Raises :class:`PeerError` with its log's tail."""
    binary = haproxy_binary()
    if binary is None:
        raise PeerError("no haproxy binary (apt-get install haproxy)")
    folder = Path(tempfile.mkdtemp(prefix="pacskit-haproxy-"))
    last_error = ""
    try:
        for _attempt in range(attempts):
            dicom_port, http_port, stats_port = free_port(), free_port(), free_port()
            config = folder / "haproxy.cfg"
            config.write_text(haproxy_config(backends, dicom_port=dicom_port, http_port=http_port,
                                             stats_port=stats_port, health_path=health_path,
                                             send_proxy=send_proxy, health_checks=health_checks))
            log_path = folder / "haproxy.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            running = HAProxy(proc, config, log_path, dicom_port, http_port, stats_port)
            try:
                deadline = time.monotonic() + startup_timeout
                up = False
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        states = running.server_states()
                    except (urllib.error.URLError, OSError):
                        states = {}
                    if states and (not wait_up or all(s.startswith("UP") or s == "no check" for s in states.values())):
                        up = True
                        break
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.1)
                if up:
                    yield running
                    return
                text = log_path.read_text(errors="replace")
                last_error = f"HAProxy did not start (exit {proc.poll()}):\n{_tail(text)}"
                if "cannot bind" not in text.lower() and "address already in use" not in text.lower():
                    break
            finally:
                _stop(proc)
        raise PeerError(last_error)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
