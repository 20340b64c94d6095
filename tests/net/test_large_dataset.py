"""A dataset larger than 100 MB streams through with bounded memory on both ends.

The receiving pacskit acceptor runs in its own process (tests/net/_store_server.py) so its peak RSS
(VmHWM in /proc/<pid>/status, reset just before the transfer) measures only the engine. The sending side
is this process: its Python allocations (tracemalloc) and its own peak RSS around the send are bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pacskit.net import RequestedContext, connect
from pacskit.dicom.part10 import read_part10_header

from ._util import (
    AE,
    HERE,
    LOCALHOST,
    dcmtk,
    make_large_instance,
    proc_status,
    reset_peak_rss,
    run_tool,
    sha256_from,
    store_successes,
)

pytestmark = pytest.mark.slow

SIZE = 110 * 1024 * 1024
MB = 1024 * 1024
RECEIVER_BUDGET = 80 * MB  # peak RSS growth allowed in the receiving process
SENDER_BUDGET = 80 * MB


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    path = make_large_instance(tmp_path_factory.mktemp("big") / "big.dcm", SIZE)
    assert path.stat().st_size > 100 * MB
    return path


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, out: Path) -> None:
        self.proc = proc
        self.port = port
        self.out = out

    async def next_stored(self, timeout: float = 120) -> Path:
        assert self.proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().strip()
            if not line:
                raise AssertionError(f"server exited ({self.proc.returncode}) without storing")
            if line.startswith("STORED "):
                return Path(line[7:])


@contextlib.asynccontextmanager
async def store_server(out: Path, log: Path) -> AsyncIterator[Server]:
    out.mkdir()
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "_store_server.py"), "--out", str(out),
            stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        assert line.startswith("PORT "), f"server did not start: {line!r}\n{log.read_text(errors='replace')}"
        yield Server(proc, int(line[5:]), out)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _measure_start(pid: int) -> int:
    """Reset the peak; return the RSS the peak is measured against."""
    assert reset_peak_rss(pid), "cannot reset VmHWM (/proc/<pid>/clear_refs)"
    return proc_status(pid)["VmRSS"]


def test_pacskit_requestor_to_pacskit_acceptor_over_100mb(big_file, tmp_path):
    info = read_part10_header(big_file)
    expected = sha256_from(big_file, info.dataset_offset)

    async def main():
        async with store_server(tmp_path / "rx", tmp_path / "server.log") as server:
            async with await connect(
                LOCALHOST, server.port, called_ae=AE, contexts=[RequestedContext(info.sop_class_uid, (info.transfer_syntax,))]
            ) as assoc:
                server_base = _measure_start(server.proc.pid)
                client_base = _measure_start(os.getpid())
                tracemalloc.start()
                try:
                    rsp = await assoc.store(big_file)
                    traced_peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                client_peak = proc_status()["VmHWM"]
                stored = await server.next_stored()
                server_peak = proc_status(server.proc.pid)["VmHWM"]
        return rsp.status, stored, server_peak - server_base, client_peak - client_base, traced_peak

    status, stored, server_growth, client_growth, traced_peak = asyncio.run(main())
    assert status == 0
    assert server_growth < RECEIVER_BUDGET, f"receiver peak RSS grew by {server_growth / MB:.1f} MB"
    assert client_growth < SENDER_BUDGET, f"sender peak RSS grew by {client_growth / MB:.1f} MB"
    assert traced_peak < 16 * MB, f"sender allocated up to {traced_peak / MB:.1f} MB"
    got = read_part10_header(stored)
    assert got.sop_instance_uid == info.sop_instance_uid
    assert got.file_size - got.dataset_offset == info.file_size - info.dataset_offset
    assert sha256_from(stored, got.dataset_offset) == expected


@pytest.mark.dcmtk
def test_storescu_to_pacskit_acceptor_over_100mb(big_file, tmp_path):
    info = read_part10_header(big_file)
    expected = sha256_from(big_file, info.dataset_offset)

    async def main():
        async with store_server(tmp_path / "rx", tmp_path / "server.log") as server:
            server_base = _measure_start(server.proc.pid)
            rc, out = await run_tool(dcmtk("storescu"), "-v", "-xe", "-aec", AE, LOCALHOST, str(server.port), str(big_file), timeout=300)
            stored = await server.next_stored()
            server_peak = proc_status(server.proc.pid)["VmHWM"]
        return rc, out, stored, server_peak - server_base

    rc, out, stored, server_growth = asyncio.run(main())
    assert rc == 0 and store_successes(out) == 1, out
    assert server_growth < RECEIVER_BUDGET, f"receiver peak RSS grew by {server_growth / MB:.1f} MB"
    got = read_part10_header(stored)
    assert got.sop_instance_uid == info.sop_instance_uid
    assert sha256_from(stored, got.dataset_offset) == expected
