"""The SQLite index's writer lock shared by processes (``<index>-writer.lock``, ``_WriterLock``):
every write transaction of an :class:`Index` holds an exclusive ``flock`` of it, so writers of other
processes (``serve --workers N``) queue in the kernel instead of in SQLite's sleeping busy handler."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pacskit.store import DataStore, IngestStatus
from pacskit.store.index.database import WRITER_LOCK_SUFFIX

from ._util import make_instance, new_uid


@pytest.fixture
def store(sqlite_store: DataStore) -> DataStore:
    return sqlite_store  # SQLite only: the parametrized store of conftest.py is not wanted here


def _try_lock(path: Path) -> bool:
    """Whether another open file description can take the lock now (released at once if so)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases a lock it took
    return True


def test_a_write_transaction_holds_the_lock_file(store: DataStore, tmp_path: Path) -> None:
    lock = tmp_path / f"index.db{WRITER_LOCK_SUFFIX}"
    seen: list[bool] = []

    def work(session: Any) -> None:
        seen.append(_try_lock(lock))

    store.index.run_write(work)
    assert seen == [False]  # taken during the transaction
    assert _try_lock(lock)  # and released after it


def test_the_lean_lane_holds_it_too(store: DataStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, series = new_uid(), new_uid()
    first = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series), source_ae="A")
    assert first.status == IngestStatus.STORED
    lock = tmp_path / f"index.db{WRITER_LOCK_SUFFIX}"
    index = store.index
    seen: list[bool] = []
    original = index._append_lean

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(_try_lock(lock))
        return original(*args, **kwargs)

    monkeypatch.setattr(index, "_append_lean", spy)
    second = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series), source_ae="A")
    assert second.status == IngestStatus.STORED
    assert seen == [False]
    assert _try_lock(lock)


def test_a_writer_of_another_process_waits_for_the_lock_then_writes(store: DataStore, tmp_path: Path) -> None:
    """Another process holds the lock: this process's write waits (no SQLITE_BUSY, no retry loop)
    and goes through as soon as it is released."""
    lock = tmp_path / f"index.db{WRITER_LOCK_SUFFIX}"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        started, done = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            started.set()
            try:
                store.index.set_durable_point(1234)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert started.wait(10)
        assert not done.wait(0.5)  # blocked behind the other process's lock
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert done.wait(30)
        thread.join()
        assert errors == []
    finally:
        holder.kill()
        holder.wait()
