"""``pacskit serve --workers 2``: two processes share the port and the store; SIGTERM stops both.

Sixteen C-ECHOs (the kernel spreads them over the workers: the log shows two process ids) and two
parallel storescu of 100 instances each; every instance acknowledged, indexed once, ``check`` clean; on
SIGTERM the parent exits 0 and the port is closed. A port in use is one error line and exit code 1.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, have_dcmtk, wait_for_port
from pacskit.testing.synth import make_series

pytestmark = [pytest.mark.dcmtk]


def test_two_workers_share_port_and_store(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    data, port = tmp_path / "pacs", free_port()
    batches = [make_series(tmp_path / "src" / str(i), 100, 32, 32, patient_id=f"W{i}") for i in range(2)]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "pacskit", "serve", "--data-dir", str(data), "--port", str(port), "--workers", "2"],
            stdout=subprocess.PIPE, stderr=log_file, text=True,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=server)
        assert server.stdout is not None
        ready = server.stdout.readline()  # printed once every worker listens
        assert "with 2 workers" in ready, ready
        for _ in range(16):
            echo = subprocess.run([dcmtk_tool("echoscu"), "-aec", "PACSKIT", "127.0.0.1", str(port)],
                                  env=dcmtk_env(), capture_output=True, timeout=30)
            assert echo.returncode == 0, echo.stderr
        senders = [
            subprocess.Popen([dcmtk_tool("storescu"), "-v", "-aec", "PACSKIT", "127.0.0.1", str(port), *map(str, b)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True)
            for b in batches
        ]
        outputs = [p.communicate(timeout=120)[0] for p in senders]
        for out in outputs:
            assert out.count("Received Store Response (Success)") == 100, out[-2000:]
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
    stderr = log_path.read_text()
    assert code == 0, stderr[-3000:]
    pids = set(re.findall(r"\[(\d+)\] INFO pacskit\.net: \S+: association accepted", stderr))
    assert len(pids) == 2, stderr[-3000:]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more
    check = subprocess.run([sys.executable, "-m", "pacskit", "check", "--data-dir", str(data)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "200 instances" in check.stdout, check.stdout


def test_workers_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "pacskit", "serve", "--data-dir", str(tmp_path / "d"), "--port", str(port),
             "--workers", "2"],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stdout
