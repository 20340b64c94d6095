"""``pacskit serve --workers N``: the parent accepts and hands each connection to the least busy worker.

Sixteen C-ECHOs one after the other and two parallel storescu of 100 instances each: every instance
acknowledged, indexed once, ``check`` clean, and the associations split evenly between the workers (by
the workers' own "association accepted" log lines); on SIGTERM the parent exits 0 and the port is
closed. Eight associations held open at once over two workers are four on each; over three workers,
a burst of parallel storescu is all served. A worker killed with SIGKILL is replaced while the other
keeps serving, and a connection the parent could not send to a dead worker goes to another. SIGTERM
during an ingest lets the running operations finish: every acknowledged instance is stored. A port in
use is one error line and exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net.presentation import RequestedContext
from pacskit.net.requestor import connect
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
    accepted = _accepted_by_worker(stderr)
    # 16 + 2 associations: ties between equally busy workers go round robin, so they alternate
    assert sorted(accepted.values()) == [9, 9], (accepted, stderr[-3000:])
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


ACCEPTED = re.compile(r"\[(\d+)\] INFO pacskit\.net: \S+: association accepted from 127\.0\.0\.1:\d+")


def _accepted_by_worker(log_text: str) -> Counter[str]:
    """Associations accepted per worker process id, as each worker logged them."""
    return Counter(ACCEPTED.findall(log_text))


class _Serving:
    """``pacskit serve --workers N`` with its log read line by line (tests wait on lines, not on time)."""

    def __init__(self, data: Path, workers: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacskit", "serve", "--data-dir", str(data), "--port", str(self.port),
             "--workers", str(workers)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()  # printed once every worker is ready and the parent listens
        assert f"with {workers} workers" in ready, (ready, self.log)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            self._new.put(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first line from now on matching ``pattern``."""
        while True:
            line = self._new.get(timeout=timeout)
            match = re.search(pattern, line)
            if match is not None:
                return match

    def workers(self) -> list[int]:
        pid = self.proc.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._reader.join(30)
        return code


@contextlib.contextmanager
def _serving(data: Path, workers: int) -> Iterator[_Serving]:
    server = _Serving(data, workers)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _echo(port: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([dcmtk_tool("echoscu"), "-aec", "PACSKIT", "127.0.0.1", str(port)],
                          env=dcmtk_env(), capture_output=True, timeout=60)


def _check(data: Path) -> str:
    check = subprocess.run([sys.executable, "-m", "pacskit", "check", "--data-dir", str(data)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return check.stdout


def test_associations_open_at_once_are_spread_evenly(tmp_path: Path) -> None:
    """Eight associations open together over two workers: four each, whatever their addresses."""

    async def hold_eight(port: int) -> None:
        contexts = [RequestedContext(VERIFICATION_SOP_CLASS)]
        held = [await connect("127.0.0.1", port, called_ae="PACSKIT", contexts=contexts) for _ in range(8)]
        for assoc in held:
            assert await assoc.echo() == 0x0000
        for assoc in held:
            await assoc.release()

    with _serving(tmp_path / "pacs", 2) as server:
        asyncio.run(hold_eight(server.port))
        assert server.stop() == 0
        assert sorted(_accepted_by_worker(server.log).values()) == [4, 4], server.log[-3000:]


def test_a_burst_over_three_workers_is_all_served(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    data = tmp_path / "pacs"
    batches = [make_series(tmp_path / "src" / str(i), 20, 16, 16, patient_id=f"B{i}") for i in range(9)]
    with _serving(data, 3) as server:
        senders = [
            subprocess.Popen([dcmtk_tool("storescu"), "-v", "-aec", "PACSKIT", "127.0.0.1", str(server.port),
                              *map(str, b)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True)
            for b in batches
        ]
        echoes = [subprocess.Popen([dcmtk_tool("echoscu"), "-aec", "PACSKIT", "127.0.0.1", str(server.port)],
                                   env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                  for _ in range(12)]
        for sender in senders:
            out = sender.communicate(timeout=120)[0]
            assert sender.returncode == 0 and out.count("Received Store Response (Success)") == 20, out[-2000:]
        for echo in echoes:
            assert echo.wait(60) == 0, echo.communicate()[0]
        assert server.stop() == 0
        accepted = _accepted_by_worker(server.log)
    assert sum(accepted.values()) == 21 and len(accepted) == 3, accepted
    assert "180 instances" in _check(data)


def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    with _serving(tmp_path / "pacs", 2) as server:
        first, second = server.workers()
        os.kill(first, signal.SIGKILL)
        server.wait_for_line(rf"worker {first} exited with code -9; starting another")
        for _ in range(6):  # served while the replacement starts
            echo = _echo(server.port)
            assert echo.returncode == 0, echo.stderr
        ready = server.wait_for_line(r"worker (\d+) ready")
        replacement = int(ready.group(1))
        assert sorted(server.workers()) == sorted([second, replacement]) and replacement != first
        for _ in range(4):
            assert _echo(server.port).returncode == 0
        assert server.stop() == 0
        log_text = server.log
    accepted = _accepted_by_worker(log_text)
    assert str(first) not in accepted and accepted[str(second)] + accepted[str(replacement)] == 10, accepted
    assert accepted[str(replacement)] >= 2, accepted  # it takes its share once ready


def test_sigterm_lets_running_stores_finish(tmp_path: Path) -> None:
    """SIGTERM during an ingest: the parent stops accepting, the workers finish what they are doing, and
    every instance whose C-STORE was acknowledged is in the store."""
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    data = tmp_path / "pacs"
    files = make_series(tmp_path / "src", 400, 32, 32, patient_id="DRAIN")
    with _serving(data, 2) as server:
        sender = subprocess.Popen(
            [dcmtk_tool("storescu"), "-v", "-aec", "PACSKIT", "127.0.0.1", str(server.port), *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True,
        )
        assert sender.stdout is not None
        acknowledged = 0
        output = []
        for line in sender.stdout:
            output.append(line)
            if "Received Store Response (Success)" in line:
                acknowledged += 1
                if acknowledged == 20:
                    break
        server.proc.send_signal(signal.SIGTERM)
        rest = sender.communicate(timeout=120)[0]
        acknowledged += rest.count("Received Store Response (Success)")
        assert server.proc.wait(60) == 0, server.log[-3000:]
    stored = int(_check(data).split()[0])
    assert acknowledged <= stored <= 400, ("".join(output) + rest)[-2000:]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0


def test_a_connection_a_dead_worker_cannot_take_goes_to_another(tmp_path: Path) -> None:
    """The parent's hand-over on real sockets: the least busy worker's channel is closed (it died
    before the parent read its end-of-file), so the send fails; the connection goes to the other
    worker, and the dead one gets nothing more."""
    from pacskit.config.settings import ServerSettings
    from pacskit.server import workers

    settings = ServerSettings.model_validate({"workers": 2})
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    parent = workers._Parent(settings, settings, tmp_path, None, reserved)
    sleepers = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
                for _ in range(2)]
    ends = []
    try:
        for slot, proc in enumerate(sleepers):  # two "workers": real processes, real channels
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            ends.append(theirs)
            worker = workers._Worker(slot, proc, ours, -1, 0.0, ready=True)
            parent.slots[slot] = worker
            parent.selector.register(ours, selectors.EVENT_READ, lambda: None)
        dead, alive = parent.slots
        assert dead is not None and alive is not None
        alive.open = 1  # busier: the dead one would be chosen first
        ends[0].close()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            with socket.create_connection(listener.getsockname()) as client:
                conn, _ = listener.accept()
                with conn:
                    parent._hand(b"p", conn)
                msg, fds, _, _ = socket.recv_fds(ends[1], 16, 1)
                assert msg == b"p" and len(fds) == 1
                with socket.socket(fileno=fds[0]) as handed:
                    client.sendall(b"ping")
                    assert handed.recv(4) == b"ping"  # the very connection the client opened
        assert dead.gone and not dead.ready and alive.open == 2
        assert parent._choose(set()) is alive
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
        for end in ends:
            end.close()
        parent.selector.close()
        reserved.close()
