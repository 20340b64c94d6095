"""The lean ingest lane on PostgreSQL: one round trip per instance of a known series (issues 17, 23).

The general path (:meth:`Index.record_instance` in :meth:`Index.run_write_shared`) costs a PostgreSQL
ingest about a dozen round trips: a pool checkout with its liveness ping, ``BEGIN``, the duplicate
check, two count updates, the insert, ``COMMIT``, and as many again for the data store's duplicate
pre-check and, in a cluster, the fence. Each is a wake-up of the server's backend and of our thread,
and on this kind of machine they were most of the index's CPU per instance.

This lane keeps one psycopg connection per ingest thread, in autocommit mode and out of the pool (no
checkout, no reset, no ping), and indexes an instance of a series the index has seen committed with
**one statement**, which PostgreSQL runs as a transaction of its own (commit included)::

    WITH f AS (DELETE FROM cluster_inflight WHERE blob_key = ... AND node_id = ... RETURNING 1),  -- a cluster
         st AS (UPDATE studies SET num_instances = num_instances + 1 WHERE pk = ... AND study_instance_uid = ... RETURNING 1),
         se AS (UPDATE series SET num_instances = num_instances + 1 WHERE pk = ... AND ... RETURNING 1),
         ins AS (INSERT INTO instances (...) VALUES (...) RETURNING pk)
    SELECT 1 / (SELECT count(*) FROM f), 1 / (SELECT count(*) FROM st), 1 / (SELECT count(*) FROM se),
           (SELECT pk FROM ins)

The checks the SQLite lane makes between its statements are made by the server: a row that is not
there (a stale cache entry, a fence another node took) makes a count zero and the statement fails with
``division by zero`` (SQLSTATE 22012); a duplicate instance fails the insert's unique key. Either
way the statement, and so its transaction, is undone whole, and the lane leaves the instance to the
general path (the duplicate policy, a moved series, ``LeaseLost``): the duplicate check is inside the
transaction, and the data store skips its own pre-check on PostgreSQL
(:attr:`Index.prechecks_duplicates`). psycopg prepares the statement server-side after its fifth run.
Rows are locked in the general path's order (the fence's row, the study's, the series', the new
instance's): the sub-statements run in the order the final ``SELECT`` reads them.

The first instance of a new **study** (a CR, DX or MG load: every instance) is one statement too,
one round trip with its commit: the rows :meth:`Index._create_on_cursor` writes, as CTEs that feed
each other their new row ids::

    WITH known AS (SELECT 1 FROM studies WHERE study_instance_uid = ...),
         f AS (DELETE FROM cluster_inflight WHERE ... AND NOT EXISTS (SELECT 1 FROM known)),  -- a cluster
         pf AS (SELECT pk FROM patients WHERE patient_id = ... AND issuer_of_patient_id = ...
                AND NOT EXISTS (SELECT 1 FROM known) ORDER BY pk LIMIT 1),                   -- a PatientID
         pu AS (UPDATE patients SET num_studies = num_studies + 1 WHERE pk = (SELECT pk FROM pf) RETURNING pk),
         g AS (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM known) AND NOT EXISTS (SELECT 1 FROM pf)),
         pn AS (INSERT INTO patients (...) SELECT ... FROM g RETURNING pk),
         pat AS (SELECT pk FROM pu UNION ALL SELECT pk FROM pn),
         st AS (INSERT INTO studies (patient_fk, ...) SELECT pat.pk, ... FROM pat RETURNING pk),
         se AS (INSERT INTO series (study_fk, ...) SELECT st.pk, ... FROM st RETURNING pk),
         rq0 AS (INSERT INTO series_requests (series_fk, ...) SELECT se.pk, ... FROM se ...),    -- per item
         ins AS (INSERT INTO instances (series_fk, ...) SELECT se.pk, ... FROM se RETURNING pk)
    SELECT CASE WHEN EXISTS (SELECT 1 FROM known) THEN NULL
                ELSE 1 / (SELECT count(*) FROM ins) + 1 / (SELECT count(*) FROM f) END,
           (SELECT pk FROM st), (SELECT pk FROM se), (SELECT pk FROM ins)

A study the index holds makes every part a no-op (the statement then changed nothing, and the
answer's first column is ``NULL``): the first instance of a new series of a known study runs
:meth:`Index._create_on_cursor` on the same kept connection between an explicit ``BEGIN`` and
``COMMIT`` (one statement per round trip, a handful of them, once per series), as does a new study
whose instance has more than eight request items (one statement text per count). Anything else that
would stop :meth:`Index._create_on_cursor` fails the statement whole, and the general path decides:
the instance or the series held already (their unique keys), the study created meanwhile by another
node (its unique key), a patient deleted meanwhile or a fence another node took (``division by
zero``). Before, a new study cost ten round trips: ``BEGIN``, the fence, the two existence checks,
the study's, the patient's lookup and insert, the study's and the series' inserts, the instance's,
``COMMIT``.

**Liveness without a ping.** Before each use the kept connection is checked without a round trip
(:func:`connection_is_dead`): a connection psycopg knows broken, or a socket with something to read
while the connection is idle (the server's goodbye after ``pg_terminate_backend``, a restart, an idle
timeout: PostgreSQL sends nothing unasked to a session that does not ``LISTEN``), is replaced. A
connection that dies between that check and the statement fails it: the lane retries once on a new
connection, then leaves the instance to the general path (which retries on a new pooled connection,
see :func:`pacskit.store.engine.make_engine`). A retry after a commit whose answer was lost finds the
instance inserted: its unique violation sends it to the general path, which recognises its own blob
key (:meth:`Index.record_instance`) and counts nothing twice.

Durability is the server's: ``synchronous_commit`` on (PostgreSQL's default) flushes the WAL before
the statement is answered, and the C-STORE is answered after that.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import select
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacskit.store.index.database import Index, Recorded, _Held, _SeriesRef
    from pacskit.store.index.extract import InstanceAttributes

log = logging.getLogger("pacskit.store")

#: request items (0040,0275) a new study's one statement holds at most (more take the transaction)
_NEW_STUDY_REQUESTS = 8

#: what a :class:`pacskit.store.datastore.SharedJournal`'s fence gives the lane: a ``DELETE`` that must
#: delete exactly one row, and its parameters (named ``fence_*``)
Fence = tuple[str, dict[str, Any]]


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
        self._index = index
        self._insert_sql = index._fast.insert_instance.sql
        self._statements: dict[str, str] = {}  # fence SQL ("": none) -> the known-series statement
        #: (fence SQL, a PatientID to look up, request items) -> the new-study statement
        self._new_study: dict[tuple[str, bool, int], str] = {}
        self._local = threading.local()  # .held: this thread's kept connection

    def _known_statement(self, fence_sql: str) -> str:
        sql = self._statements.get(fence_sql)
        if sql is None:
            from pacskit.store.index.models import Series, Study

            study, series = Study.__tablename__, Series.__tablename__
            sql = (
                "WITH " + (f"f AS ({fence_sql} RETURNING 1), " if fence_sql else "")
                + f"st AS (UPDATE {study} SET num_instances = num_instances + 1 "
                "WHERE pk = %(lane_study)s AND study_instance_uid = %(lane_study_uid)s RETURNING 1), "
                f"se AS (UPDATE {series} SET num_instances = num_instances + 1 WHERE pk = %(lane_series)s "
                "AND series_instance_uid = %(lane_series_uid)s AND study_fk = %(lane_study)s RETURNING 1), "
                f"ins AS ({self._insert_sql}) "
                "SELECT " + ("1 / (SELECT count(*) FROM f), " if fence_sql else "")
                + "1 / (SELECT count(*) FROM st), 1 / (SELECT count(*) FROM se), (SELECT pk FROM ins)")
            self._statements[fence_sql] = sql
        return sql

    def _new_study_statement(self, fence_sql: str, lookup_patient: bool, requests: int) -> str:
        """The new-study statement of the module doc, compiled once per shape."""
        shape = (fence_sql, lookup_patient, requests)
        sql = self._new_study.get(shape)
        if sql is not None:
            return sql
        from pacskit.store.index.models import Patient, Study

        fast = self._index._fast
        parts = [f"known AS (SELECT 1 FROM {Study.__tablename__} WHERE study_instance_uid = "
                 "%(st_study_instance_uid)s::VARCHAR)"]
        if fence_sql:
            parts.append(f"f AS ({fence_sql} AND NOT EXISTS (SELECT 1 FROM known) RETURNING 1)")
        patients = Patient.__tablename__
        if lookup_patient:
            parts += [f"pf AS (SELECT pk FROM {patients} WHERE patient_id = %(pa_patient_id)s::VARCHAR "
                      "AND issuer_of_patient_id = %(pa_issuer_of_patient_id)s::VARCHAR "
                      "AND NOT EXISTS (SELECT 1 FROM known) ORDER BY pk LIMIT 1)",
                      f"pu AS (UPDATE {patients} SET num_studies = num_studies + 1 "
                      "WHERE pk = (SELECT pk FROM pf) RETURNING pk)",
                      "g AS (SELECT 1 AS pk WHERE NOT EXISTS (SELECT 1 FROM known) AND NOT EXISTS (SELECT 1 FROM pf))"]
        else:
            parts.append("g AS (SELECT 1 AS pk WHERE NOT EXISTS (SELECT 1 FROM known))")
        parts += [f"pn AS ({_insert_from(fast.insert_patient.sql, None, 'g', 'pa_')})",
                  "pat AS (" + ("SELECT pk FROM pu UNION ALL " if lookup_patient else "") + "SELECT pk FROM pn)",
                  f"st AS ({_insert_from(fast.insert_study.sql, 'patient_fk', 'pat', 'st_')})",
                  f"se AS ({_insert_from(fast.insert_series.sql, 'study_fk', 'st', 'se_')})"]
        parts += [f"rq{i} AS ({_insert_from(fast.insert_request.sql, 'series_fk', 'se', f'rq{i}_')})"
                  for i in range(requests)]
        parts.append(f"ins AS ({_insert_from(self._insert_sql, 'series_fk', 'se', '')})")
        sql = ("WITH " + ", ".join(parts) + " SELECT CASE WHEN EXISTS (SELECT 1 FROM known) THEN NULL "
               "ELSE 1 / (SELECT count(*) FROM ins)" + (" + 1 / (SELECT count(*) FROM f)" if fence_sql else "")
               + " END, (SELECT pk FROM st), (SELECT pk FROM se), (SELECT pk FROM ins)")
        self._new_study[shape] = sql
        return sql

    def _connection(self) -> Any:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and connection_is_dead(held.raw):
            self._drop()
            held = None
        if held is None:
            held = self._index._detached()
            raw = held.raw
            raw.autocommit = True  # a statement is its own transaction; BEGIN where there are several
            raw.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self._local.held = held
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
            try:
                raw = self._connection()
            except Exception as exc:  # the server is away: the general path, with its retries, says so
                log.debug("lean lane cannot connect, %s goes the general way: %s", a.sop_instance_uid, exc)
                return None
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
                elif raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    try:  # a new series' transaction
                        raw.execute("ROLLBACK")
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
        """The statement of the module doc (raises a psycopg error, nothing kept, on any miss)."""
        from pacskit.store.index.database import IngestStatus, Recorded, _instance_values, _warn_other_patient

        params = {"series_fk": ref.series_pk, **_instance_values(
            a, blob_key=blob_key, size=size, sha256=sha256,
            received_at=received_at.astimezone(dt.UTC).replace(tzinfo=None),  # as UTCDateTime stores it
            source_ae=source_ae),
            "lane_study": ref.study_pk, "lane_study_uid": ref.study_uid,
            "lane_series": ref.series_pk, "lane_series_uid": ref.series_uid}
        if fence is not None:
            params.update(fence[1])
        cursor = raw.cursor()
        try:
            cursor.execute(self._known_statement(fence[0] if fence is not None else ""), params)
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None or row[-1] is None:  # never: the statement returns one row, with the new pk
            raise AssertionError(f"no row id for {a.sop_instance_uid}")
        if a.patient_id is not None and ref.patient != (a.patient_id, a.issuer_of_patient_id or ""):
            _warn_other_patient(a, ref.patient[0])  # once stored (a fallback warns on the general path)
        return Recorded(IngestStatus.STORED, int(row[-1]), blob_key, sha256)

    def _append_new_study(
        self, raw: Any, a: InstanceAttributes, fence: Fence | None, *, blob_key: str, size: int, sha256: str,
        received_at: dt.datetime, source_ae: str | None,
    ) -> Recorded | None:
        """The new-study statement of the module doc; ``None`` with nothing changed when the index
        holds the study (raises a psycopg error, nothing kept, on any other miss)."""
        from pacskit.store.index.database import (
            IngestStatus,
            Recorded,
            _instance_values,
            _modalities_in_study,
            _patient_values,
            _SeriesRef,
            _series_values,
            _study_values,
        )

        patient = _patient_values(a)
        params: dict[str, Any] = {f"pa_{k}": v for k, v in patient.items()}
        params["pa_num_studies"] = 1
        params.update({f"st_{k}": v for k, v in _study_values(a).items()})
        params.update(st_num_series=1, st_num_instances=1, st_modalities_in_study=_modalities_in_study([a.modality]))
        params.update({f"se_{k}": v for k, v in _series_values(a).items()})
        params["se_num_instances"] = 1
        for i, (accession, requested, step) in enumerate(a.request_attributes):
            params.update({f"rq{i}_accession_number": accession, f"rq{i}_requested_procedure_id": requested,
                           f"rq{i}_scheduled_procedure_step_id": step})
        params.update(_instance_values(
            a, blob_key=blob_key, size=size, sha256=sha256,
            received_at=received_at.astimezone(dt.UTC).replace(tzinfo=None),  # as UTCDateTime stores it
            source_ae=source_ae))
        if fence is not None:
            params.update(fence[1])
        sql = self._new_study_statement(fence[0] if fence is not None else "", a.patient_id is not None,
                                        len(a.request_attributes))
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None or row[0] is None:  # the study is known: nothing was changed
            return None
        self._index._learn([_SeriesRef(int(row[2]), a.series_instance_uid, int(row[1]), a.study_instance_uid,
                                       (a.patient_id, patient["issuer_of_patient_id"]))])
        return Recorded(IngestStatus.STORED, int(row[3]), blob_key, sha256)

    def _append_new(
        self, raw: Any, a: InstanceAttributes, fence: Fence | None, **values: Any
    ) -> Recorded | None:
        """The first instance of a series: of a new study, :meth:`_append_new_study`; else
        :meth:`Index._create_on_cursor` in a transaction on ``raw``."""
        if (len(a.request_attributes) <= _NEW_STUDY_REQUESTS  # one statement text per count: a few
                and (fence is None or fence[0].startswith("DELETE ") and " WHERE " in fence[0])):  # the guard fits
            rec = self._append_new_study(raw, a, fence, **values)
            if rec is not None:
                return rec
        index = self._index
        created: list[_SeriesRef] = []
        cursor = raw.cursor()
        try:
            cursor.execute("BEGIN")
            if fence is not None:
                cursor.execute(f"WITH f AS ({fence[0]} RETURNING 1) SELECT 1 / count(*) FROM f", fence[1])
            rec = index._create_on_cursor(cursor, a, created, **values)
            cursor.execute("COMMIT" if rec is not None else "ROLLBACK")
        finally:
            cursor.close()
        if rec is not None:
            index._learn(created)  # only now: the commit made the series true
        return rec

    def close(self) -> None:
        """Forget this thread's connection (every thread's are closed by :meth:`Index.close`)."""
        self._local = threading.local()


def _insert_from(sql: str, fk: str | None, source: str, prefix: str) -> str:
    """The compiled ``INSERT INTO t (...) VALUES (...) RETURNING t.pk`` of the fast path as ``INSERT
    INTO t (...) SELECT ... FROM source RETURNING t.pk``: the parameter ``fk`` (its cast included)
    becomes ``source.pk``, the others are renamed ``prefix`` + name (one statement holds several)."""
    head, sep, rest = sql.partition(" VALUES (")
    values, sep2, returning = rest.rpartition(") RETURNING ")
    if not sep or not sep2:
        raise AssertionError(f"not an INSERT ... VALUES ... RETURNING: {sql}")
    if fk is not None:
        values, n = re.subn(rf"%\({fk}\)s(::[A-Z ]+)?", f"{source}.pk", values)
        if n != 1:
            raise AssertionError(f"{fk} not once in {sql}")
    values = re.sub(r"%\((\w+)\)s", lambda m: f"%({prefix}{m.group(1)})s", values)
    return f"{head} SELECT {values} FROM {source} RETURNING {returning}"
