"""Several pacskit nodes on one index database and one object store: the state they share.

A node is one ``pacskit serve`` process whose index is a shared PostgreSQL database and whose blobs are
in a shared object store (``[cluster]`` in server.toml, implied by PostgreSQL + ``s3``). Nothing a node
keeps in its local folder matters to another node: what does lives here, in the index database.

* **Leases** (``cluster_nodes``): each node has a row with ``lease_until``, renewed every third of
  ``lease_seconds`` by :class:`ClusterNode`'s thread. Times are the database's clock (``now()``), so
  the nodes' clocks need not agree. A node whose lease ran out is dead: the first other node to see it
  recovers its work (below) and removes its row. A node that was only paused (and finds its row gone
  when it renews) registers again; whatever it had in flight is lost, never half done.
* **Ingests in flight** (``cluster_inflight``, :class:`SharedInflight`): replaces the local crash
  journal of :mod:`pacskit.store.journal`. An ingest's blob key is recorded (with its node) before
  the upload: keys are recorded ahead, a batch per INSERT, and handed out one per ingest (see
  :class:`SharedInflight`); the transaction that indexes the instance deletes that row and fails if the row is gone
  (the *fence*: a node declared dead can never commit an instance whose blob another node is deleting).
  Recovery of a dead node deletes its rows first (committed), then their blobs: none of those ingests
  committed, none was acknowledged. The record is an asynchronous commit (``synchronous_commit=off``):
  no fsync on the ingest path; the index commit that follows flushes the WAL up to it anyway.
* **Deletion intents** (``cluster_deletions``): in a cluster a deletion (:mod:`pacskit.store.deletion`)
  records the blob keys it is about to free here, under its node and intent, committed before the
  row deletions, and removes them once the blobs are gone (the single-node intent file, shared).
  Recovery of a dead node takes its intents over (committed under our node id first, so a crash of
  ours hands them on), deletes each listed blob no index row refers to, then removes the intents.
* **The AE registry** (``cluster_ae_titles``, :class:`SharedAeRegistry`): the ``ae_titles`` base service
  read through on every lookup (an indexed primary-key read), so an AE added through one node's admin
  API is known to every node at once. Entries of a node's ``ae-titles.toml`` are copied in at start when
  the shared registry lacks them (the file is how a first node is configured).

PostgreSQL only (``FOR UPDATE SKIP LOCKED``, ``ON CONFLICT``, ``RETURNING``); the tables exist on every
backend (migrations 0008, 0009) so one schema serves all.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import BigInteger, Engine, Float, Index, Integer, String, Text, create_engine, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from pacskit.config.aetitles import RemoteAE
from pacskit.store.blobs import new_key
from pacskit.store.engine import PG_POOL_RECYCLE_S, pings_connections, replace_dead_connections
from pacskit.store.index.models import AE, MYSQL_TABLE_ARGS, PK, UID_COLUMN, Base, Instance, UTCDateTime

log = logging.getLogger("pacskit.cluster")

NODE_ID = 32
NODE_NAME = 64
INFLIGHT_KEY = 80
INTENT_ID = 32
#: the database's clock, as naive UTC (what UTCDateTime columns hold)
_NOW = "(now() AT TIME ZONE 'utc')"


class ClusterNodeRow(Base):
    """One live (or not yet recovered) node: its lease, renewed by the node itself."""

    __tablename__ = "cluster_nodes"

    node_id: Mapped[str] = mapped_column(String(NODE_ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(NODE_NAME))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class InflightBlob(Base):
    """A blob key an ingest has uploaded (or is uploading) whose index row is not committed yet."""

    __tablename__ = "cluster_inflight"

    blob_key: Mapped[str] = mapped_column(String(INFLIGHT_KEY), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(NODE_ID), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    __table_args__ = (MYSQL_TABLE_ARGS,)


class DeletionIntentRow(Base):
    """A blob key a deletion frees: its rows are (or are about to be) deleted, its blob not yet."""

    __tablename__ = "cluster_deletions"

    node_id: Mapped[str] = mapped_column(String(NODE_ID), primary_key=True)
    intent: Mapped[str] = mapped_column(String(INTENT_ID), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(INFLIGHT_KEY), primary_key=True)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    __table_args__ = (MYSQL_TABLE_ARGS,)


class SharedAeTitle(Base):
    """One remote AE of the shared registry: the :class:`RemoteAE` as JSON."""

    __tablename__ = "cluster_ae_titles"

    title: Mapped[str] = mapped_column(String(AE), primary_key=True)
    definition: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(NODE_NAME))

    __table_args__ = (MYSQL_TABLE_ARGS,)


class ForwardJobRow(Base):
    """A job of the routing add-in's shared forward queue (``pacskit.addins.routing.queue.SharedForwardQueue``)."""

    __tablename__ = "cluster_forward_jobs"

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(AE))
    rule: Mapped[str] = mapped_column(String(64))
    project: Mapped[str | None] = mapped_column(String(64), nullable=True)
    instance_pk: Mapped[int] = mapped_column(BigInteger)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN))
    study_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_cluster_forward_jobs_destination_state_id", "destination", "state", "id"),
                      MYSQL_TABLE_ARGS)


class ForwardRoutedRow(Base):
    """An instance the shared router has routed (jobs made, or none matched)."""

    __tablename__ = "cluster_forward_routed"

    instance_pk: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class ForwardDestinationRow(Base):
    """Which node sends to a destination (a lease): one sender per destination keeps the order."""

    __tablename__ = "cluster_forward_destinations"

    destination: Mapped[str] = mapped_column(String(AE), primary_key=True)
    node_name: Mapped[str] = mapped_column(String(NODE_NAME))
    lease_until: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: the router's watermark is kept in the row of destination "" (the highest instance pk routed)
    watermark: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class ClusterClaimRow(Base):
    """Which node works on an item of an add-in's durable state (``kind``, e.g. ``commitment``: a
    storage commitment request's pk). A node adopts the items whose claiming node is dead."""

    __tablename__ = "cluster_claims"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    item: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    node_name: Mapped[str] = mapped_column(String(NODE_NAME))
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    __table_args__ = (MYSQL_TABLE_ARGS,)


def claim(session: Any, kind: str, item: int, node_name: str) -> None:
    """In the transaction that creates ``item``: this node works on it."""
    session.execute(text(
        f"INSERT INTO cluster_claims (kind, item, node_name, claimed_at) VALUES (:k, :i, :n, {_NOW}) "
        "ON CONFLICT (kind, item) DO UPDATE SET node_name = excluded.node_name, claimed_at = excluded.claimed_at"),
        {"k": kind, "i": item, "n": node_name})


def adopt(engine: Engine, kind: str, items: list[int], node_name: str, *, own: bool = False) -> list[int]:
    """Claim for ``node_name`` those of ``items`` nobody claims or whose node has no live lease (and,
    with ``own``, those already claimed under our name: a previous run of this node). Returns the
    items now ours to work on; concurrent callers never get the same item (the upsert's row lock)."""
    if not items:
        return []
    alive = (f"EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.name = cluster_claims.node_name "
             f"AND n.lease_until >= {_NOW})")
    condition = f"(cluster_claims.node_name = :n OR NOT {alive})" if own else f"NOT {alive}"
    with engine.begin() as conn:
        rows = conn.execute(text(
            f"INSERT INTO cluster_claims (kind, item, node_name, claimed_at) "
            f"SELECT :k, unnest(CAST(:items AS bigint[])), :n, {_NOW} "
            f"ON CONFLICT (kind, item) DO UPDATE SET node_name = excluded.node_name, claimed_at = excluded.claimed_at "
            f"WHERE {condition} RETURNING item"), {"k": kind, "items": list(items), "n": node_name})
        return sorted(int(r[0]) for r in rows)


def forget_claims(engine: Engine, kind: str, open_items_sql: str) -> int:
    """Delete the claims of ``kind`` on items that are done: not among ``open_items_sql`` (a constant
    subquery of the item ids still open, evaluated in the same statement, so a claim committed with
    its new item is never taken for a finished one). Returns how many were deleted."""
    with engine.begin() as conn:
        gone = conn.execute(text(f"DELETE FROM cluster_claims WHERE kind = :k AND item NOT IN ({open_items_sql})"),
                            {"k": kind})
        return int(gone.rowcount)


#: the fence's statement (psycopg's paramstyle: it runs on the DBAPI cursor)
_FENCE = "DELETE FROM cluster_inflight WHERE blob_key = %s AND node_id = %s"
#: the same for the index's lean lane, whose statement it joins (parameters named ``fence_*``)
_FENCE_NAMED = "DELETE FROM cluster_inflight WHERE blob_key = %(fence_key)s AND node_id = %(fence_node)s"


class LeaseLost(RuntimeError):
    """This node's in-flight record is gone: another node declared it dead and recovered its ingest."""


def _require_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise ValueError(f"a cluster needs a PostgreSQL index, not {engine.dialect.name}")


def _journal_engine(engine: Engine) -> Engine:
    """A small engine on the same database for the in-flight records: autocommit, one round trip per
    statement, and ``synchronous_commit=off`` (the record needs no fsync of its own, see module doc)."""
    # no pre-ping (a round trip per checkout): a connection the server closed is replaced at checkout
    # without one (replace_dead_connections); one lost silently fails one statement, SQLAlchemy then
    # discards the whole pool, and that ingest fails cleanly (never acknowledged)
    ping = pings_connections(engine.url)
    journal = create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=4, max_overflow=16,
                            pool_recycle=PG_POOL_RECYCLE_S, pool_pre_ping=ping,
                            connect_args={"connect_timeout": 10, "options": "-c synchronous_commit=off"})
    if not ping:
        replace_dead_connections(journal)
    return journal


class SharedInflight:
    """The shared crash journal of ingests in flight (``DataStore.shared_journal``); thread-safe.

    ``node_id`` is the writing node's (``None``: read only, e.g. ``pacskit check``).

    **Keys recorded ahead.** An ingest's record must be committed before its blob is written, which
    cost every instance a transaction of its own. Instead :meth:`next_key` hands out keys recorded
    ``batch`` at a time (one INSERT of ``batch`` rows): the record of each key is committed before
    the key is even handed out, so the contract holds, and the ingest path pays one round trip per
    ``batch`` instances. A key recorded but never used has no blob: recovering it (a dead node's
    rows) deletes an object that does not exist, which S3 answers as done. Keys are used within
    ``max_age`` seconds of their record (older ones are dropped, their rows deleted with the next
    batch's INSERT), so a key's first digits stay the minute it was made (:func:`new_key`).
    """

    def __init__(self, engine: Engine, node_id: str | None, *, batch: int = 32, max_age: float = 60.0) -> None:
        _require_postgresql(engine)
        self.node_id = node_id
        self.batch = max(1, int(batch))
        self.max_age = float(max_age)
        self._engine = _journal_engine(engine)
        self._lock = threading.Lock()
        self._ahead: list[str] = []  # recorded, not handed out yet (taken from the end)
        self._ahead_at = 0.0  # time.monotonic() of their record
        self._given: set[str] = set()  # handed out by next_key, begin() not called yet
        self._deleting: set[str] = set()  # deletion intents this process is running (not to be finished)

    def next_key(self) -> str:
        """A new blob key whose in-flight record is already committed (see the class doc): its
        :meth:`begin` then costs nothing."""
        if self.node_id is None:
            raise RuntimeError("a read-only in-flight journal cannot record ingests")
        with self._lock:
            if not self._ahead or time.monotonic() - self._ahead_at > self.max_age:
                self._record_ahead()
            key = self._ahead.pop()
            self._given.add(key)
            return key

    def _record_ahead(self) -> None:
        """Record ``batch`` new keys in one statement (dropping the rows of stale unused ones)."""
        stale, keys = self._ahead, [new_key() for _ in range(self.batch)]
        with self._engine.connect() as conn:
            conn.execute(text(
                "WITH dropped AS (DELETE FROM cluster_inflight WHERE node_id = :n "
                "AND blob_key = ANY(CAST(:stale AS varchar[]))) "
                f"INSERT INTO cluster_inflight (blob_key, node_id, started_at) "
                f"SELECT unnest(CAST(:keys AS varchar[])), :n, {_NOW}"),
                {"keys": keys, "stale": stale, "n": self.node_id})
        self._ahead, self._ahead_at = keys, time.monotonic()

    def begin(self, key: str) -> str:
        """Record ``key`` as in flight for this node, before its blob is written; returns ``key``.
        Free for a key from :meth:`next_key` (recorded already); any other key costs one INSERT."""
        if self.node_id is None:
            raise RuntimeError("a read-only in-flight journal cannot record ingests")
        with self._lock:
            if key in self._given:
                self._given.discard(key)
                return key
        with self._engine.connect() as conn:
            conn.execute(text(f"INSERT INTO cluster_inflight (blob_key, node_id, started_at) "
                              f"VALUES (:k, :n, {_NOW})"), {"k": key, "n": self.node_id})
        return key

    def fence(self, session: Session, key: str) -> None:
        """In the transaction that indexes ``key``'s instance: remove its record, or raise
        :class:`LeaseLost` (the record was taken by a node recovering ours: the transaction must fail).

        On the DBAPI cursor of the session's transaction, as the index's own ingest statements are
        (:class:`pacskit.store.index.database.Index`): SQLAlchemy's per-execution machinery would
        cost more than the statement; psycopg prepares it server-side after a few runs."""
        cursor = session.connection().connection.cursor()
        try:
            cursor.execute(_FENCE, (key, self.node_id))
            deleted = cursor.rowcount
        finally:
            cursor.close()
        if deleted != 1:
            self.forget_ahead()  # recovered with it: recording new ones is the way on
            raise LeaseLost(f"in-flight record of blob {key} was recovered by another node (our lease ran out)")

    def fence_statement(self, key: str) -> tuple[str, dict[str, Any]]:
        """:meth:`fence` as SQL and parameters for the index's lean lane on PostgreSQL
        (:mod:`pacskit.store.index.pglane`), which makes it part of the instance's one statement (a
        CTE) and fails that statement unless it deletes exactly one row. The lane then
        leaves the instance to the general path, whose :meth:`fence` raises :class:`LeaseLost`."""
        return _FENCE_NAMED, {"fence_key": key, "fence_node": self.node_id}

    def forget_ahead(self) -> None:
        """Drop the keys recorded ahead without touching their rows: another node recovering ours
        removed them (our lease ran out), so the next ingest records new ones."""
        with self._lock:
            self._ahead = []

    def end(self, key: str) -> None:
        """The ingest of ``key`` failed and its blob is deleted (or kept as an orphan): forget it."""
        with self._lock:
            self._given.discard(key)
        with self._engine.connect() as conn:
            conn.execute(text("DELETE FROM cluster_inflight WHERE blob_key = :k AND node_id = :n"),
                         {"k": key, "n": self.node_id})

    def unused(self) -> set[str]:
        """The keys recorded ahead and not handed out (they have no blob: leaving needs no delete)."""
        with self._lock:
            return set(self._ahead)

    def keys(self) -> set[str]:
        """Every node's keys in flight right now (keys recorded ahead included)."""
        with self._engine.connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT blob_key FROM cluster_inflight"))}

    # deletion intents (cluster_deletions) ---------------------------------------------------------------

    def intend_deletion(self, intent: str, keys: list[str]) -> None:
        """Record ``keys`` under this node's deletion ``intent`` before their rows are deleted.

        Committed with ``synchronous_commit=off`` like the in-flight records: the row deletions'
        commit that follows flushes the WAL up to it, so it is durable before they are."""
        if self.node_id is None:
            raise RuntimeError("a read-only shared journal cannot record deletions")
        with self._lock:  # before the rows exist: ClusterNode.finish_deletions reads rows, then this
            self._deleting.add(intent)
        if not keys:
            return
        with self._engine.connect() as conn:
            conn.execute(text(
                "INSERT INTO cluster_deletions (node_id, intent, blob_key, recorded_at) "
                f"SELECT :n, :i, unnest(CAST(:keys AS varchar[])), {_NOW} ON CONFLICT DO NOTHING"),
                {"n": self.node_id, "i": intent, "keys": list(keys)})

    def fence_deletion(self, session: Session, intent: str, count: int) -> None:
        """In the transaction that deletes rows of ``intent``: its ``count`` keys must still be ours,
        or :class:`LeaseLost` (a node recovering ours took the intent over: it may finish it before
        these rows go, so they must not go). ``FOR SHARE`` holds them until the commit: a recovery
        taking them over waits for it, then finds the rows gone and deletes their blobs."""
        found = session.execute(text(
            "SELECT count(*) FROM (SELECT 1 FROM cluster_deletions WHERE node_id = :n AND intent = :i "
            "FOR SHARE) AS ours"), {"n": self.node_id, "i": intent}).scalar_one()
        if found != count:
            raise LeaseLost(f"deletion intent {intent} was taken over by another node (our lease ran out)")

    def end_deletion(self, intent: str, *, done: bool = True) -> None:
        """This process stops working on ``intent``. ``done``: every blob is deleted, forget it (a crash
        before is harmless: nothing left to do). Not ``done`` (the deletion failed): the intent stays,
        and :meth:`ClusterNode.finish_deletions` (ours next round, or a node recovering ours) finishes it."""
        try:
            if done:
                with self._engine.connect() as conn:
                    conn.execute(text("DELETE FROM cluster_deletions WHERE node_id = :n AND intent = :i"),
                                 {"n": self.node_id, "i": intent})
        finally:
            with self._lock:
                self._deleting.discard(intent)

    def running_deletions(self) -> set[str]:
        """The deletion intents this process is running (their rows are not to be finished by recovery)."""
        with self._lock:
            return set(self._deleting)

    def deleting_keys(self) -> set[str]:
        """Every node's keys of deletions running or interrupted and not finished yet (for ``check``)."""
        with self._engine.connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT blob_key FROM cluster_deletions"))}

    def close(self) -> None:
        self._engine.dispose()


class SharedAeRegistry:
    """The :class:`~pacskit.config.aetitles.AeTitles` base service in the shared database.

    Read through on every call: a change through any node is seen by every node at its next lookup."""

    def __init__(self, engine: Engine, node_name: str) -> None:
        _require_postgresql(engine)
        self._engine = engine
        self.node_name = node_name

    @staticmethod
    def _json(ae: RemoteAE) -> str:
        return ae.model_dump_json(exclude_none=True)

    def get(self, title: str) -> RemoteAE | None:
        with self._engine.connect() as conn:
            raw = conn.execute(text("SELECT definition FROM cluster_ae_titles WHERE title = :t"),
                               {"t": title.strip()}).scalar()
        return None if raw is None else RemoteAE.model_validate_json(raw)

    def all(self) -> list[RemoteAE]:
        with self._engine.connect() as conn:
            rows = conn.execute(text("SELECT definition FROM cluster_ae_titles ORDER BY title")).scalars().all()
        return [RemoteAE.model_validate_json(raw) for raw in rows]

    def __iter__(self) -> Any:
        return iter(self.all())

    def add(self, ae: RemoteAE, *, replace: bool = False) -> None:
        """Register ``ae``; ``ValueError`` if its title is registered and not ``replace``."""
        conflict = ("DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at, "
                    "updated_by = excluded.updated_by") if replace else "DO NOTHING"
        with self._engine.begin() as conn:
            done = conn.execute(text(
                f"INSERT INTO cluster_ae_titles (title, definition, updated_at, updated_by) "
                f"VALUES (:t, :d, {_NOW}, :by) ON CONFLICT (title) {conflict}"),
                {"t": ae.title, "d": self._json(ae), "by": self.node_name})
            if done.rowcount != 1 and not replace:
                raise ValueError(f"AE {ae.title!r} is already registered")
        log.info("AE %s registered (shared registry, through node %s)", ae.title, self.node_name)

    def remove(self, title: str) -> bool:
        with self._engine.begin() as conn:
            gone = conn.execute(text("DELETE FROM cluster_ae_titles WHERE title = :t"), {"t": title.strip()})
        return bool(gone.rowcount)

    def seed(self, entries: list[RemoteAE]) -> int:
        """Copy in the ``entries`` (a local ``ae-titles.toml``) whose titles are not registered; returns how many."""
        added = 0
        with self._engine.begin() as conn:
            for ae in entries:
                done = conn.execute(text(
                    f"INSERT INTO cluster_ae_titles (title, definition, updated_at, updated_by) "
                    f"VALUES (:t, :d, {_NOW}, :by) ON CONFLICT (title) DO NOTHING"),
                    {"t": ae.title, "d": self._json(ae), "by": self.node_name})
                added += done.rowcount
        return added


def cluster_nodes(engine: Engine) -> list[dict[str, Any]]:
    """The registered nodes (live, or dead and not recovered yet), for status pages and tests."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT node_id, name, host, pid, started_at, lease_until, lease_until >= {_NOW} AS alive, "
            "(SELECT count(*) FROM cluster_inflight i WHERE i.node_id = n.node_id) AS in_flight "
            "FROM cluster_nodes n ORDER BY name, started_at")).mappings().all()
    return [dict(row) for row in rows]


class ClusterNode:
    """This process as a node: registers its lease, renews it, and recovers dead nodes' ingests.

    ``delete_blob(key)`` deletes a blob of the shared store (missing is fine). :meth:`start` registers
    and starts the thread; :meth:`stop` ends it and removes this node's row (nothing of ours is in
    flight any more). ``on_recovered(node name, blob keys)`` is called after each recovery (tests, logs).
    """

    def __init__(self, engine: Engine, name: str, lease_seconds: float,
                 delete_blob: Callable[[str], None]) -> None:
        _require_postgresql(engine)
        self.engine = engine
        self.name = name
        self.node_id = secrets.token_hex(NODE_ID // 2)
        self.lease_seconds = float(lease_seconds)
        self.delete_blob = delete_blob
        self.inflight = SharedInflight(engine, self.node_id)
        self.on_recovered: Callable[[str, list[str]], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_renewal: float | None = None  # time.monotonic() of the last successful renewal
        self.recovered_blobs = 0

    # lease ------------------------------------------------------------------------------------------

    def _register(self, conn: Any) -> None:
        conn.execute(text(
            f"INSERT INTO cluster_nodes (node_id, name, host, pid, started_at, lease_until) "
            f"VALUES (:id, :name, :host, :pid, {_NOW}, {_NOW} + make_interval(secs => :lease)) "
            "ON CONFLICT (node_id) DO UPDATE SET lease_until = excluded.lease_until"),
            {"id": self.node_id, "name": self.name, "host": socket.gethostname()[:255], "pid": os.getpid(),
             "lease": self.lease_seconds})

    def renew(self) -> None:
        """Extend our lease (register again if another node declared us dead)."""
        with self.engine.begin() as conn:
            done = conn.execute(text(
                f"UPDATE cluster_nodes SET lease_until = {_NOW} + make_interval(secs => :lease) "
                "WHERE node_id = :id"), {"id": self.node_id, "lease": self.lease_seconds})
            if done.rowcount != 1:
                log.error("node %s: our lease had run out and another node recovered our ingests in flight; "
                          "registering again", self.name)
                self.inflight.forget_ahead()
                self._register(conn)
        self.last_renewal = time.monotonic()

    def healthy(self) -> bool:
        """The lease was renewed within the last ``lease_seconds`` (the database answers us)."""
        return self.last_renewal is not None and time.monotonic() - self.last_renewal < self.lease_seconds

    # recovery of dead nodes ---------------------------------------------------------------------------

    def recover_dead(self) -> int:
        """Recover every node whose lease ran out: its in-flight records are removed (committed first,
        so the dead node's own transactions can never commit them), then their blobs deleted (a key it
        recorded ahead and never used has none: S3 answers its delete as done). Returns how many
        records were recovered. Nodes being recovered by another node at the same time are skipped
        (``SKIP LOCKED``)."""
        deleted = adopted = 0
        while True:
            with self.engine.begin() as conn:
                dead = conn.execute(text(
                    f"SELECT node_id, name FROM cluster_nodes WHERE lease_until < {_NOW} AND node_id <> :me "
                    "ORDER BY lease_until LIMIT 1 FOR UPDATE SKIP LOCKED"), {"me": self.node_id}).first()
                if dead is None:
                    # intents of nodes that have no row (left one with a deletion unfinished, or a row
                    # deleted by hand): ours to finish, below
                    adopted = conn.execute(text(
                        "UPDATE cluster_deletions SET node_id = :me WHERE NOT EXISTS "
                        "(SELECT 1 FROM cluster_nodes n WHERE n.node_id = cluster_deletions.node_id)"),
                        {"me": self.node_id}).rowcount
                    break
                keys = [row[0] for row in conn.execute(text(
                    "DELETE FROM cluster_inflight WHERE node_id = :n RETURNING blob_key"), {"n": dead[0]})]
                # its deletion intents become ours (committed with the rest): if we die before they
                # are finished, whoever recovers us finishes them
                conn.execute(text("UPDATE cluster_deletions SET node_id = :me WHERE node_id = :n"),
                             {"me": self.node_id, "n": dead[0]})
                conn.execute(text("DELETE FROM cluster_nodes WHERE node_id = :n"), {"n": dead[0]})
            # committed: those ingests can no longer commit (their fence fails); their blobs can go.
            for key in keys:
                try:
                    self.delete_blob(key)
                    deleted += 1
                except Exception as exc:  # left as an orphan: `pacskit check --delete-orphans` finds it
                    log.error("node %s: cannot delete blob %s of dead node %s: %s", self.name, key, dead[1], exc)
            log.warning("node %s: recovered dead node %s (lease expired): %d in-flight records removed "
                        "(interrupted ingests, never acknowledged, and keys recorded ahead), their blobs deleted",
                        self.name, dead[1], len(keys))
            self.recovered_blobs += len(keys)
            if self.on_recovered is not None:
                self.on_recovered(dead[1], keys)
            self.finish_deletions(adopted_from=dead[1])
        if adopted:
            self.finish_deletions(adopted_from="(none: no node row)")
        return deleted

    def finish_deletions(self, *, adopted_from: str | None = None) -> int:
        """Finish the deletion intents recorded under our node id that no deletion of this process runs
        (``running`` of :attr:`inflight`): those taken over from dead nodes, or left by a previous
        run of ours. Each listed blob no index row refers to is deleted, then the intent. Returns
        how many blobs were deleted; a blob that cannot be deleted keeps its intent for a later try."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT intent, blob_key FROM cluster_deletions WHERE node_id = :me"),
                                {"me": self.node_id}).all()
        running = self.inflight.running_deletions()  # after the rows: a deletion is running before its rows exist
        intents: dict[str, list[str]] = {}
        for intent, key in rows:
            if intent not in running:
                intents.setdefault(intent, []).append(key)
        deleted = 0
        for intent, keys in intents.items():
            try:
                for key in keys:
                    with self.engine.connect() as conn:
                        referenced = conn.execute(
                            select(Instance.pk).where(Instance.blob_key == key).limit(1)).first() is not None
                    if not referenced:  # an overwrite or a new ingest may have reused it meanwhile
                        self.delete_blob(key)
                        deleted += 1
                with self.engine.begin() as conn:
                    conn.execute(text("DELETE FROM cluster_deletions WHERE node_id = :me AND intent = :i"),
                                 {"me": self.node_id, "i": intent})
            except Exception as exc:  # kept: finished at the next recovery round, or by whoever recovers us
                log.error("node %s: cannot finish deletion intent %s: %s", self.name, intent, exc)
        if intents:
            log.warning("node %s: finished %d interrupted deletions%s: %d blobs deleted", self.name, len(intents),
                        f" of dead node {adopted_from}" if adopted_from else "", deleted)
        return deleted

    def orphaned_inflight(self) -> int:
        """Remove in-flight records of nodes that have no row at all (a node row deleted by hand);
        their blobs are deleted as for a dead node. Returns how many."""
        with self.engine.begin() as conn:
            keys = [row[0] for row in conn.execute(text(
                "DELETE FROM cluster_inflight i WHERE NOT EXISTS "
                "(SELECT 1 FROM cluster_nodes n WHERE n.node_id = i.node_id) RETURNING blob_key"))]
        for key in keys:
            try:
                self.delete_blob(key)
            except Exception as exc:
                log.error("cannot delete blob %s of an unknown node: %s", key, exc)
        return len(keys)

    # thread -----------------------------------------------------------------------------------------

    def start(self) -> None:
        with self.engine.begin() as conn:
            self._register(conn)
        self.last_renewal = time.monotonic()
        self.recover_dead()
        self.finish_deletions()
        self._thread = threading.Thread(target=self._run, name=f"pacskit-cluster-{self.name}", daemon=True)
        self._thread.start()
        log.info("node %s (%s) joined the cluster; lease %.0f s", self.name, self.node_id, self.lease_seconds)

    def _run(self) -> None:
        period = self.lease_seconds / 3
        while not self._stop.wait(period):
            try:
                self.renew()
                self.recover_dead()
                self.finish_deletions()
            except Exception as exc:  # the database is away: try again next period; health says so
                log.error("node %s: cannot renew the lease or recover dead nodes: %s", self.name, exc)

    def stop(self) -> None:
        """Leave the cluster: stop renewing and remove our row (and records of ingests that never ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.finish_deletions()  # what is left (a deletion still running) is adopted, see recover_dead
            with self.engine.begin() as conn:
                keys = [row[0] for row in conn.execute(text(
                    "DELETE FROM cluster_inflight WHERE node_id = :n RETURNING blob_key"), {"n": self.node_id})]
                conn.execute(text("DELETE FROM cluster_nodes WHERE node_id = :n"), {"n": self.node_id})
            unused = self.inflight.unused()  # recorded ahead, never written: no blob to delete
            for key in keys:
                if key not in unused:
                    self.delete_blob(key)
        except Exception as exc:
            log.error("node %s: cannot leave the cluster cleanly (the others recover us when the lease ends): %s",
                      self.name, exc)
        self.inflight.close()

