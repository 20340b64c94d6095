"""Run real third-party DICOM peers (DCMTK, Orthanc, pynetdicom) on 127.0.0.1.

Used by the test suite and the benchmarks. All servers are started as separate
processes on free ports, waited for until they accept connections, and stopped
when the context manager exits. Their combined stdout/stderr go to a temporary
log file (``peer.log_text()``), which is included in error messages.

Notes
-----
* Debian's DCMTK keeps Nagle's algorithm on unless ``TCP_NODELAY=1`` is in the
  environment, which costs ~40 ms per request/response exchange; every DCMTK and
  Orthanc process started here gets it (see :func:`dcmtk_env`).
* DCMTK servers and Orthanc 1.10 listen on all interfaces (there is no bind
  option); Orthanc is configured with ``RemoteAccessAllowed: false`` so its HTTP
  API only answers loopback clients. The pynetdicom SCP binds to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LOCALHOST",
    "PeerError",
    "Peer",
    "OrthancPeer",
    "free_port",
    "wait_for_port",
    "dcmtk_env",
    "dcmtk_tool",
    "have_dcmtk",
    "have_orthanc",
    "orthanc_binary",
    "storescp",
    "run_storescu",
    "count_store_successes",
    "run_echoscu",
    "orthanc",
    "pynetdicom_store_scp",
]

LOCALHOST = "127.0.0.1"
_STORE_SUCCESS = "Received Store Response (Success)"
# storescu gets directories via +sd; explicit file lists longer than this are
# turned into a temporary directory of symlinks to stay clear of ARG_MAX.
_MAX_CMDLINE_FILES = 500

_handed_out: set[int] = set()


class PeerError(RuntimeError):
    """A peer process failed to start or misbehaved."""


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that is currently free on ``host`` (and on all interfaces).

    The port is bound on the wildcard address to make sure servers that listen on
    all interfaces (DCMTK, Orthanc) can use it too. Ports already handed out by this
    process are not returned again.
    """
    bind_host = "" if host in (LOCALHOST, "0.0.0.0", "") else host
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((bind_host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise PeerError("could not find a free TCP port")


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10,
    *,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Block until a TCP connection to ``host:port`` succeeds.

    Raises :class:`TimeoutError` after ``timeout`` seconds, or :class:`PeerError`
    at once if ``proc`` is given and has exited.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"process {proc.args!r} exited with code {proc.returncode} "
                            f"before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


# ---------------------------------------------------------------- tool discovery


def dcmtk_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment (or ``base``) with ``TCP_NODELAY=1`` for DCMTK/Orthanc."""
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    return env


@functools.cache
def _find_dcmtk_tool(name: str, path_env: str) -> str | None:
    candidates = [os.path.join(d, name) for d in path_env.split(os.pathsep) if d]
    candidates += [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    seen: set[str] = set()
    for cand in candidates:
        real = os.path.realpath(cand)
        if real in seen or not os.path.isfile(real) or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        try:
            with open(real, "rb") as f:
                if f.read(2) == b"#!":  # pynetdicom's console script of the same name
                    continue
            out = subprocess.run([real, "--version"], capture_output=True, text=True,
                                 errors="replace", timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "$dcmtk:" in out.stdout + out.stderr:
            return cand
    return None


def dcmtk_tool(name: str) -> str:
    """Absolute path of the DCMTK program ``name`` (storescu, storescp, echoscu, ...).

    pynetdicom installs Python scripts called storescu/storescp/echoscu/findscu/...
    into the virtualenv's bin directory, so a plain PATH lookup can find the wrong
    program when the venv is activated; only real DCMTK binaries are accepted here.
    Raises :class:`PeerError` if DCMTK is not installed.
    """
    found = _find_dcmtk_tool(name, os.environ.get("PATH", ""))
    if found is None:
        raise PeerError(f"DCMTK {name} not found (apt-get install dcmtk)")
    return found


def have_dcmtk() -> bool:
    """True if DCMTK's storescu, storescp and echoscu are installed."""
    return all(_find_dcmtk_tool(b, os.environ.get("PATH", "")) for b in ("storescu", "storescp", "echoscu"))


def orthanc_binary() -> str | None:
    """Path of the Orthanc server binary (PATH, then Debian's /usr/sbin/Orthanc)."""
    found = shutil.which("Orthanc")
    if found:
        return found
    for cand in ("/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def have_orthanc() -> bool:
    """True if the Orthanc server binary is installed."""
    return orthanc_binary() is not None


# ------------------------------------------------------------------ process utils


@dataclass
class Peer:
    """A running peer process. ``host``/``port``/``ae_title`` are what SCUs connect to."""

    port: int
    ae_title: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    host: str = LOCALHOST
    out_dir: Path | None = None

    def log_text(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass
class OrthancPeer(Peer):
    """A running Orthanc. ``port`` is the DICOM port (alias ``dicom_port``)."""

    http_port: int = 0
    work_dir: Path = field(default_factory=Path)
    config_path: Path = field(default_factory=Path)

    @property
    def dicom_port(self) -> int:
        return self.port

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.http_port}"

    def get(self, path: str, timeout: float = 10) -> Any:
        """GET ``path`` from the REST API and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any = None, timeout: float = 60) -> Any:
        """POST JSON (or raw bytes) to the REST API and decode the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[Any], timeout: float = 10, *, graceful: bool = True) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
    except ProcessLookupError:  # pragma: no cover - raced with exit
        pass


@contextlib.contextmanager
def _spawned(
    argv: Sequence[str],
    *,
    port: int,
    ae_title: str,
    env: Mapping[str, str],
    startup_timeout: float,
    out_dir: Path | None = None,
    cwd: str | os.PathLike[str] | None = None,
    graceful_stop: bool = True,
) -> Iterator[Peer]:
    fd, log_name = tempfile.mkstemp(prefix="pacskit-peer-", suffix=".log")
    log_path = Path(log_name)
    try:
        with os.fdopen(fd, "wb") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd)
        peer = Peer(port=port, ae_title=ae_title, proc=proc, log_path=log_path, out_dir=out_dir)
        try:
            try:
                wait_for_port(LOCALHOST, port, startup_timeout, proc=proc)
            except (TimeoutError, PeerError) as exc:
                raise PeerError(f"{exc}\ncommand: {' '.join(map(str, argv))}\n"
                                f"--- log ---\n{_tail(peer.log_text())}") from None
            yield peer
        finally:
            _stop(proc, graceful=graceful_stop)
    finally:
        with contextlib.suppress(OSError):
            log_path.unlink()


# ------------------------------------------------------------------------- DCMTK


@contextlib.contextmanager
def storescp(
    out_dir: str | os.PathLike[str],
    port: int | None = None,
    ae_title: str = "STORESCP",
    extra_args: Sequence[str] = (),
    *,
    startup_timeout: float = 10,
) -> Iterator[Peer]:
    """Run DCMTK ``storescp`` writing received objects into ``out_dir`` as ``*.dcm``.

    Accepts all transfer syntaxes (``+xa``); listens on all interfaces (DCMTK has no
    bind option); yields a :class:`Peer` (``.port``, ``.ae_title``, ``.proc``).
    """
    binary = dcmtk_tool("storescp")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        binary,
        "--aetitle", ae_title,
        "--output-directory", str(out),
        "--accept-all",  # +xa
        "--filename-extension", ".dcm",
        "--disable-host-lookup",
        *extra_args,
        str(port),
    ]
    with _spawned(argv, port=port, ae_title=ae_title, env=dcmtk_env(),
                  startup_timeout=startup_timeout, out_dir=out) as peer:
        yield peer


def _as_paths(files_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(files_or_dir, (str, os.PathLike)):
        return [Path(files_or_dir)]
    return [Path(p) for p in files_or_dir]


def run_storescu(
    host: str,
    port: int,
    files_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    called: str = "ANY-SCP",
    calling: str = "STORESCU",
    extra: Sequence[str] = (),
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK ``storescu -v``; return the finished process.

    ``files_or_dir`` is one file, one directory (sent recursively with ``+sd +r``)
    or an iterable of files and/or directories. Long file lists are sent via a
    temporary directory of symlinks instead of the command line. stderr is merged
    into ``.stdout``; storescu can exit 0 after a failed store, so check
    :func:`count_store_successes` too. Does not raise on a non-zero exit code.
    """
    paths = _as_paths(files_or_dir)
    argv = [dcmtk_tool("storescu"), "-v", "-aet", calling, "-aec", called, *extra]
    with contextlib.ExitStack() as stack:
        if any(p.is_dir() for p in paths):
            argv += ["+sd", "+r"]
        if len(paths) > _MAX_CMDLINE_FILES:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacskit-storescu-")))
            for i, p in enumerate(paths):
                (tmp / f"{i:08d}{'' if p.is_dir() else '.dcm'}").symlink_to(p.resolve())
            if "+sd" not in argv:
                argv += ["+sd", "+r"]
            paths = [tmp]
        argv += [host, str(port), *(str(p) for p in paths)]
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, errors="replace",
                              env=dcmtk_env(), timeout=timeout, check=False)


def count_store_successes(output: str | subprocess.CompletedProcess[str]) -> int:
    """Number of ``Received Store Response (Success)`` lines in storescu -v output."""
    if isinstance(output, subprocess.CompletedProcess):
        output = (output.stdout or "") + (output.stderr or "")
    return sum(1 for line in output.splitlines() if _STORE_SUCCESS in line)


def run_echoscu(
    host: str,
    port: int,
    called: str,
    calling: str = "ECHOSCU",
    extra: Sequence[str] = (),
    *,
    timeout: float | None = 60,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``echoscu -v`` (C-ECHO); stderr merged into ``.stdout``; no raise."""
    argv = [dcmtk_tool("echoscu"), "-v", "-aet", calling, "-aec", called, *extra, host, str(port)]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace",
                          env=dcmtk_env(), timeout=timeout, check=False)


# ----------------------------------------------------------------------- Orthanc


def _modalities_config(modalities: Mapping[str, Any] | Iterable[Any] | None) -> dict[str, Any]:
    """Accept {"name": [aet, host, port]} / {"name": {...}} or [(aet, host, port), ...]."""
    if not modalities:
        return {}
    if isinstance(modalities, Mapping):
        return {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in modalities.items()}
    result: dict[str, Any] = {}
    for item in modalities:
        aet, host, port = item
        result[str(aet).lower()] = [str(aet), str(host), int(port)]
    return result


@contextlib.contextmanager
def orthanc(
    work_dir: str | os.PathLike[str],
    dicom_port: int | None = None,
    http_port: int | None = None,
    ae_title: str = "ORTHANC",
    modalities: Mapping[str, Any] | Iterable[Any] | None = None,
    *,
    extra_config: Mapping[str, Any] | None = None,
    startup_timeout: float = 30,
    graceful_stop: bool = False,
) -> Iterator[OrthancPeer]:
    """Run an Orthanc server with its storage and index inside ``work_dir``.

    ``modalities`` becomes "DicomModalities" (e.g. ``{"pacs": ["PACS", "127.0.0.1",
    11112]}`` or ``[("PACS", "127.0.0.1", 11112)]``). No plugins are loaded; the HTTP
    API only answers loopback clients and needs no authentication. Unknown AEs may
    C-ECHO/C-STORE/C-FIND/C-GET/C-MOVE (override with ``extra_config``). Yields an
    :class:`OrthancPeer` once both the DICOM port and ``GET /system`` answer.

    At exit Orthanc is killed (SIGKILL) unless ``graceful_stop`` is true: a clean
    SIGTERM shutdown of Orthanc 1.10 takes ~3.3 s, and everything it acknowledged
    is already committed to its SQLite index and storage directory anyway.
    """
    binary = orthanc_binary()
    if binary is None:
        raise PeerError("Orthanc is not installed: apt-get install orthanc")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config: dict[str, Any] = {
        "Name": f"pacskit-test-{dicom_port}",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": _modalities_config(modalities),
        "DicomModalitiesInDatabase": False,
        "OrthancPeers": {},
        "SaveJobs": False,
        "HttpDescribeErrors": True,
        "StableAge": 60,
    }
    if extra_config:
        config.update(extra_config)
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    # --no-jobs: don't reload jobs from an index directory reused between runs.
    argv = [binary, "--no-jobs", str(config_path)]
    with _spawned(argv, port=dicom_port, ae_title=ae_title, env=dcmtk_env(),
                  startup_timeout=startup_timeout, cwd=work, graceful_stop=graceful_stop) as base:
        peer = OrthancPeer(port=dicom_port, ae_title=ae_title, proc=base.proc,
                           log_path=base.log_path, http_port=http_port, work_dir=work,
                           config_path=config_path)
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                peer.get("/system", timeout=2)
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if base.proc.poll() is not None or time.monotonic() > deadline:
                    raise PeerError(f"Orthanc REST API on port {http_port} did not answer: {exc}\n"
                                    f"--- log ---\n{_tail(peer.log_text())}") from None
                time.sleep(0.05)
        yield peer


ORTHANC_PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"


def orthanc_s3_storage(bucket: str, prefix: str, endpoint_url: str, access_key_id: str,
                       secret_access_key: str, region: str = "us-east-1", *,
                       until_pixel_data_folder: str | os.PathLike[str] | None = None,
                       **_ignored: Any) -> dict[str, Any]:
    """Orthanc configuration entries that keep its files in an S3 bucket: Orthanc's Python plugin
    (Debian ``orthanc-python``) running :mod:`pacskit.testing.orthanc_s3_storage` as its storage
    area. Merge them into ``extra_config`` (append other plugins to ``"Plugins"``). Accepts the keyword
    arguments of an S3 blob store's options (``SeaweedCluster.store_options``), so that both archives
    can be pointed at the same object store. ``until_pixel_data_folder`` keeps the attachment that
    Orthanc adds for a storage area without range reads in that local folder (one PUT per instance, as
    orthanc-object-storage makes; see the script's docstring). Raises :class:`PeerError` without the
    plugin."""
    if not Path(ORTHANC_PYTHON_PLUGIN).exists():
        raise PeerError("Orthanc's Python plugin is not installed: apt-get install orthanc-python")
    import obstore  # the storage area imports it from this interpreter's site-packages

    site_packages = str(Path(obstore.__file__).resolve().parent.parent)
    return {
        "Plugins": [ORTHANC_PYTHON_PLUGIN],
        "PythonScript": str(Path(__file__).with_name("orthanc_s3_storage.py")),
        "PythonVerbose": False,
        "PacskitS3Storage": {"Bucket": bucket, "Prefix": prefix, "Endpoint": endpoint_url, "Region": region,
                             "AccessKeyId": access_key_id, "SecretAccessKey": secret_access_key,
                             "PythonPath": [site_packages],
                             "UntilPixelDataFolder": None if until_pixel_data_folder is None
                             else str(until_pixel_data_folder)},
    }


# -------------------------------------------------------------------- pynetdicom


@contextlib.contextmanager
def pynetdicom_store_scp(
    out_dir: str | os.PathLike[str],
    port: int | None = None,
    ae_title: str = "PYNETDICOM",
    *,
    startup_timeout: float = 20,
    python: str | None = None,
) -> Iterator[Peer]:
    """Run the minimal pynetdicom Storage SCP (:mod:`pacskit.testing.pynd_scp`) in a
    separate process, bound to 127.0.0.1, writing each received object to ``out_dir``."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [python or sys.executable, "-m", "pacskit.testing.pynd_scp",
            "--port", str(port), "--out", str(out), "--aet", ae_title]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    with _spawned(argv, port=port, ae_title=ae_title, env=env,
                  startup_timeout=startup_timeout, out_dir=out) as peer:
        yield peer
