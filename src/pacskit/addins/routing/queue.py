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

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacskit.records.durable_sqlite import DurableSqlite

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


class ForwardQueue(DurableSqlite):
    """Thread-safe; every change is committed (``synchronous = FULL``) before the call returns."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)

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

    def waiting(self, destination: str, sop_instance_uids: Iterable[str]) -> set[str]:
        """Which of these instances have a job for ``destination`` still in the queue (queued or failed)."""
        uids = list(sop_instance_uids)
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(uids), 500):
                chunk = uids[start:start + 500]
                found.update(r[0] for r in self._db.execute(
                    "SELECT sop_instance_uid FROM jobs WHERE destination = ? AND sop_instance_uid IN "  # noqa: S608
                    f"({','.join('?' * len(chunk))})", [destination, *chunk]))
        return found

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


class SharedForwardQueue:
    """The forward queue of a cluster (``[cluster]``): the same queue as :class:`ForwardQueue`, in the
    shared PostgreSQL tables of migration 0008 (``cluster_forward_*``), for every node at once.

    * Routing is exactly once across nodes: :meth:`record` inserts the routed instances with
      ``ON CONFLICT DO NOTHING RETURNING`` and makes jobs only for the instances it inserted, so two
      nodes scanning the same new rows at the same moment make each job once.
    * One node sends to a destination at a time, so the order per destination holds: :meth:`head`
      returns jobs only while this node holds the destination's lease (a row of
      ``cluster_forward_destinations``, taken when free or expired, renewed by each call; ``lease_seconds``).
      A node that dies leaves its lease to expire; another node then resends what was not marked done
      (at least once, as after a crash of a single server).
    """

    def __init__(self, engine: Any, node_name: str, lease_seconds: float = 60.0) -> None:
        from sqlalchemy import text

        self._engine = engine
        self._text = text
        self.node_name = node_name
        self.lease_seconds = float(lease_seconds)
        self.path = f"{engine.url.render_as_string(hide_password=True)} (cluster_forward_jobs)"

    def close(self) -> None:
        """Give up this node's destination leases (another node may take them at once)."""
        with contextlib.suppress(Exception), self._engine.begin() as conn:
            conn.execute(self._text("UPDATE cluster_forward_destinations SET lease_until = "
                                    "(now() AT TIME ZONE 'utc') - interval '1 second' "
                                    "WHERE node_name = :n AND destination <> ''"), {"n": self.node_name})

    def _rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        with self._engine.connect() as conn:
            return list(conn.execute(self._text(sql), params or {}).all())

    # ------------------------------------------------------------------ the router's side

    def watermark(self) -> int | None:
        rows = self._rows("SELECT watermark FROM cluster_forward_destinations WHERE destination = ''")
        return None if not rows else int(rows[0][0])

    def routed(self, pks: Iterable[int]) -> set[int]:
        pks = list(pks)
        if not pks:
            return set()
        return {r[0] for r in self._rows("SELECT instance_pk FROM cluster_forward_routed WHERE instance_pk = ANY(:p)",
                                         {"p": pks})}

    def record(self, jobs: Iterable[NewJob], routed: Iterable[int], watermark: int, keep_routed_above: int) -> int:
        """Mark ``routed`` (those no other node marked first) and insert their ``jobs``; move the
        watermark up. One transaction."""
        text = self._text
        now = time.time()
        jobs = list(jobs)
        with self._engine.begin() as conn:
            ours: set[int] = set()
            pks = sorted(set(routed))
            if pks:
                ours = {r[0] for r in conn.execute(text(
                    "INSERT INTO cluster_forward_routed (instance_pk) SELECT unnest(CAST(:p AS bigint[])) "
                    "ON CONFLICT DO NOTHING RETURNING instance_pk"), {"p": pks})}
            mine = [job for job in jobs if job.instance_pk in ours]
            if mine:
                conn.execute(text(
                    "INSERT INTO cluster_forward_jobs (destination, rule, project, instance_pk, sop_instance_uid, "
                    "study_instance_uid, state, attempts, next_at, created) VALUES (:d, :r, :p, :i, :s, :st, "
                    "'queued', 0, 0, :c)"),
                    [{"d": j.destination, "r": j.rule, "p": j.project, "i": j.instance_pk, "s": j.sop_instance_uid,
                      "st": j.study_instance_uid, "c": now} for j in mine])
            conn.execute(text(
                "INSERT INTO cluster_forward_destinations (destination, node_name, lease_until, watermark) "
                "VALUES ('', :n, now() AT TIME ZONE 'utc', :w) ON CONFLICT (destination) DO UPDATE "
                "SET watermark = GREATEST(cluster_forward_destinations.watermark, excluded.watermark)"),
                {"n": self.node_name, "w": watermark})
            conn.execute(text("DELETE FROM cluster_forward_routed WHERE instance_pk < :k"), {"k": keep_routed_above})
        return len(mine)

    # ------------------------------------------------------------------ the senders' side

    def destinations(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT DISTINCT destination FROM cluster_forward_jobs WHERE state = 'queued'")]

    def holds(self, destination: str) -> bool:
        """Take or renew this node's lease on ``destination``; False while another node holds it."""
        with self._engine.begin() as conn:
            row = conn.execute(self._text(
                "INSERT INTO cluster_forward_destinations (destination, node_name, lease_until, watermark) "
                "VALUES (:d, :n, (now() AT TIME ZONE 'utc') + make_interval(secs => :l), 0) "
                "ON CONFLICT (destination) DO UPDATE SET node_name = excluded.node_name, "
                "lease_until = excluded.lease_until WHERE cluster_forward_destinations.node_name = excluded.node_name "
                "OR cluster_forward_destinations.lease_until < (now() AT TIME ZONE 'utc') RETURNING node_name"),
                {"d": destination, "n": self.node_name, "l": self.lease_seconds}).first()
        return row is not None

    def head(self, destination: str, limit: int) -> list[Job]:
        """The oldest queued jobs of ``destination`` while this node holds its lease, else none."""
        if not self.holds(destination):
            return []
        rows = self._rows(
            "SELECT id, destination, rule, project, instance_pk, sop_instance_uid, study_instance_uid, state, "
            "attempts, next_at, last_error, created FROM cluster_forward_jobs WHERE destination = :d "
            "AND state = 'queued' ORDER BY id LIMIT :l", {"d": destination, "l": limit})
        return [Job(*row) for row in rows]

    def waiting(self, destination: str, sop_instance_uids: Iterable[str]) -> set[str]:
        """Which of these instances have a job for ``destination`` still in the queue (queued or failed)."""
        uids = list(sop_instance_uids)
        if not uids:
            return set()
        return {r[0] for r in self._rows("SELECT sop_instance_uid FROM cluster_forward_jobs WHERE destination = :d "
                                         "AND sop_instance_uid = ANY(:u)", {"d": destination, "u": uids})}

    def done(self, job_ids: Iterable[int]) -> None:
        ids = list(job_ids)
        if ids:
            with self._engine.begin() as conn:
                conn.execute(self._text("DELETE FROM cluster_forward_jobs WHERE id = ANY(:i)"), {"i": ids})

    def fail(self, job_id: int, error: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(self._text("UPDATE cluster_forward_jobs SET state = 'failed', attempts = attempts + 1, "
                                    "last_error = :e WHERE id = :i"), {"e": error[:1000], "i": job_id})

    def postpone(self, job_id: int, error: str, next_at: float) -> None:
        with self._engine.begin() as conn:
            conn.execute(self._text("UPDATE cluster_forward_jobs SET attempts = attempts + 1, last_error = :e, "
                                    "next_at = :t WHERE id = :i"), {"e": error[:1000], "t": next_at, "i": job_id})

    # ------------------------------------------------------------------ the operator's side

    def _where(self, conditions: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        parts = [f"{column} = :{column}" for column, value in conditions.items() if value]
        return (" WHERE " + " AND ".join(parts)) if parts else "", {k: v for k, v in conditions.items() if v}

    def list(self, *, state: str | None = None, destination: str | None = None, limit: int = 1000) -> list[Job]:
        where, params = self._where({"state": state, "destination": destination})
        rows = self._rows(
            "SELECT id, destination, rule, project, instance_pk, sop_instance_uid, study_instance_uid, state, "
            f"attempts, next_at, last_error, created FROM cluster_forward_jobs{where} ORDER BY id LIMIT :limit",
            {**params, "limit": limit})
        return [Job(*row) for row in rows]

    def retry(self, *, destination: str | None = None, ids: Iterable[int] | None = None) -> int:
        sql = "UPDATE cluster_forward_jobs SET state = 'queued', next_at = 0 WHERE (state = 'failed' OR next_at > 0)"
        params: dict[str, Any] = {}
        if destination:
            sql += " AND destination = :d"
            params["d"] = destination
        id_list = list(ids or [])
        if id_list:
            sql += " AND id = ANY(:i)"
            params["i"] = id_list
        with self._engine.begin() as conn:
            return int(conn.execute(self._text(sql), params).rowcount)

    def purge(self, *, destination: str | None = None, state: str | None = None) -> int:
        where, params = self._where({"destination": destination, "state": state})
        with self._engine.begin() as conn:
            return int(conn.execute(self._text(f"DELETE FROM cluster_forward_jobs{where}"), params).rowcount)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for destination, state, n in self._rows(
                "SELECT destination, state, count(*) FROM cluster_forward_jobs GROUP BY destination, state"):
            out.setdefault(destination, {})[state] = int(n)
        return out
