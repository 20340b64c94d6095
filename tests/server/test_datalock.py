"""One server per data folder, inspection that never repairs, and no folder made up (issue 15, items 2-4).

* A second and a third ``pacskit serve`` on a running server's data folder (on other ports) are refused
  by the folder's lock with one line naming the holder's pid, and touch nothing: the first server's
  admin socket, its in-flight receive file and its journal stay, and it keeps answering. With
  ``--workers 2`` the workers inherit the lock: it holds after the parent is killed with SIGKILL while
  they live, and the workers, whose parent no longer hands them connections, then stop by themselves.
* ``pacskit check`` on a running server inspects only: the in-flight receive file and the ingest
  journal (with a blob whose row is not committed yet) stay, and that blob is not reported as an
  orphan. ``pacskit reindex`` refuses while the server runs, naming its pid, and works once it stopped.
* ``check``, ``reindex``, ``log``, ``ae list``, ``ae remove``, ``worklist list`` on a folder that does not
  exist: one line saying so, exit code 2, and the folder is still not there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pacskit.admin.manager import api_reachable
from pacskit.config.settings import load_settings
from pacskit.store.journal import IngestJournal, recorded_keys
from pacskit.testing.peers import have_dcmtk, run_echoscu


def _pacskit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacskit", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@contextmanager
def _serving(folder: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``pacskit serve --data-dir folder --port 0``; yields the process and its port once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(folder), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens (or the start-up error)
        assert "listening on" in line, line
        port = int(line.split("listening on ", 1)[1].split(":", 1)[1].split(",", 1)[0].split()[0])
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _in_flight(folder: Path) -> tuple[Path, Path, str]:
    """What a C-STORE in progress has on disk: a receive file being written, and a blob renamed into
    place whose key the ingest journal records (its index row not committed yet)."""
    settings = load_settings(folder)
    temp = settings.storage_path / "tmp"
    receiving = temp / f"rx-{os.getpid()}-999.part"
    receiving.write_bytes(b"\0" * 128 + b"DICM" + b"half a dataset")
    key = "ab" + "0" * 30
    blob = settings.storage_path / key[:2] / key[2:4] / f"{key}.dcm"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"a complete, not yet acknowledged instance")
    journal = IngestJournal(str(settings.storage_path / "journal"))
    journal.begin(key)  # kept open: the slot file stays (close() would remove it)
    return receiving, blob, journal.path


def test_a_second_server_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    with _serving(folder) as (first, port):
        settings = load_settings(folder)
        socket_path = settings.admin_socket_path
        assert socket_path.exists() and api_reachable(folder)
        receiving, blob, journal = _in_flight(folder)
        for _ in range(2):  # a second and a third start
            second = _pacskit("serve", "--data-dir", str(folder), "--port", "0", timeout=60)
            assert second.returncode == 1
            lines = second.stdout.strip().splitlines()
            assert len(lines) == 1 and f"in use by pid {first.pid} (pacskit serve)" in lines[0], second.stdout
            assert socket_path.exists() and api_reachable(folder)  # the first server's admin API is intact
            assert receiving.exists() and blob.exists() and os.path.exists(journal)
            assert key_recorded(journal)
        if have_dcmtk():
            assert run_echoscu("127.0.0.1", port, "PACSKIT").returncode == 0  # and it still serves
        assert first.poll() is None


def key_recorded(journal: str) -> bool:
    return ("ab" + "0" * 30) in set(recorded_keys(journal))


def test_workers_inherit_the_lock(tmp_path: Path) -> None:
    """The parent holds the lock and every worker inherits it: after the parent is killed with SIGKILL
    the folder stays locked while a worker lives (held still with SIGSTOP here), and the workers, whose
    channel to the parent has closed, stop on their own once they run again."""
    folder = tmp_path / "pacs"
    with _serving(folder, "--workers", "2") as (parent, _port):
        children = [int(p) for p in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()]
        assert len(children) == 2
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        parent.kill()
        parent.wait()
        try:
            refused = _pacskit("serve", "--data-dir", str(folder), "--port", "0", timeout=60)
            assert refused.returncode == 1 and "in use by pid" in refused.stdout, refused.stdout
        finally:
            for pid in children:
                os.kill(pid, signal.SIGCONT)
        for pid in children:  # nobody signals them: the parent's end of the channel is gone
            _wait_gone(pid)
        again = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(folder), "--port", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert again.stdout is not None and "listening on" in again.stdout.readline()
        finally:
            again.send_signal(signal.SIGTERM)
            again.wait(60)


def _wait_gone(pid: int) -> None:
    """Wait for a process that is not our child to end (pidfd: an event, not a poll)."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], 60)
    finally:
        os.close(fd)


def test_check_on_a_running_server_only_inspects_and_reindex_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    with _serving(folder) as (server, _port):
        receiving, blob, journal = _in_flight(folder)
        check = _pacskit("check", "--data-dir", str(folder))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "no problem" in check.stdout and "1 of ingests in flight" in check.stdout, check.stdout
        assert receiving.exists() and blob.exists() and key_recorded(journal)
        reindex = _pacskit("reindex", "--data-dir", str(folder))
        assert reindex.returncode == 1
        assert reindex.stderr.strip().splitlines() == [
            f"error: data folder {folder.resolve()} is in use by pid {server.pid} (pacskit serve): stop it before reindex"
        ]
        assert receiving.exists() and blob.exists() and key_recorded(journal)
    reindex = _pacskit("reindex", "--data-dir", str(folder))  # stopped: the repair runs, recovery first
    assert reindex.returncode == 0, reindex.stdout + reindex.stderr
    assert not blob.exists() and not receiving.exists()  # never acknowledged: removed by recovery


@pytest.mark.parametrize("command", [["check"], ["reindex"], ["log"], ["ae", "list"], ["ae", "remove", "X"],
                                     ["worklist", "list"]])
def test_a_missing_data_folder_is_one_line_and_stays_missing(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "no-such-folder"
    result = _pacskit(*command, "--data-dir", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: server folder {missing} does not exist (see --data-dir / --config)"
    ], result.stderr
    assert result.stdout == ""
    assert not missing.exists()


def test_an_embedded_second_server_is_refused_too(tmp_path: Path) -> None:
    """``Server`` used from Python takes the same lock (ServerError naming our pid), and gives it back at stop."""
    import asyncio

    from pacskit.server.server import Server, ServerError

    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "LOCKPACS"\nport = 0\n')
    settings = load_settings(folder)

    async def run() -> None:
        async with Server(settings):
            receiving, blob, journal = _in_flight(folder)
            with pytest.raises(ServerError, match=f"in use by pid {os.getpid()} \\(pacskit server\\)"):
                await Server(load_settings(folder)).start()
            assert receiving.exists() and blob.exists() and key_recorded(journal)
        async with Server(load_settings(folder)):  # stopped: the folder is free again
            pass

    asyncio.run(run())
