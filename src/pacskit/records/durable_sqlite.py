"""A small SQLite file for an add-in's durable queue (routing's forward queue, prefetch, the workstation's
jobs): WAL, ``synchronous = FULL`` (a change is on disk when the call that made it returns, because a
queue entry stands for something already acknowledged to a peer), one connection shared by threads
behind a lock, and ``BEGIN IMMEDIATE`` transactions.

Subclass it, pass the schema (``CREATE TABLE IF NOT EXISTS ...``), and write through :meth:`_tx`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DurableSqlite:
    """One SQLite file whose every committed change is durable before the call returns. Thread-safe."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(schema)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
