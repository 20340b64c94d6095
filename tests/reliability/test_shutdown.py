"""SIGTERM while two DCMTK storescu are sending: a clean exit that loses nothing acknowledged.

The server gets SIGTERM in the middle of the ingest. It must exit by itself (code 0, within its grace
period); every instance storescu saw Success for must be indexed with its file; nothing half-written
may be left — not even in the temp folder, which this test inspects *before* anything purges it —
and ``pacskit check`` must be clean.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacskit.dicom.part10 import read_part10_header
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, have_dcmtk, wait_for_port
from pacskit.testing.synth import make_series

from .test_crash_safety import _acknowledged

pytestmark = [pytest.mark.dcmtk]


def test_sigterm_under_load_exits_cleanly_and_keeps_everything_acknowledged(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    batches = [make_series(tmp_path / "src" / str(i), 400, 64, 64, patient_id=f"TERM{i}") for i in range(2)]
    uid_of = {str(f): read_part10_header(f).sop_instance_uid for b in batches for f in b}
    data, port = tmp_path / "pacs", free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pacskit", "serve", "--data-dir", str(data), "--port", str(port), "--ae", "TERMPACS"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    wait_for_port("127.0.0.1", port, timeout=30, proc=server)
    senders = [
        subprocess.Popen([dcmtk_tool("storescu"), "-v", "-aec", "TERMPACS", "127.0.0.1", str(port), *map(str, b)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True)
        for b in batches
    ]
    try:
        time.sleep(1.0)
        assert server.poll() is None
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
        log = server.stderr.read() if server.stderr else ""
        outputs = [p.communicate(timeout=60)[0] for p in senders]
    finally:
        for p in senders:
            p.kill()
        if server.poll() is None:
            server.kill()
    assert code == 0, log
    acked = {f for out in outputs for f in _acknowledged(out)}
    assert 0 < len(acked) < 800, "the signal should land in the middle of the ingest"
    temp = data / "files" / "tmp"
    assert sorted(p.name for p in temp.iterdir()) == []  # clean exit: nothing half-written, no spares

    from pacskit.server.server import open_store
    from pacskit.config.settings import load_settings

    store = open_store(load_settings(data))
    try:
        for f in acked:
            assert store.get_instance(uid_of[f]) is not None, f
        report = store.check()
        assert report.ok, str(report)
    finally:
        store.close()
    check = subprocess.run([sys.executable, "-m", "pacskit", "check", "--data-dir", str(data)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
