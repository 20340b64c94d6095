"""kill -9 during ingest: every instance acknowledged Success survives, hash-valid and indexed.

A real `pacskit serve` process receives 1,000 instances from 4 parallel DCMTK storescu; it is killed
with SIGKILL at several points, restarted each time, and the senders resend what was not acknowledged.
Afterwards: every acknowledged instance is indexed, its file is present with the indexed SHA-256, no
temporary file is left visible, and `pacskit check` is clean.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacskit.dicom.part10 import read_part10_header
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, have_dcmtk, wait_for_port
from pacskit.testing.synth import make_series

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

SEND_RE = re.compile(r"Sending file: (.+)$")


def _start(data: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacskit", "serve", "--data-dir", str(data), "--port", str(port), "--ae", "CRASHPACS"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc


def _acknowledged(output: str) -> list[str]:
    """Files storescu reported Success for (a response line follows its 'Sending file' line)."""
    done, current = [], None
    for line in output.splitlines():
        m = SEND_RE.search(line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
            current = None
    return done


def test_kill_9_during_parallel_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    files: list[Path] = []
    for i in range(4):
        files += make_series(tmp_path / "src" / str(i), 250, 64, 64, patient_id=f"CRASH{i}")
    uid_of = {str(f): read_part10_header(f).sop_instance_uid for f in files}
    pending = {i: [str(f) for f in files[i * 250 : (i + 1) * 250]] for i in range(4)}
    acked: set[str] = set()
    data = tmp_path / "pacs"
    port = free_port()
    kills = 0
    for kill_after in (0.8, 1.6, 2.4, None):  # three crashes, then a run to completion
        server = _start(data, port)
        senders = {
            i: subprocess.Popen(
                [dcmtk_tool("storescu"), "-v", "-aec", "CRASHPACS", "127.0.0.1", str(port), *todo],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True,
            )
            for i, todo in pending.items()
            if todo
        }
        try:
            if kill_after is not None:
                time.sleep(kill_after)
                server.send_signal(signal.SIGKILL)
                server.wait(10)
                kills += 1
            outputs = {i: p.communicate(timeout=300)[0] for i, p in senders.items()}
        finally:
            for p in senders.values():
                p.kill()
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                server.wait(30)
        for i, out in outputs.items():
            done = set(_acknowledged(out))
            acked |= done
            pending[i] = [f for f in pending[i] if f not in done]
    assert kills == 3
    assert not any(pending.values()), {i: len(v) for i, v in pending.items()}
    assert len(acked) == 1000

    # every acknowledged instance: indexed, file present, SHA-256 right; nothing partial visible
    from pacskit.server.server import open_store
    from pacskit.config.settings import load_settings

    store = open_store(load_settings(data))
    try:
        for f in acked:
            row = store.get_instance(uid_of[f])
            assert row is not None, f
            path = store.instance_path(uid_of[f])
            assert path is not None and os.path.exists(path)
        report = store.check()
        assert report.ok, str(report)
        assert store.count("instances") == 1000
        leftovers = list(Path(store.temp_dir).iterdir())
        assert leftovers == [], leftovers
        visible = [p for p in (data / "files").rglob("*") if p.is_file() and not p.name.endswith(".dcm")]
        assert visible == [], visible
    finally:
        store.close()
    check = subprocess.run([sys.executable, "-m", "pacskit", "check", "--data-dir", str(data)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
