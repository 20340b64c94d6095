"""Archive-wide exclusive tasks (pacskit.store.exclusive): one holder at a time across processes, on
a data folder (flock) and on PostgreSQL (advisory locks), released when the holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pacskit.store.engine import make_url
from pacskit.store.exclusive import ExclusiveTasks
from pacskit.testing.cluster import POSTGRES_URL, fresh_postgres_database

_HOLDER = textwrap.dedent("""
    import sys
    from sqlalchemy import create_engine, text
    from pacskit.store.engine import make_url
    from pacskit.store.exclusive import ExclusiveTasks

    url, folder = sys.argv[1], sys.argv[2]
    engine = create_engine(make_url(url)) if url != "-" else None
    with ExclusiveTasks(engine, folder).hold("retention") as mine:
        print("held" if mine else "not held", flush=True)
        sys.stdin.readline()
""")


def _holder(url: str, folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, url, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": ":".join(sys.path)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen[str], *, kill: bool) -> None:
    if kill:
        proc.send_signal(signal.SIGKILL)
    else:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
    proc.wait(30)


@pytest.mark.parametrize("kill", [False, True])
def test_a_data_folder_lock_has_one_holder_across_processes(tmp_path: Path, kill: bool) -> None:
    tasks = ExclusiveTasks(None, tmp_path)
    holder = _holder("-", tmp_path)
    try:
        with tasks.hold("retention") as mine:
            assert not mine
        with tasks.hold("other-task") as mine:
            assert mine  # names are independent
    finally:
        _release(holder, kill=kill)
    with tasks.hold("retention") as mine:
        assert mine
        with tasks.hold("retention") as again:  # a second block in the same process is another holder
            assert not again


def test_names_are_short_lower_case_words(tmp_path: Path) -> None:
    for bad in ("", "../x", "Retention", "a" * 65, "x/y"):
        with pytest.raises(ValueError), ExclusiveTasks(None, tmp_path).hold(bad):
            pass


def _wait_for_backends(engine: object, count: int, timeout: float = 30) -> None:
    """Until the database has ``count`` client sessions (ours): polled, not slept."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:  # type: ignore[attr-defined]
            n = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND backend_type = 'client backend'")).scalar_one()
        if n <= count:
            return
        pause.wait(0.05)
    raise AssertionError("the killed holder's session did not end")


@pytest.mark.parametrize("kill", [False, True])
def test_postgresql_advisory_locks_span_processes_and_die_with_them(tmp_path: Path, kill: bool) -> None:
    try:
        database = fresh_postgres_database(POSTGRES_URL, prefix="pacskit_excl")
        url = database.__enter__()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}")
    engine = create_engine(make_url(url))
    try:
        tasks = ExclusiveTasks(engine, tmp_path / "a")  # another folder: the database is what is shared
        holder = _holder(url, tmp_path / "b")
        try:
            with tasks.hold("retention") as mine:
                assert not mine
        finally:
            _release(holder, kill=kill)  # kill -9: its session ends, and its lock with it
        if kill:  # the server ends that session once it reads the closed connection: wait for it
            _wait_for_backends(engine, 1)
        with tasks.hold("retention") as mine:
            assert mine
            with ExclusiveTasks(engine, tmp_path / "c").hold("retention") as again:
                assert not again
        with tasks.hold("retention") as mine:
            assert mine  # released at the end of the block
    finally:
        engine.dispose()
        database.__exit__(None, None, None)
