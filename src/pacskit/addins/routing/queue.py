"""The durable forward queue of the routing add-in: one SQLite file, ``<data>/routing/queue.db``.

Jobs are created from the *index*, not from events: the router reads the instances committed since
its watermark (every acknowledged instance has its row before its C-STORE response is sent), and
inserts the jobs, the instances it has routed and the new watermark in one transaction. A crash at
any point re-reads the same instances and never creates a job twice (``routed`` remembers them). A
job leaves the queue when the destination answered Success (or Warning); a failure status marks it
``failed`` (kept for the operator: list, retry, purge); a network error leaves it at the head of its
destination's queue with its next attempt time (exponential backoff), so later jobs to the same
destination wait: order is kept per destination, hence per study.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    rule TEXT NOT NULL,
    project TEXT,                      -- anonymize with this project's key before sending
    instance_pk INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',   -- queued | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_destination ON jobs (destination, state, id);
CREATE TABLE IF NOT EXISTS routed (instance_pk INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    destination: str
    rule: str
    project: str | None
    instance_pk: int
    sop_instance_uid: str
    study_instance_uid: str
    state: str
    attempts: int
    next_at: float
    last_error: str | None
    created: float

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class NewJob:
    destination: str
    rule: str
    project: str | None
    instance_pk: int
    sop_instance_uid: str
    study_instance_uid: str


class ForwardQueue:
    """Thread-safe; every change is committed (``synchronous = FULL``) before the call returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ the router's side

    def watermark(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
        return None if row is None else int(row[0])

    def routed(self, pks: Iterable[int]) -> set[int]:
        pks = list(pks)
        if not pks:
            return set()
        with self._lock:
            marks = ",".join("?" * len(pks))
            return {r[0] for r in self._db.execute(f"SELECT instance_pk FROM routed WHERE instance_pk IN ({marks})", pks)}

    def record(self, jobs: Iterable[NewJob], routed: Iterable[int], watermark: int, keep_routed_above: int) -> int:
        """Insert ``jobs``, mark ``routed`` and move the watermark, in one transaction."""
        now = time.time()
        n = 0
        with self._tx() as db:
            for job in jobs:
                db.execute(
                    "INSERT INTO jobs (destination, rule, project, instance_pk, sop_instance_uid, study_instance_uid,"
                    " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job.destination, job.rule, job.project, job.instance_pk, job.sop_instance_uid,
                     job.study_instance_uid, now))
                n += 1
            db.executemany("INSERT OR IGNORE INTO routed (instance_pk) VALUES (?)", [(pk,) for pk in routed])
            db.execute("INSERT INTO meta (key, value) VALUES ('watermark', ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)", (watermark,))
            db.execute("DELETE FROM routed WHERE instance_pk < ?", (keep_routed_above,))
        return n

    # ------------------------------------------------------------------ the senders' side

    def destinations(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT destination FROM jobs WHERE state = 'queued'")]

    def head(self, destination: str, limit: int) -> list[Job]:
        """The oldest queued jobs of ``destination``, in order (the caller checks the first's next_at)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE destination = ? AND state = 'queued' ORDER BY id LIMIT ?",
                (destination, limit)).fetchall()
        return [Job(*row) for row in rows]

    def done(self, job_ids: Iterable[int]) -> None:
        """The destination answered these jobs: one commit for all (a crash before it resends them)."""
        ids = [(i,) for i in job_ids]
        if ids:
            with self._tx() as db:
                db.executemany("DELETE FROM jobs WHERE id = ?", ids)

    def fail(self, job_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?",
                       (error[:1000], job_id))

    def postpone(self, job_id: int, error: str, next_at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE id = ?",
                       (error[:1000], next_at, job_id))

    # ------------------------------------------------------------------ the operator's side

    def list(self, *, state: str | None = None, destination: str | None = None, limit: int = 1000) -> list[Job]:
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if destination:
            where.append("destination = ?")
            args.append(destination)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id LIMIT ?"
        with self._lock:
            return [Job(*row) for row in self._db.execute(sql, [*args, limit])]

    def retry(self, *, destination: str | None = None, ids: Iterable[int] | None = None) -> int:
        """Failed jobs (and postponed ones) become due now."""
        where: list[str] = ["(state = 'failed' OR next_at > 0)"]
        args: list[Any] = []
        if destination:
            where.append("destination = ?")
            args.append(destination)
        ids = list(ids or [])
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        with self._tx() as db:
            return db.execute(f"UPDATE jobs SET state = 'queued', next_at = 0 WHERE {' AND '.join(where)}",
                              args).rowcount

    def purge(self, *, destination: str | None = None, state: str | None = None) -> int:
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if destination:
            where.append("destination = ?")
            args.append(destination)
        if state:
            where.append("state = ?")
            args.append(state)
        with self._tx() as db:
            return db.execute(f"DELETE FROM jobs WHERE {' AND '.join(where)}", args).rowcount

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT destination, state, count(*) FROM jobs GROUP BY destination, state").fetchall()
        out: dict[str, dict[str, int]] = {}
        for destination, state, n in rows:
            out.setdefault(destination, {})[state] = n
        return out
