"""The lean ingest lane on PostgreSQL: one round trip per instance of a known series (issue 17, 23).

The general path (:meth:`Index.record_instance` in :meth:`Index.run_write_shared`) costs a PostgreSQL
ingest about a dozen round trips: a pool checkout with its liveness ping, ``BEGIN``, the duplicate
check, two count updates, the insert, ``COMMIT``, and as many again for the data store's duplicate
pre-check and, in a cluster, the fence. Each is a wake-up of the server's backend and of our thread,
and on this kind of machine they were most of the index's CPU per instance.

This lane keeps one psycopg connection per ingest thread (out of the pool, so no checkout, no reset,
no ping) and sends an instance of a series the index has seen committed as one **pipeline**: ``BEGIN``,
the fence (a cluster), the study's and the series' count updates, the insert, ``COMMIT`` — one flush of
the socket, one answer. Statements that must change exactly one row are *guarded*::

    WITH g AS (UPDATE ... RETURNING 1) SELECT 1 / count(*) FROM g

so a row that is not there (a stale cache entry, a fence another node took) raises ``division by
zero`` (SQLSTATE 22012) in the server, and a duplicate instance raises a unique violation: either
aborts the transaction before its ``COMMIT``, which the server then skips (pipeline mode), and nothing
of it holds. The client's checks that the SQLite lane makes between statements are made by the
server, so the commit can travel with the statements. On any such error the lane rolls back and the
general path decides (the duplicate policy, a moved series, ``LeaseLost``): the duplicate check is
inside the transaction, and the data store skips its own pre-check on PostgreSQL
(:attr:`Index.prechecks_duplicates`).

The first instance of a new series runs :meth:`Index._create_on_cursor` on the same kept connection
(one statement per round trip, a handful of them, once per series).

**Liveness without a ping.** Before each use the kept connection is checked without a round trip: a
connection psycopg knows broken, or a socket with something to read while the connection is idle
(the server's goodbye after ``pg_terminate_backend``, a restart, an idle timeout: PostgreSQL sends
nothing unasked to a session that does not ``LISTEN``), is replaced. A connection that dies between
that check and the statements fails them: the lane retries once on a new connection, then leaves the
instance to the general path (which retries on a new pooled connection, see
:func:`pacskit.store.engine.make_engine`). A retry after a ``COMMIT`` whose answer was lost finds the
instance inserted: its unique violation sends it to the general path, which recognises its own blob
key (:meth:`Index.record_instance`) and counts nothing twice.

Durability is the server's: ``synchronous_commit`` on (PostgreSQL's default) flushes the WAL before
``COMMIT`` is answered, and the C-STORE is answered after that.
"""

from __future__ import annotations

import datetime as dt
import logging
import select
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacskit.store.index.database import Index, Recorded, _Held, _Prepared, _SeriesRef
    from pacskit.store.index.extract import InstanceAttributes

log = logging.getLogger("pacskit.store")

#: makes a statement that must change exactly one row fail in the server when it changes none
GUARD = "WITH g AS ({sql} RETURNING 1) SELECT 1 / count(*) FROM g"

#: what a :class:`pacskit.store.datastore.SharedJournal`'s fence gives the lane: SQL and its parameters
Fence = tuple[str, tuple[Any, ...]]


def connection_is_dead(raw: Any) -> bool:
    """True when the idle psycopg connection ``raw`` is known dead, found without a round trip.

    PostgreSQL sends nothing unasked to an idle session that does not ``LISTEN``: a readable socket
    means the server said goodbye (``pg_terminate_backend``, a shutdown, ``idle_session_timeout``) or
    the peer closed it. A connection lost silently (no FIN) is found on use instead."""
    if raw.closed or raw.broken:
        return True
    try:
        readable, _, _ = select.select([raw.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class PgLane:
    """The lane of one :class:`Index` on PostgreSQL (see the module doc); used by
    :meth:`Index.append_instance`. Thread-safe: each thread uses a connection of its own."""

    def __init__(self, index: Index) -> None:
        from pacskit.store.index.database import _Prepared

        self._index = index
        fast = index._fast
        self._count_in_study = self._guarded(fast.count_in_study, _Prepared)
        self._count_in_series = self._guarded(fast.count_in_series, _Prepared)
        self._insert = fast.insert_instance
        self._local = threading.local()  # .held: this thread's kept connection

    @staticmethod
    def _guarded(p: _Prepared, cls: type[_Prepared]) -> _Prepared:
        guarded = cls.__new__(cls)
        guarded.sql, guarded.names, guarded.defaults = GUARD.format(sql=p.sql), p.names, p.defaults
        guarded.returning = False
        return guarded

    def _connection(self) -> Any:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and connection_is_dead(held.raw):
            self._drop()
            held = None
        if held is None:
            held = self._local.held = self._index._detached()
        return held.raw

    def _drop(self) -> None:
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            try:
                held.raw.close()
            except Exception:  # broken already
                log.debug("lean lane connection not closed", exc_info=True)

    def append(
        self, ref: _SeriesRef | None, a: InstanceAttributes, fence: Fence | None, **values: Any
    ) -> Recorded | None:
        """Index ``a`` in a transaction of its own (``ref``: its series' committed rows; ``None``: the
        first instance of a series); ``None`` with nothing kept when the general path must decide."""
        import psycopg

        for attempt in (1, 2):
            raw = self._connection()
            try:
                if ref is not None:
                    return self._append_known(raw, ref, a, fence, **values)
                return self._append_new(raw, a, fence, **values)
            except psycopg.Error as exc:
                if ref is not None and isinstance(exc, psycopg.errors.DivisionByZero):
                    self._index._forget(ref.series_uid)  # a guard failed: maybe a stale entry, relearnt there
                lost = raw.closed or raw.broken
                if lost:
                    self._drop()
                else:
                    try:
                        raw.rollback()
                    except psycopg.Error:
                        self._drop()
                if lost and attempt == 1:
                    log.debug("lean lane connection lost, retrying %s on a new one: %s", a.sop_instance_uid, exc)
                    continue
                log.debug("lean append of %s fell back to the general path: %s", a.sop_instance_uid, exc)
                return None
        return None

    def _append_known(
        self, raw: Any, ref: _SeriesRef, a: InstanceAttributes, fence: Fence | None, *, blob_key: str,
        size: int, sha256: str, received_at: dt.datetime, source_ae: str | None,
    ) -> Recorded:
        """The pipeline of the module doc (raises a psycopg error, transaction aborted, on any miss)."""
        from pacskit.store.index.database import IngestStatus, Recorded, _instance_values, _warn_other_patient

        if a.patient_id is not None and ref.patient != (a.patient_id, a.issuer_of_patient_id or ""):
            _warn_other_patient(a, ref.patient[0])
        row = {"series_fk": ref.series_pk, **_instance_values(
            a, blob_key=blob_key, size=size, sha256=sha256,
            received_at=received_at.astimezone(dt.UTC).replace(tzinfo=None),  # as UTCDateTime stores it
            source_ae=source_ae)}
        checks, insert = raw.cursor(), raw.cursor()
        try:
            with raw.pipeline():
                if fence is not None:
                    checks.execute(GUARD.format(sql=fence[0]), fence[1])
                checks.execute(self._count_in_study.sql, self._count_in_study._args(
                    {"row": ref.study_pk, "uid": ref.study_uid, "delta": 1}))
                checks.execute(self._count_in_series.sql, self._count_in_series._args(
                    {"row": ref.series_pk, "uid": ref.series_uid, "study": ref.study_pk}))
                insert.execute(self._insert.sql, self._insert._args(row))
                checks.execute("COMMIT")  # skipped by the server if anything above failed
                # (psycopg: the block's end sends it all, waits for every answer, raises the first error)
            pk = insert.fetchone()
        finally:
            checks.close()
            insert.close()
        if pk is None:  # the insert's row, read after the COMMIT's answer (never empty: it returned)
            raise AssertionError(f"no row id for {a.sop_instance_uid}")
        return Recorded(IngestStatus.STORED, int(pk[0]), blob_key, sha256)

    def _append_new(
        self, raw: Any, a: InstanceAttributes, fence: Fence | None, **values: Any
    ) -> Recorded | None:
        """The first instance of a series: :meth:`Index._create_on_cursor` in a transaction on ``raw``."""
        index = self._index
        created: list[_SeriesRef] = []
        cursor = raw.cursor()
        try:
            if fence is not None:
                cursor.execute(GUARD.format(sql=fence[0]), fence[1])
            rec = index._create_on_cursor(cursor, a, created, **values)
        finally:
            cursor.close()
        if rec is None:
            raw.rollback()
            return None
        raw.commit()
        index._learn(created)  # only now: the commit made the series true
        return rec

    def close(self) -> None:
        """Forget this thread's connection (every thread's are closed by :meth:`Index.close`)."""
        self._local = threading.local()
