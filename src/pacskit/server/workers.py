"""Several worker processes serving one port: ``workers = N`` in ``server.toml`` (``serve --workers N``).

Python runs one thread of Python code at a time per process, so one server process tops out at one
core of DIMSE decoding, header walking and SQL. With ``workers > 1`` the process started by
``pacskit serve`` becomes a small parent that never touches DICOM:

1. holding the data folder's lock (:mod:`pacskit.server.datalock`, taken by ``run_server`` before
   anything else and inherited by every worker), it opens the store once and recovers it (stale temp
   files, blobs of interrupted ingests) — the only moment nobody else writes to it;
2. it binds the port (so "address in use" is reported once, with exit code 1, and port 0 picks one
   port for everybody) and starts N workers at once: ``python -m pacskit.server.workers`` with the
   validated settings in the environment and one end of a Unix ``SOCK_SEQPACKET`` socket pair, its
   *channel*. Each worker is a complete server — its own event loop, thread pool, add-ins and
   connection pool to the index — that binds no DICOM port. When it has started it sends ``R`` and the
   listeners it wants (the plain port; the TLS port when a security add-in supplies one), and the parent
   listens on them once every worker is ready. ``max_associations`` is divided between the workers;
3. it accepts every connection itself and passes the socket (``SCM_RIGHTS``) to the worker with the
   fewest open connections, ties going round robin; the worker serves it exactly as if it had accepted
   it (:meth:`pacskit.net.acceptor.Acceptor.adopt`: TLS handshake, ARTIM, access control by the peer's
   address, logging) and sends ``D`` when it has closed. The kernel's ``SO_REUSEPORT`` spreading, used
   before, hashes addresses without regard to load: 8 associations over 2 workers were measured split
   6/2, one core saturated while the other idled. The parent's work per connection is one ``accept``
   and one ``sendmsg``;
4. a worker that dies is logged and started again (without recovery: the others are writing); its
   channel closes at once, so no connection is handed to it after its death, and a connection that
   could not be sent goes to another worker. Until at least one worker is ready the parent stops
   accepting and connections wait in the listen backlog. Workers that keep dying within seconds stop
   the server with exit code 1. SIGINT/SIGTERM close the listening sockets and are passed on to the
   workers, which let running operations finish; the parent exits 0 when they all did. A worker whose
   parent is gone (its channel reads end-of-file) stops the same way: nobody can hand it work.

What add-ins must know: each worker runs its own instance of every add-in, so an add-in that keeps
state outside the database (a queue, a counter, a cache) sees only its worker's share of the traffic.
With SQLite the workers share one index file; their writers queue on one ``flock``
(``<index>-writer.lock``, :class:`pacskit.store.index.database._WriterLock`) rather than on SQLite's
sleeping busy handler, and each worker still group-commits its own concurrent ingests. A worker killed with SIGKILL may leave a never-acknowledged
blob without a row until the next start of the whole server, whose recovery removes it. The public
HTTP listener of add-ins (DICOMweb) is still shared by ``SO_REUSEPORT`` (one per worker); the admin API
does not run with ``workers > 1``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacskit.config.settings import ServerSettings
from pacskit.server.datalock import DataFolderLock

if TYPE_CHECKING:
    from pacskit.net.acceptor import Acceptor

log = logging.getLogger("pacskit.server")

SETTINGS_ENV = "PACSKIT_WORKER_SETTINGS"
FOLDER_ENV = "PACSKIT_WORKER_FOLDER"
CHANNEL_ENV = "PACSKIT_WORKER_CHANNEL"
_RAPID = 5.0  # a worker that dies this soon after starting counts as a failed start
_MAX_RAPID_FAILURES = 3
_BACKLOG = 128  # as Acceptor.start
_ACCEPTS_PER_WAKE = 64  # then the parent looks at its channels again (a worker's "D", a death)
# Channel messages. Parent -> worker: one tag byte (which listener) with one socket in SCM_RIGHTS.
# Worker -> parent: READY + JSON once started, DONE when a handed connection has closed.
_TAGS = {"plain": b"p", "tls": b"t"}
_READY = b"R"
_DONE = b"D"


# ---------------------------------------------------------------------------------------- worker side


class _WorkerChannel:
    """The worker's end of its channel: connections in, "ready" and "done" out."""

    def __init__(self, sock: socket.socket, acceptors: dict[bytes, Acceptor], on_parent_gone: Callable[[], None]) -> None:
        self.sock = sock
        self.acceptors = acceptors
        self.on_parent_gone = on_parent_gone
        self.loop = asyncio.get_running_loop()
        self.serving: set[asyncio.Task[None]] = set()
        self.gone = False

    def start(self, listeners: dict[str, int]) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._send(_READY + json.dumps({"pid": os.getpid(), "listeners": listeners}).encode())

    def _readable(self) -> None:
        while True:
            try:
                msg, ancdata, _, _ = self.sock.recvmsg(16, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, ancdata = b"", []
            fds = [fd for level, kind, data in ancdata
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for fd in memoryview(data)[: len(data) - len(data) % 4].cast("i")]
            if not msg and not fds:
                self._parent_gone()
                return
            for fd in fds:
                conn = socket.socket(fileno=fd)
                acceptor = self.acceptors.get(msg[:1])
                if acceptor is None or len(fds) != 1:
                    log.error("a connection handed to this worker for no listener of it: closed")
                    conn.close()
                    self._send(_DONE)
                    continue
                task = self.loop.create_task(self._serve(acceptor, conn))
                self.serving.add(task)
                task.add_done_callback(self.serving.discard)

    async def _serve(self, acceptor: Acceptor, conn: socket.socket) -> None:
        try:
            await acceptor.adopt(conn)
        finally:
            self._send(_DONE)

    def _send(self, message: bytes) -> None:
        if self.gone:
            return
        try:
            self.sock.send(message)
        except BlockingIOError:  # the parent is not reading: its count of our connections drifts by one
            log.warning("the parent process does not read its channel")
        except OSError:
            self._parent_gone()

    def stop_taking(self) -> None:
        """Take no more connections (the server is stopping); "done" messages still go out."""
        if not self.gone:
            self.loop.remove_reader(self.sock.fileno())

    def _parent_gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.loop.remove_reader(self.sock.fileno())  # no-op when stop_taking did it
        log.warning("the parent process is gone: stopping this worker")
        self.on_parent_gone()


def attach_worker(server: Any, on_parent_gone: Callable[[], None]) -> _WorkerChannel:
    """Connect a started worker :class:`~pacskit.server.server.Server` to its parent's channel.

    The server's acceptors bound nothing (``Server.worker``); from now on they serve the connections the
    parent hands over. ``on_parent_gone`` is called when the channel closes (the parent died), and should
    stop the server. The caller keeps the returned channel for the life of the server."""
    sock = socket.socket(fileno=int(os.environ[CHANNEL_ENV]))
    acceptors: dict[bytes, Acceptor] = {}
    listeners: dict[str, int] = {}
    for name, acceptor in (("plain", server.acceptor), ("tls", server.tls_acceptor)):
        if acceptor is not None:
            acceptors[_TAGS[name]] = acceptor
            listeners[name] = acceptor.port
    channel = _WorkerChannel(sock, acceptors, on_parent_gone)
    channel.start(listeners)
    return channel


# ---------------------------------------------------------------------------------------- parent side


@dataclass(eq=False)
class _Worker:
    slot: int
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    pidfd: int
    started: float
    ready: bool = False
    gone: bool = False  # its channel closed: it gets nothing more
    open: int = 0  # connections handed and not yet reported closed
    output: bytes = b""  # what it printed before it was ready (its start-up error)
    listeners: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


class _Parent:
    """The parent's single-threaded loop: accept, hand over, watch the workers (module docstring)."""

    def __init__(self, settings: ServerSettings, worker_settings: ServerSettings, folder: Path,
                 data_lock: DataFolderLock | None, reserved: socket.socket) -> None:
        self.settings = settings
        self.worker_settings = worker_settings
        self.folder = folder
        self.data_lock = data_lock
        self.reserved: socket.socket | None = reserved
        self.port = reserved.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.slots: list[_Worker | None] = [None] * settings.workers
        self.listeners: dict[bytes, socket.socket] = {}
        self.accepting = False
        self.serving = False  # every worker was ready once and the parent listens
        self.next = 0  # round robin among the least busy
        self.stop_requested = False
        self.exit_code: int | None = None
        self.start_error: str | None = None
        self.rapid_failures = 0

    # -- workers

    def spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env[SETTINGS_ENV] = self.worker_settings.model_dump_json()
        env[FOLDER_ENV] = str(self.folder)
        env[CHANNEL_ENV] = str(theirs.fileno())
        # the worker inherits the data folder's lock: the folder stays locked while any worker lives
        fds = (theirs.fileno(),) + ((self.data_lock.fileno(),) if self.data_lock is not None else ())
        try:
            proc = subprocess.Popen([sys.executable, "-m", "pacskit.server.workers"], env=env,
                                    stdout=subprocess.PIPE, pass_fds=fds)
        finally:
            theirs.close()
        ours.setblocking(False)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        worker = _Worker(slot, proc, ours, os.pidfd_open(proc.pid), time.monotonic())
        self.slots[slot] = worker
        self.selector.register(ours, selectors.EVENT_READ, lambda: self._on_channel(worker))
        self.selector.register(proc.stdout, selectors.EVENT_READ, lambda: self._on_output(worker))
        self.selector.register(worker.pidfd, selectors.EVENT_READ, lambda: self._on_exit(worker))

    def _on_channel(self, worker: _Worker) -> None:
        while True:
            try:
                msg = worker.channel.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                self._lose(worker)
                return
            if msg == _DONE:
                worker.open = max(0, worker.open - 1)
            elif msg[:1] == _READY:
                info = json.loads(msg[1:])
                worker.listeners = {str(k): int(v) for k, v in info["listeners"].items()}
                worker.ready = True
                if self.serving:
                    log.info("worker %d ready", worker.pid)
                    self._resume()
            else:
                log.error("worker %d sent an unknown message %r", worker.pid, msg[:20])

    def _on_output(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        try:
            data = os.read(worker.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(worker.proc.stdout)
        elif not worker.ready and len(worker.output) < 4096:
            worker.output += data

    def _lose(self, worker: _Worker) -> None:
        """The worker's channel closed: it is dying; hand it nothing more."""
        if worker.gone:
            return
        worker.gone, worker.ready = True, False
        self.selector.unregister(worker.channel)
        if not any(w is not None and w.ready for w in self.slots):
            self._pause()

    def _on_exit(self, worker: _Worker) -> None:
        self._lose(worker)
        self.selector.unregister(worker.pidfd)
        os.close(worker.pidfd)
        stdout = worker.proc.stdout
        assert stdout is not None
        if stdout.fileno() in self.selector.get_map():
            while True:
                try:
                    data = os.read(stdout.fileno(), 65536)
                except BlockingIOError:  # a grandchild holds the pipe
                    break
                if not data:
                    break
                if len(worker.output) < 4096:
                    worker.output += data
            self.selector.unregister(stdout)
        stdout.close()
        worker.channel.close()
        code = worker.proc.wait()
        self.slots[worker.slot] = None
        problem = next((ln for ln in worker.output.decode(errors="replace").splitlines() if ln.startswith("error")),
                       f"worker exited with code {code}")
        if self.stop_requested or self.exit_code is not None:
            return
        if not self.serving:
            self.start_error = problem.removeprefix("error: ")
            return
        if worker.listeners:
            log.error("worker %d exited with code %d; starting another", worker.pid, code)
        else:
            log.error("replacement worker failed: %s", problem)
        self.rapid_failures = self.rapid_failures + 1 if time.monotonic() - worker.started < _RAPID else 0
        if self.rapid_failures >= _MAX_RAPID_FAILURES:
            log.error("workers keep failing at start-up: stopping")
            self.exit_code = 1
            return
        self.spawn(worker.slot)

    # -- connections

    def listen(self) -> str | None:
        """Listen on what the workers asked for; the error, if a port cannot be had."""
        wanted = next(w for w in self.slots if w is not None).listeners
        reserved, self.reserved = self.reserved, None
        assert reserved is not None
        if "plain" in wanted:
            self.listeners[_TAGS["plain"]] = reserved
        else:  # TLS only
            reserved.close()
        if "tls" in wanted:
            try:
                self.listeners[_TAGS["tls"]] = _bind(self.settings.host, wanted["tls"])
            except OSError as exc:
                return f"cannot listen on {self.settings.host}:{wanted['tls']}: {_reason(exc)}"
        for sock in self.listeners.values():
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        self._resume()
        return None

    def _resume(self) -> None:
        if self.accepting or not self.listeners:
            return
        for tag, sock in self.listeners.items():
            self.selector.register(sock, selectors.EVENT_READ, lambda tag=tag, sock=sock: self._on_accept(tag, sock))
        self.accepting = True

    def _pause(self) -> None:
        """No worker can take a connection: leave new ones in the listen backlog until one is ready."""
        if not self.accepting:
            return
        for sock in self.listeners.values():
            self.selector.unregister(sock)
        self.accepting = False
        if not self.stop_requested:
            log.warning("no worker is ready: connections wait in the backlog")

    def _on_accept(self, tag: bytes, sock: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNABORTED, or out of file descriptors
                log.warning("accept on port %d failed: %s", sock.getsockname()[1], _reason(exc))
                return
            try:
                self._hand(tag, conn)
            finally:
                conn.close()  # the worker has its own copy now
            if not self.accepting:
                return

    def _choose(self, tried: set[int]) -> _Worker | None:
        """The ready worker with the fewest open connections; among equals, the next in turn."""
        best: _Worker | None = None
        count = len(self.slots)
        for i in range(count):
            worker = self.slots[(self.next + i) % count]
            if worker is None or not worker.ready or worker.slot in tried:
                continue
            if best is None or worker.open < best.open:
                best = worker
        if best is not None:
            self.next = (best.slot + 1) % count
        return best

    def _hand(self, tag: bytes, conn: socket.socket) -> None:
        tried: set[int] = set()
        while True:
            worker = self._choose(tried)
            if worker is None:
                log.warning("no worker could take a connection: closed it")
                return
            try:
                socket.send_fds(worker.channel, [tag], [conn.fileno()])
            except BlockingIOError:  # its channel is full: it is not reading (stuck); try another
                log.warning("worker %d does not take connections", worker.pid)
                tried.add(worker.slot)
                continue
            except OSError:  # it died; its exit is handled when the pidfd says so
                self._lose(worker)
                continue
            worker.open += 1
            return

    # -- the loop

    def poll(self) -> None:
        for key, _ in self.selector.select():
            key.data()

    def stop_all(self) -> None:
        """Stop listening; SIGTERM every worker and wait for it (killed if it outlives its grace period)."""
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()
        if self.reserved is not None:
            self.reserved.close()
        workers = [w for w in self.slots if w is not None]
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        grace = 30.0  # a worker gives running operations 10 s (Server.stop), then aborts them
        deadline = time.monotonic() + grace
        for worker in workers:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in %.0f s: killed", worker.pid, grace)
                worker.proc.kill()
                worker.proc.wait()
            worker.channel.close()
            os.close(worker.pidfd)
            if worker.proc.stdout is not None:
                worker.proc.stdout.close()
        self.slots = [None] * len(self.slots)
        self.selector.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _reason(exc: OSError) -> str:
    return "address already in use" if exc.errno == 98 else (exc.strerror or str(exc))


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
        reserved = _bind(settings.host, settings.port)
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {_reason(exc)}", flush=True)
        return 1
    port = reserved.getsockname()[1]
    worker_settings = settings.model_copy(
        update={"port": port, "workers": 1, "max_associations": math.ceil(settings.max_associations / count)}
    )
    parent = _Parent(settings, worker_settings, settings.folder.resolve(), data_lock, reserved)
    # Signals wake the selector through a socket; the handler only takes note (no exception thrown
    # into the middle of an accept or a send).
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def on_signal(signum: int, frame: object) -> None:
        parent.stop_requested = True

    def drain() -> None:
        try:
            while wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    parent.selector.register(wake_r, selectors.EVENT_READ, drain)
    try:
        for slot in range(count):
            parent.spawn(slot)
        while not parent.stop_requested and parent.start_error is None and \
                not all(w is not None and w.ready for w in parent.slots):
            parent.poll()
        problem = parent.start_error
        if problem is None and not parent.stop_requested:
            problem = parent.listen()
        if problem is not None:
            print(f"error: {problem}", flush=True)
            parent.stop_all()
            return 1
        parent.serving = True
        if not parent.stop_requested:
            print(
                f"pacskit {settings.ae_title} listening on {settings.host}:{port} with {count} workers, "
                f"data in {settings.data_path.resolve()}",
                flush=True,
            )
        while not parent.stop_requested and parent.exit_code is None:
            parent.poll()
        log.info("shutting down %d workers", sum(1 for w in parent.slots if w is not None))
        parent.stop_all()
        return parent.exit_code or 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_wakeup)
        wake_r.close()
        wake_w.close()
        reserved.close()


def _worker_main() -> int:
    from pacskit.server.server import run_server

    settings = ServerSettings.model_validate_json(os.environ[SETTINGS_ENV])
    settings._folder = Path(os.environ[FOLDER_ENV])
    return run_server(settings, worker=True)


if __name__ == "__main__":
    sys.exit(_worker_main())
