"""A 110 MB instance is moved and got with bounded memory: the server (``pacskit serve`` in its own
process, so its peak RSS measures only it; VmHWM reset just before each retrieve) grows by far less than
the instance, and the copies that arrive are complete."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from net._util import proc_status, reset_peak_rss
from pacskit.testing.peers import free_port, have_dcmtk, run_storescu, storescp, wait_for_port
from pacskit.testing.synth import make_large_instance

from ._util import getscu, movescu

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

MB = 1024 * 1024
SIZE = 110 * MB
BUDGET = 60 * MB  # peak RSS growth allowed in the server during one retrieve


def test_large_instance_move_and_get_with_bounded_memory(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    big = make_large_instance(tmp_path / "big.dcm", SIZE)
    ds = dcmread(big, stop_before_pixels=True)
    data = tmp_path / "srv"
    port = free_port()

    async def run() -> None:
        with storescp(tmp_path / "scp") as scp:
            subprocess.run([sys.executable, "-m", "pacskit", "ae", "add", "STORESCP", "--host", "127.0.0.1",
                            "--port", str(scp.port), "--data-dir", str(data)], check=True, capture_output=True)
            proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(data), "--port", str(port),
                                     "--ae", "RTPACS"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            try:
                wait_for_port("127.0.0.1", port, 60, proc=proc)
                out = await asyncio.to_thread(run_storescu, "127.0.0.1", port, big, called="RTPACS")
                assert "Received Store Response (Success)" in out.stdout, out.stdout
                keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ds.StudyInstanceUID}"]

                assert reset_peak_rss(proc.pid), "cannot reset VmHWM"
                base = proc_status(proc.pid)["VmRSS"]
                text = await movescu(port, "STORESCP", keys)
                move_peak = proc_status(proc.pid)["VmHWM"] - base
                assert "Received Final Move Response (Success)" in text, text
                (moved,) = Path(scp.out_dir).glob("*.dcm")
                assert moved.stat().st_size >= SIZE

                assert reset_peak_rss(proc.pid)
                base = proc_status(proc.pid)["VmRSS"]
                text = await getscu(port, tmp_path / "get", keys)
                get_peak = proc_status(proc.pid)["VmHWM"] - base
                assert "Received C-GET Response (Success)" in text, text
                (got,) = (tmp_path / "get").iterdir()
                assert got.stat().st_size >= SIZE
            finally:
                proc.terminate()
                proc.wait(30)
        assert move_peak < BUDGET, f"server grew by {move_peak / MB:.1f} MB during the C-MOVE"
        assert get_peak < BUDGET, f"server grew by {get_peak / MB:.1f} MB during the C-GET"

    asyncio.run(run())
