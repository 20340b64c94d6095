"""Several worker processes serving one port: ``workers = N`` in ``server.toml`` (``serve --workers N``).

Python runs one thread of Python code at a time per process, so one server process tops out at one
core of DIMSE decoding, header walking and SQL. With ``workers > 1`` the process started by
``pacskit serve`` becomes a small parent:

1. holding the data folder's lock (:mod:`pacskit.server.datalock`, taken by ``run_server`` before
   anything else and inherited by every worker), it opens the store once and recovers it (stale temp
   files, blobs of interrupted ingests) — the only moment nobody else writes to it;
2. it reserves the port with a bound, non-listening ``SO_REUSEPORT`` socket (so "address in use" is
   reported once, with exit code 1, and port 0 picks one port for everybody);
3. it starts N workers: ``python -m pacskit.server.workers`` with the validated settings in the
   environment. Each worker is a complete server — its own event loop, thread pool, add-ins and
   connection pool to the index — listening on the same port with ``SO_REUSEPORT``; the kernel
   spreads new associations over them. ``max_associations`` is divided between them;
4. it waits: a worker that dies is logged and started again (without recovery: the others are
   writing); one that keeps dying within seconds stops the server with exit code 1. SIGINT/SIGTERM
   are passed on to the workers, which let running operations finish, and the parent exits 0 when they
   all did.

What add-ins must know: each worker runs its own instance of every add-in, so an add-in that keeps
state outside the database (a queue, a counter, a cache) sees only its worker's share of the traffic.
With SQLite the workers share one index file; writers queue on SQLite's lock (each worker still
group-commits its own concurrent ingests). A worker killed with SIGKILL may leave a never-acknowledged
blob without a row until the next start of the whole server, whose recovery removes it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pacskit.config.settings import ServerSettings
from pacskit.server.datalock import DataFolderLock

log = logging.getLogger("pacskit.server")

SETTINGS_ENV = "PACSKIT_WORKER_SETTINGS"
FOLDER_ENV = "PACSKIT_WORKER_FOLDER"
_RAPID = 5.0  # a worker that dies this soon after starting counts as a failed start
_MAX_RAPID_FAILURES = 3


class _Stop(Exception):
    """Raised by the signal handler to leave the parent's wait."""


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _spawn(worker_settings: ServerSettings, folder: Path, data_lock: DataFolderLock | None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env[SETTINGS_ENV] = worker_settings.model_dump_json()
    env[FOLDER_ENV] = str(folder)
    return subprocess.Popen(
        [sys.executable, "-m", "pacskit.server.workers"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        # the worker inherits the data folder's lock: the folder stays locked while any worker lives
        pass_fds=(data_lock.fileno(),) if data_lock is not None else (),
    )


def _await_ready(proc: subprocess.Popen[str]) -> str | None:
    """The worker's first line: None when it is listening, else the error it printed."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "listening on" in line:
        return None
    proc.wait()
    return line or f"worker exited with code {proc.returncode}"


def run_workers(settings: ServerSettings, data_lock: DataFolderLock | None = None) -> int:
    """Parent of ``settings.workers`` worker processes; returns the exit code (see the module docstring).

    ``data_lock`` is the data folder's lock the caller took (:mod:`pacskit.server.datalock`); each
    worker inherits it."""
    from pacskit.server.server import open_store

    count = settings.workers
    try:
        open_store(settings).close()  # migrate and recover once, before anybody writes
    except Exception as exc:
        print(f"error: cannot open the data store: {exc}", flush=True)
        return 1
    try:
        reserved = _reserve(settings.host, settings.port)
    except OSError as exc:
        reason = "address already in use" if exc.errno == 98 else (exc.strerror or str(exc))
        print(f"error: cannot listen on {settings.host}:{settings.port}: {reason}", flush=True)
        return 1
    port = reserved.getsockname()[1]
    worker_settings = settings.model_copy(
        update={"port": port, "workers": 1, "max_associations": math.ceil(settings.max_associations / count)}
    )
    folder = settings.folder.resolve()

    def stop_handler(signum: int, frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, stop_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers: dict[int, tuple[subprocess.Popen[str], float]] = {}
    try:
        for _ in range(count):
            proc = _spawn(worker_settings, folder, data_lock)
            problem = _await_ready(proc)
            if problem is not None:
                print(f"error: {problem}", flush=True)
                _stop_all(workers, settings)
                return 1
            workers[proc.pid] = (proc, time.monotonic())
        reserved.close()  # the workers hold the port now
        print(
            f"pacskit {settings.ae_title} listening on {settings.host}:{port} with {count} workers, "
            f"data in {settings.data_path.resolve()}",
            flush=True,
        )
        rapid_failures = 0
        while True:
            pid, status = os.wait()
            entry = workers.pop(pid, None)
            if entry is None:
                continue
            proc, started = entry
            code = os.waitstatus_to_exitcode(status)
            log.error("worker %d exited with code %d; starting another", pid, code)
            rapid_failures = rapid_failures + 1 if time.monotonic() - started < _RAPID else 0
            if rapid_failures >= _MAX_RAPID_FAILURES:
                log.error("workers keep failing at start-up: stopping")
                _stop_all(workers, settings)
                return 1
            replacement = _spawn(worker_settings, folder, data_lock)
            problem = _await_ready(replacement)
            if problem is not None:
                log.error("replacement worker failed: %s", problem)
                continue
            workers[replacement.pid] = (replacement, time.monotonic())
    except _Stop:
        log.info("shutting down %d workers", len(workers))
        _stop_all(workers, settings)
        return 0
    finally:
        reserved.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(workers: dict[int, tuple[subprocess.Popen[str], float]], settings: ServerSettings) -> None:
    """SIGTERM every worker and wait for it (killed if it outlives its grace period)."""
    for proc, _ in workers.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    grace = 30.0  # a worker gives running operations 10 s (Server.stop), then aborts them
    deadline = time.monotonic() + grace
    for proc, _ in workers.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in %.0f s: killed", proc.pid, grace)
            proc.kill()
            proc.wait()
    workers.clear()


def _worker_main() -> int:
    from pacskit.server.server import run_server

    settings = ServerSettings.model_validate_json(os.environ[SETTINGS_ENV])
    settings._folder = Path(os.environ[FOLDER_ENV])
    return run_server(settings, worker=True)


if __name__ == "__main__":
    sys.exit(_worker_main())
