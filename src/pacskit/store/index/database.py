"""The database index: schema migrations, sessions, and the transactional steps of the data store.

:class:`Index` owns the engine. Every public method opens its own session, so one ``Index`` is shared
by all threads. Write transactions go through :meth:`Index.run_write`, which serialises them on SQLite
(one writer at a time anyway; the lock avoids busy-waiting) and retries the whole transaction on the
errors that concurrency produces on PostgreSQL and MariaDB (a unique key inserted by a concurrent
transaction, a deadlock, a lock wait timeout).

Locking, so that the derived values (counts, ModalitiesInStudy) stay exact under concurrent ingests:
every transaction that adds or removes an instance first locks the instance row (if any), then its
study row (``SELECT ... FOR UPDATE``), and only then reads or changes series, counts and modalities.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, inspect, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from pacskit.store.engine import WRITE_OPTION, backend_name, make_engine
from pacskit.store.index.extract import InstanceAttributes, InvalidInstance
from pacskit.store.index.models import (
    MODALITIES,
    Instance,
    Patient,
    Series,
    SeriesRequest,
    Study,
    normalise_person_name,
)

if TYPE_CHECKING:
    from pacskit.store.index.pglane import PgLane

log = logging.getLogger("pacskit.store")

T = TypeVar("T")

DuplicatePolicy = Literal["reject", "keep-first", "overwrite"]
DUPLICATE_POLICIES: tuple[str, ...] = ("reject", "keep-first", "overwrite")
MIGRATIONS_PACKAGE = "pacskit.store.migrations"
VERSION_TABLE = "pacskit_store_version"
_MIGRATION_LOCK_ID = 0x7061_6373_6B69_74  # "packit": pg_advisory_xact_lock key
_MIGRATION_LOCK_NAME = "pacskit_store_migrate"


class IngestStatus(str, Enum):
    """What :meth:`pacskit.store.DataStore.ingest` did with an instance."""

    STORED = "stored"  # new instance
    DUPLICATE_IGNORED = "duplicate-ignored"  # keep-first: the stored copy is kept, the new one dropped
    DUPLICATE_REJECTED = "duplicate-rejected"  # reject: refused (C-STORE status 0x0111)
    OVERWRITTEN = "overwritten"  # overwrite: the stored copy was replaced


@dataclass(frozen=True, slots=True)
class Recorded:
    """Outcome of :meth:`Index.record_instance` (inside the transaction)."""

    status: IngestStatus
    instance_id: int
    blob_key: str  # the blob the row refers to once committed (the stored copy for duplicates)
    sha256: str  # that blob's SHA-256
    replaced_blob_key: str | None = None  # overwrite: delete this blob once committed


@dataclass(frozen=True, slots=True)
class _SeriesRef:
    """What the ingest fast path needs to know of a series it has seen committed."""

    series_pk: int
    series_uid: str
    study_pk: int
    study_uid: str
    patient: tuple[str | None, str]  # (PatientID, issuer) of the study's patient


class _Prepared:
    """One statement compiled once for a dialect and run on the DBAPI cursor.

    The ingest fast path runs a handful of tiny statements per instance; SQLAlchemy's per-execution
    machinery (events, execution contexts, result objects) costs several times what SQLite itself
    spends on them. Compiling once per dialect keeps SQLAlchemy as the author of the SQL (paramstyle,
    quoting, ``RETURNING`` on PostgreSQL) while the hot path only formats parameters.
    """

    __slots__ = ("sql", "names", "defaults", "returning")

    def __init__(self, stmt: Any, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        self.names: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        # values of the statement's own literals (``num_instances + 1``): anonymous bind parameters
        self.defaults = {name: bind.value for bind, name in compiled.bind_names.items()
                         if not bind.required and bind.value is not None}
        self.returning = bool(getattr(compiled, "returning", None))

    def _args(self, values: dict[str, Any]) -> Any:
        if self.defaults:
            values = {**self.defaults, **values}
        return tuple(values[n] for n in self.names) if self.names is not None else values

    def first(self, cursor: Any, values: dict[str, Any]) -> Any:
        cursor.execute(self.sql, self._args(values))
        return cursor.fetchone()

    def all(self, cursor: Any, values: dict[str, Any]) -> list[Any]:
        cursor.execute(self.sql, self._args(values))
        return list(cursor.fetchall())

    def rowcount(self, cursor: Any, values: dict[str, Any]) -> int:
        cursor.execute(self.sql, self._args(values))
        return int(cursor.rowcount)

    def insert(self, cursor: Any, values: dict[str, Any]) -> int:
        cursor.execute(self.sql, self._args(values))
        return int(cursor.fetchone()[0] if self.returning else cursor.lastrowid)


_INSTANCE_VALUES = ("sop_instance_uid", "sop_class_uid", "instance_number", "acquisition_datetime",
                    "acquisition_datetime_key", "transfer_syntax_uid", "specific_character_set",
                    "size", "sha256", "blob_key", "received_at", "source_ae")


def _instance_values(
    a: InstanceAttributes, *, blob_key: str, size: int, sha256: str, received_at: dt.datetime,
    source_ae: str | None,
) -> dict[str, Any]:
    """The columns of an instance row that ingest writes (all but ``series_fk``), keyed as
    :data:`_INSTANCE_VALUES`: one list for the general path, the fast path and an overwrite."""
    return {
        "sop_instance_uid": a.sop_instance_uid,
        "sop_class_uid": a.sop_class_uid,
        "instance_number": a.instance_number,
        "acquisition_datetime": a.acquisition_datetime,
        "acquisition_datetime_key": a.acquisition_datetime_key,
        "transfer_syntax_uid": a.transfer_syntax_uid,
        "specific_character_set": a.specific_character_set,
        "size": size,
        "sha256": sha256,
        "blob_key": blob_key,
        "received_at": received_at,
        "source_ae": source_ae,
    }


_PATIENT_COLUMNS = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_name_search",
                    "patient_birth_date", "patient_sex", "num_studies")
_STUDY_COLUMNS = ("patient_fk", "study_instance_uid", "study_date", "study_time", "accession_number", "study_id",
                  "referring_physician_name", "referring_physician_name_search", "study_description",
                  "modalities_in_study", "num_series", "num_instances")
_SERIES_COLUMNS = ("study_fk", "series_instance_uid", "series_number", "modality", "series_description",
                   "body_part_examined", "num_instances")


def _patient_values(a: InstanceAttributes) -> dict[str, Any]:
    """The columns of a new patient row (``num_studies`` apart): one list for both ingest paths."""
    return {
        "patient_id": a.patient_id,
        "issuer_of_patient_id": a.issuer_of_patient_id or "",
        "patient_name": a.patient_name,
        "patient_name_search": normalise_person_name(a.patient_name),
        "patient_birth_date": a.patient_birth_date,
        "patient_sex": a.patient_sex,
    }


def _study_values(a: InstanceAttributes) -> dict[str, Any]:
    """The columns of a new study row taken from the instance (not its keys, counts, modalities)."""
    return {
        "study_instance_uid": a.study_instance_uid,
        "study_date": a.study_date,
        "study_time": a.study_time,
        "accession_number": a.accession_number,
        "study_id": a.study_id,
        "referring_physician_name": a.referring_physician_name,
        "referring_physician_name_search": normalise_person_name(a.referring_physician_name),
        "study_description": a.study_description,
    }


def _series_values(a: InstanceAttributes) -> dict[str, Any]:
    """The columns of a new series row taken from the instance (not its study, nor its count)."""
    return {
        "series_instance_uid": a.series_instance_uid,
        "series_number": a.series_number,
        "modality": a.modality,
        "series_description": a.series_description,
        "body_part_examined": a.body_part_examined,
    }


def _modalities_in_study(modalities: Iterable[str | None]) -> str | None:
    """ModalitiesInStudy from the distinct modalities of a study's series: sorted, joined with '\\',
    as many as fit the column."""
    value = ""
    for modality in sorted({m for m in modalities if m}):
        joined = f"{value}\\{modality}" if value else modality
        if len(joined) > MODALITIES:
            break
        value = joined
    return value or None


class _Held:
    """A DBAPI connection of the lean lane (weakly referenced by its :class:`Index`)."""

    __slots__ = ("raw", "__weakref__")

    def __init__(self, raw: Any) -> None:
        self.raw = raw


class _FastPathStatements:
    """The ingest fast path's statements, compiled for one dialect."""

    def __init__(self, dialect: Any) -> None:
        # the Core tables (typed Any: mypy sees a mapped class's __table__ as a FromClause)
        inst: Any = Instance.__table__
        study: Any = Study.__table__
        series: Any = Series.__table__
        patient: Any = Patient.__table__
        request: Any = SeriesRequest.__table__
        self.instance_exists = _Prepared(
            select(inst.c.pk).where(inst.c.sop_instance_uid == bindparam("uid")).with_for_update(), dialect)
        self.count_in_study = _Prepared(
            update(study)
            .where(study.c.pk == bindparam("row"), study.c.study_instance_uid == bindparam("uid"))
            .values(num_instances=study.c.num_instances + bindparam("delta")), dialect)
        self.count_in_series = _Prepared(
            update(series)
            .where(series.c.pk == bindparam("row"), series.c.series_instance_uid == bindparam("uid"),
                   series.c.study_fk == bindparam("study"))
            .values(num_instances=series.c.num_instances + 1), dialect)
        columns = ("series_fk", *_INSTANCE_VALUES)
        insert_stmt = insert(inst).values({c: bindparam(c) for c in columns})
        if dialect.name == "postgresql":
            insert_stmt = insert_stmt.returning(inst.c.pk)
        self.insert_instance = _Prepared(insert_stmt, dialect)
        self.find_instance = _Prepared(
            select(inst.c.pk, inst.c.blob_key, inst.c.sha256).where(inst.c.sop_instance_uid == bindparam("uid")),
            dialect)
        # the first instance of a new series (and of a new study, a new patient): Index._create_on_cursor
        self.series_exists = _Prepared(
            select(series.c.pk).where(series.c.series_instance_uid == bindparam("uid")), dialect)
        self.study_with_patient = _Prepared(
            select(study.c.pk, patient.c.patient_id, patient.c.issuer_of_patient_id)
            .join(patient, patient.c.pk == study.c.patient_fk)
            .where(study.c.study_instance_uid == bindparam("uid")), dialect)
        self.find_patient = _Prepared(
            select(patient.c.pk).where(patient.c.patient_id == bindparam("pid"),
                                       patient.c.issuer_of_patient_id == bindparam("issuer")), dialect)
        self.add_study_to_patient = _Prepared(
            update(patient).where(patient.c.pk == bindparam("row"))
            .values(num_studies=patient.c.num_studies + 1), dialect)
        self.add_series_to_study = _Prepared(
            update(study).where(study.c.pk == bindparam("row"))
            .values(num_series=study.c.num_series + 1, num_instances=study.c.num_instances + 1), dialect)
        self.study_modalities = _Prepared(
            select(series.c.modality).where(series.c.study_fk == bindparam("study"),
                                            series.c.modality.is_not(None)).distinct(), dialect)
        self.set_modalities = _Prepared(
            update(study).where(study.c.pk == bindparam("row"))
            .values(modalities_in_study=bindparam("value")), dialect)

        def inserting(table: Any, columns: tuple[str, ...]) -> _Prepared:
            stmt = insert(table).values({c: bindparam(c) for c in columns})
            if dialect.name == "postgresql":
                stmt = stmt.returning(table.c.pk)
            return _Prepared(stmt, dialect)

        self.insert_patient = inserting(patient, _PATIENT_COLUMNS)
        self.insert_study = inserting(study, _STUDY_COLUMNS)
        self.insert_series = inserting(series, _SERIES_COLUMNS)
        self.insert_request = inserting(request, ("series_fk", "accession_number", "requested_procedure_id",
                                                  "scheduled_procedure_step_id"))


_SERIES_CACHE_SIZE = 4096
_CACHE_KEY = "pacskit_series_refs"  # Session.info: refs learnt by this transaction, kept once committed


@dataclass(frozen=True, slots=True)
class Counts:
    patients: int
    studies: int
    series: int
    instances: int


def alembic_config(connection: Any = None) -> Any:
    """An alembic ``Config`` built in code (no alembic.ini): migrations from the installed package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files(MIGRATIONS_PACKAGE)))
    cfg.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _is_retryable(exc: BaseException) -> bool:
    """Errors after which running the same transaction again may succeed."""
    if isinstance(exc, IntegrityError):
        return True  # a concurrent transaction inserted the same patient/study/series/instance
    if isinstance(exc, OperationalError):
        return True  # deadlock, lock wait timeout, serialization failure, database locked, conn lost
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """alembic logs at INFO what it sets up and runs; show it only when pacskit.store logs DEBUG."""
    alembic_log = logging.getLogger("alembic")
    quiet = alembic_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG)
    if quiet:
        alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        if quiet:
            alembic_log.setLevel(logging.NOTSET)


@contextmanager
def _sqlite_foreign_keys_off(conn: Connection, backend: str) -> Iterator[None]:
    """SQLite alters a column by rebuilding its table (alembic's batch mode: copy, drop, rename); with
    foreign keys enforced, dropping a table that other rows reference fails, so an archive with data
    could not be upgraded. SQLite's own procedure (ALTER TABLE, "making other kinds of table schema
    changes") turns enforcement off around the transaction (the pragma is a no-op inside one) and
    checks the references before commit (``PRAGMA foreign_key_check`` in :meth:`Index.migrate`)."""
    if backend != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")



#: next to a SQLite index file: the lock its writers queue on (see :class:`_WriterLock`)
WRITER_LOCK_SUFFIX = "-writer.lock"


class _WriterLock:
    """The write lock of a SQLite index file, shared by every process that writes it through an
    :class:`Index` (``serve --workers N``, a command run beside a server).

    SQLite lets one writer in at a time; a process that finds the file locked by another sleeps in
    its busy handler (1, 2, 5, 10, ... ms) and tries again, so two worker processes of a server
    queued on each other's sub-millisecond ingest transactions with sleeps several times as long
    (measured: ~0.6 sleeps per instance at 8 associations over 2 workers). Here a writer first takes
    this process's thread lock, then an exclusive ``flock`` of ``<index>-writer.lock``, which the
    kernel hands to the next waiting process the moment it is released: no sleep, no retry. Held
    across ``BEGIN IMMEDIATE`` ... ``COMMIT``, so SQLite's own lock is then always free. Writers that
    do not take it (another program, an older version) still only meet SQLite's busy handler."""

    def __init__(self, path: str) -> None:
        self._thread_lock = threading.Lock()
        self._path = path
        self._fd: int | None = None
        self._closed = False

    def _file(self) -> int | None:
        if self._fd is None and not self._closed:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:  # e.g. a read-only folder: SQLite's busy handler alone then
                log.debug("no writer lock file %s: %s", self._path, exc)
                self._closed = True
        return self._fd

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fd = self._file()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def locked(self) -> bool:
        """A thread of this process holds it now (a glance: it may be taken or released the moment after)."""
        return self._thread_lock.locked()

    def close(self) -> None:
        with self._thread_lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Index:
    """The index database. ``Index.open(url)`` or ``Index(engine)``; call :meth:`migrate` once."""

    def __init__(self, engine: Engine, *, write_attempts: int = 8, group_commit: bool | None = None) -> None:
        self.engine = engine
        self.backend = backend_name(engine.url)
        self.write_attempts = write_attempts
        # Series the ingest fast path may append to without the ORM (see record_instance). Entries
        # are added only after their transaction committed, and every use re-checks the UIDs in SQL,
        # so a stale entry (a series deleted by another process, a reused row id) costs the slow
        # path, never a wrong row.
        self._fast = _FastPathStatements(engine.dialect)
        self._series_refs: dict[str, _SeriesRef] = {}
        self._refs_lock = threading.Lock()
        # Group commit: concurrent ingests share one transaction (one WAL fsync) instead of queueing
        # for the write lock one commit at a time. On by default where writes are serialised anyway.
        self._group = _GroupCommit(self) if (group_commit if group_commit is not None
                                             else self.backend == "sqlite") else None
        if self.backend == "sqlite":
            write_engine = engine.execution_options(**{WRITE_OPTION: True})
            database = engine.url.database
            self._write_lock: Any = (_WriterLock(database + WRITER_LOCK_SUFFIX)
                                     if database not in (None, "", ":memory:") else threading.Lock())
        else:
            write_engine = engine
            self._write_lock = nullcontext()
        self._read_sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(bind=write_engine, expire_on_commit=False)
        self._durable_commits: bool | None = None  # known after the first look (durable_commits)
        # The lean lane of append_instance and find_instance (SQLite files only): DBAPI connections
        # kept out of the pool, one for writes (used under _write_lock) and one per reading thread.
        self._lean = self.backend == "sqlite" and engine.url.database not in (None, "", ":memory:")
        self._lean_writer: _Held | None = None
        self._lean_readers = threading.local()  # .held: this thread's; gone with the thread
        self._lean_connections: weakref.WeakSet[_Held] = weakref.WeakSet()  # closed by close()
        self._lean_lock = threading.Lock()
        # PostgreSQL's lean lane (pglane.py): a kept connection per ingest thread, a pipeline per instance
        self._pg_lane: PgLane | None = None
        if self.backend == "postgresql" and engine.dialect.driver == "psycopg":  # (psycopg 3's API)
            from pacskit.store.index.pglane import PgLane

            self._pg_lane = PgLane(self)

    @property
    def prechecks_duplicates(self) -> bool:
        """Whether the data store asks :meth:`find_instance` before it writes a blob (a duplicate is
        then answered without writing it). Not on PostgreSQL: the lean lane's transaction finds a
        duplicate itself (its insert fails, the general path applies the policy and the data store
        deletes the new blob), and a look-up first would be a round trip more per instance to spare
        a rare duplicate's blob write."""
        return self._pg_lane is None

    def writer_busy(self) -> bool:
        """Whether another thread of this process holds the write lock now (a long write, e.g. a
        deletion or a reindex, may be running): a caller on an event loop then writes from a thread
        rather than wait on the loop. Always false where writes are not serialised (PostgreSQL,
        MariaDB). A glance, not a reservation: the lock may be taken the moment after."""
        locked = getattr(self._write_lock, "locked", None)  # _WriterLock or threading.Lock; nullcontext: none
        return bool(locked()) if locked is not None else False

    # durability ------------------------------------------------------------------------------------

    @property
    def durable_commits(self) -> bool:
        """Whether each commit is on stable storage when it returns.

        True on PostgreSQL and MariaDB (the server makes a commit durable before answering it) and on
        SQLite with ``synchronous=FULL``/``EXTRA``. False on SQLite with ``synchronous=NORMAL`` (the
        data store's default, docs/store.md "The durability contract"): a commit is in the WAL, on
        stable storage only at the next :meth:`sync` or checkpoint; a power cut may lose the last
        ones, which :meth:`pacskit.store.DataStore.recover` restores from the blobs."""
        if self._durable_commits is None:
            if self.backend != "sqlite" or self.engine.url.database in (None, "", ":memory:"):
                self._durable_commits = self.backend != "sqlite"
            else:
                with self.engine.connect() as conn:
                    level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                self._durable_commits = int(level or 0) >= 2  # 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
        return self._durable_commits

    def sync(self) -> None:
        """Make every transaction committed so far durable (a no-op where commits are durable anyway).

        SQLite in WAL mode with ``synchronous=NORMAL`` appends each commit to the ``-wal`` file
        without syncing it; the WAL is a log read back in order at recovery, so syncing it makes
        every commit written so far durable. Frames a checkpoint already copied are in the database
        file, which SQLite syncs after each checkpoint (NORMAL does that much); it is synced here too.
        Called after a commit that must not be undone by a power cut: an overwrite before the old
        blob goes, a deletion before its files go."""
        if self.durable_commits:
            return
        database = self.engine.url.database
        assert database is not None
        with self._write_lock:  # no checkpoint may restart the WAL in between (this process writes)
            for path in (database + "-wal", database):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            # and their names (SQLite syncs the folder when it creates a WAL, but only at the WAL's
            # first sync of its own, which NORMAL leaves to the next checkpoint)
            fd = os.open(os.path.dirname(os.path.abspath(database)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def durable_point(self) -> int:
        """The *durable point* last recorded by :meth:`set_durable_point` (0: none; SQLite only).

        It is kept in the database header (``PRAGMA user_version``), written in a transaction of its
        own: the WAL is read back in order after a crash, so when this value survived, every commit
        made before it did too."""
        if self.backend != "sqlite":
            return 0
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)

    def set_durable_point(self, value: int) -> None:
        """Record ``value`` (a non-negative int below 2^31) as the durable point, in its own commit."""
        if self.backend != "sqlite":
            return
        value = int(value)
        if not 0 <= value < 2**31:
            raise ValueError(f"durable point out of range: {value}")
        self.run_write(lambda s: s.execute(text(f"PRAGMA user_version = {value}")))

    @classmethod
    def open(cls, url: str | URL, **engine_options: Any) -> Index:
        return cls(make_engine(url, **engine_options))

    def __repr__(self) -> str:
        return f"Index({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        with self._lean_lock:
            held, self._lean_connections = list(self._lean_connections), weakref.WeakSet()
            self._lean_writer = None
            self._lean_readers = threading.local()
        for h in held:
            try:
                h.raw.close()
            except Exception:  # closed already, or its thread is using it at exit
                log.debug("index connection not closed", exc_info=True)
        self.engine.dispose()
        if isinstance(self._write_lock, _WriterLock):
            self._write_lock.close()

    def _detached(self) -> _Held:
        """A DBAPI connection set up by the engine (its ``connect`` event: WAL, pragmas, no implicit
        transactions) but taken out of its pool: the lean lane keeps it (a thread's reader is closed
        when the thread is gone and nothing holds it; :meth:`close` closes all that are left)."""
        fairy = self.engine.raw_connection()
        held = _Held(fairy.driver_connection)
        fairy.detach()
        with self._lean_lock:
            self._lean_connections.add(held)
        return held

    # schema ----------------------------------------------------------------------------------------

    def migrate(self, revision: str = "head") -> None:
        """``alembic upgrade head`` on this database; a no-op when already up to date.

        alembic's own INFO lines (plugins, context, each step) are kept at DEBUG level of pacskit: one
        INFO line says when the schema was created or upgraded."""
        with _quiet_alembic():
            from alembic import command
            from alembic.runtime.migration import MigrationContext

            with self._write_lock, self.engine.connect() as conn, _sqlite_foreign_keys_off(conn, self.backend):
                with conn.begin():
                    # Several processes may start at once against one server: migrate one at a time.
                    if self.backend == "postgresql":
                        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
                    elif self.backend == "mysql":
                        conn.exec_driver_sql(f"SELECT GET_LOCK('{_MIGRATION_LOCK_NAME}', 300)")
                    try:
                        opts = {"version_table": VERSION_TABLE}
                        before = MigrationContext.configure(conn, opts=opts).get_current_revision()
                        command.upgrade(alembic_config(conn), revision)
                        after = MigrationContext.configure(conn, opts=opts).get_current_revision()
                        if self.backend == "sqlite":
                            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                            if broken:  # the rebuilt tables must keep every reference: roll back
                                raise RuntimeError(f"migration to {after} broke foreign keys: {broken[:5]}")
                    finally:
                        if self.backend == "mysql":
                            conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{_MIGRATION_LOCK_NAME}')")
        if after != before:
            log.info("index %s: schema %s", self.engine.url.render_as_string(hide_password=True),
                     f"created (revision {after})" if before is None else f"upgraded from {before} to {after}")

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    # sessions and transactions ---------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for queries (its transaction is rolled back at the end)."""
        with self._read_sessions() as session:
            yield session

    def run_write(self, work: Callable[[Session], T], *, attempts: int | None = None) -> T:
        """Run ``work(session)`` in one write transaction, committed if it returns.

        Retried from scratch (new session, new transaction) on errors that concurrency causes; the
        last error is raised if every attempt fails. ``work`` must therefore be repeatable.
        """
        tries = attempts or self.write_attempts
        for attempt in range(1, tries + 1):
            try:
                with self._write_lock, self._write_sessions() as session:
                    with session.begin():
                        result = work(session)
                    self._learn(session.info.get(_CACHE_KEY))
                    return result
            except (IntegrityError, OperationalError, DBAPIError) as exc:
                if attempt >= tries or not _is_retryable(exc):
                    raise
                log.debug("write transaction retried (%d/%d): %s", attempt, tries, exc.orig)
                time.sleep(random.uniform(0.0, 0.005 * attempt))
        raise AssertionError("unreachable")

    def run_write_shared(self, work: Callable[[Session], T]) -> T:
        """Like :meth:`run_write`, but the transaction may be shared with concurrent callers.

        Concurrent callers' ``work`` run one after another in one transaction, each inside its own
        SAVEPOINT (an exception undoes only that caller's changes and is raised to that caller), and
        one commit makes them all durable: under N parallel ingests, one WAL fsync instead of N. A
        lone caller gets a plain transaction. ``work`` must be repeatable, as for :meth:`run_write`.
        """
        if self._group is None:
            return self.run_write(work)
        return self._group.run(work)

    # the ingest fast path's cache --------------------------------------------------------------------

    @staticmethod
    def _remember(s: Session, ref: _SeriesRef) -> None:
        s.info.setdefault(_CACHE_KEY, []).append(ref)

    def _learn(self, refs: list[_SeriesRef] | None) -> None:
        if not refs:
            return
        with self._refs_lock:
            if len(self._series_refs) + len(refs) > _SERIES_CACHE_SIZE:
                self._series_refs.clear()
            for ref in refs:
                self._series_refs[ref.series_uid] = ref

    def _forget(self, series_uid: str | None = None) -> None:
        with self._refs_lock:
            if series_uid is None:
                self._series_refs.clear()
            else:
                self._series_refs.pop(series_uid, None)

    def warm_up(self) -> None:
        """Run the general ingest path once on a made-up instance, and roll it back.

        SQLAlchemy builds and caches what a statement needs the first time it runs: the first
        instance a process indexes took ~50 ms more than the next new series. A server calls this in
        the background at start-up, so its first C-STORE does not wait for that."""
        import uuid

        uid = f"2.25.{uuid.uuid4().int}"
        a = InstanceAttributes(sop_instance_uid=f"{uid}.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                               study_instance_uid=f"{uid}.1", series_instance_uid=f"{uid}.2",
                               patient_id=f"warm-up {uid[-12:]}", modality="OT")
        with self._write_lock, self._write_sessions() as session:
            session.begin()
            try:
                self.record_instance(session, a, blob_key=f"warm-up-{uid[-12:]}", size=0, sha256="0" * 64,
                                     received_at=dt.datetime.now(dt.UTC), source_ae=None, policy="keep-first")
            finally:
                session.rollback()

    # the ingest's lean lane ----------------------------------------------------------------------

    def append_instance(
        self,
        a: InstanceAttributes,
        *,
        blob_key: str,
        size: int,
        sha256: str,
        received_at: dt.datetime,
        source_ae: str | None,
        fence: tuple[str, dict[str, Any]] | None = None,
    ) -> Recorded | None:
        """Add a new instance in a transaction of its own, without SQLAlchemy's session, connection
        pool and events around it: to a series this index has seen committed (:meth:`_append_on_cursor`),
        or as the first of a series the database does not hold, with its new parents
        (:meth:`_create_on_cursor`); ``None`` when the general path (:meth:`record_instance` in
        :meth:`run_write_shared`) must decide: another backend, a series in the database the cache
        does not know, a duplicate, a stale cache entry, or any error (nothing of it is kept then).

        Only where a commit is not flushed (SQLite with ``synchronous=NORMAL``, the data store's
        default): group commit (:meth:`run_write_shared`) exists to share flushes, and there is
        none to share, while the session and pool around each transaction cost more than its four
        statements. The transaction is ``BEGIN IMMEDIATE`` … ``COMMIT`` on one connection kept for
        it, under the same write lock as every other write of this process; the statements and their
        checks are the fast path's (:meth:`_append_on_cursor`).

        On PostgreSQL, the lane of :mod:`pacskit.store.index.pglane`: a connection kept per thread,
        an instance of a known series in one statement, one round trip (commit included), and ``fence``
        (a cluster's, :meth:`pacskit.store.cluster.SharedInflight.fence_statement`: SQL that must
        delete exactly one row) in the same transaction. MariaDB keeps the general path."""
        ref = self._series_refs.get(a.series_instance_uid)
        if ref is not None and ref.study_uid != a.study_instance_uid:
            return None
        if self._pg_lane is not None:
            return self._pg_lane.append(ref, a, fence, blob_key=blob_key, size=size, sha256=sha256,
                                        received_at=received_at, source_ae=source_ae)
        if fence is not None or not self._lean or self.durable_commits:
            return None
        with self._write_lock:
            try:
                if self._lean_writer is None:
                    self._lean_writer = self._detached()
                return self._append_lean(self._lean_writer.raw, ref, a, blob_key=blob_key, size=size,
                                         sha256=sha256, received_at=received_at, source_ae=source_ae)
            except Exception as exc:  # the general path runs the instance again, with its retries
                log.debug("lean append of %s fell back to the general path: %s", a.sop_instance_uid, exc)
                held, self._lean_writer = self._lean_writer, None  # a new connection next time
                if held is not None:
                    try:
                        held.raw.close()
                    except Exception:  # broken already
                        pass
                return None

    def _append_lean(
        self, raw: Any, ref: _SeriesRef | None, a: InstanceAttributes, **values: Any
    ) -> Recorded | None:
        """One transaction of :meth:`append_instance` on the DBAPI connection ``raw`` (write lock held):
        the fast path's statements for a known series (``ref``), :meth:`_create_on_cursor` otherwise."""
        cursor = raw.cursor()
        created: list[_SeriesRef] = []
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                if ref is not None:
                    rec = self._append_on_cursor(cursor, ref, a, **values)
                else:
                    rec = self._create_on_cursor(cursor, a, created, **values)
                cursor.execute("COMMIT" if rec is not None else "ROLLBACK")
            except BaseException:
                if raw.in_transaction:
                    cursor.execute("ROLLBACK")
                raise
        finally:
            cursor.close()
        if rec is not None:
            self._learn(created)  # only now: the commit made the series true
        return rec

    def _create_on_cursor(
        self,
        cursor: Any,
        a: InstanceAttributes,
        created: list[_SeriesRef],
        *,
        blob_key: str,
        size: int,
        sha256: str,
        received_at: dt.datetime,
        source_ae: str | None,
    ) -> Recorded | None:
        """The first instance of a series this index does not hold, on a DBAPI ``cursor`` inside a
        write transaction: the rows :meth:`record_instance` would write (patient, study, series, its
        request items, the instance, the counts and ModalitiesInStudy) with the fast path's
        precompiled statements instead of the ORM's ~13 (a CR/DX/MG load has one instance per
        series, so it paid the ORM on every instance). Its new series' ref is appended to
        ``created`` (learnt once committed). ``None`` with nothing changed when the general path must
        decide: a duplicate instance, or a series the index holds already (another study's: an error
        there; a series the cache does not know yet: it learns it there).

        Matching and warnings are :meth:`_attach_parents`'s: an existing study is used as it is (a
        warning when the instance names another patient), a patient is found by PatientID and
        issuer (never when PatientID is absent) and used as it is."""
        fast = self._fast
        if fast.instance_exists.first(cursor, {"uid": a.sop_instance_uid}) is not None:
            return None
        if fast.series_exists.first(cursor, {"uid": a.series_instance_uid}) is not None:
            return None
        study = fast.study_with_patient.first(cursor, {"uid": a.study_instance_uid})
        if study is None:
            patient = _patient_values(a)
            patient_pk = None
            if a.patient_id is not None:  # no PatientID: a patient of its own, never merged
                row = fast.find_patient.first(
                    cursor, {"pid": a.patient_id, "issuer": patient["issuer_of_patient_id"]})
                patient_pk = None if row is None else int(row[0])
            if patient_pk is None:
                patient_pk = fast.insert_patient.insert(cursor, {**patient, "num_studies": 1})
            elif fast.add_study_to_patient.rowcount(cursor, {"row": patient_pk}) != 1:
                return None
            study_pk = fast.insert_study.insert(cursor, {
                "patient_fk": patient_pk, **_study_values(a), "num_series": 1, "num_instances": 1,
                "modalities_in_study": _modalities_in_study([a.modality])})
            study_patient = (a.patient_id, patient["issuer_of_patient_id"])
        else:
            study_pk, study_patient = int(study[0]), (study[1], study[2])
            if a.patient_id is not None and study_patient != (a.patient_id, a.issuer_of_patient_id or ""):
                _warn_other_patient(a, study_patient[0])
            if fast.add_series_to_study.rowcount(cursor, {"row": study_pk}) != 1:
                return None
        series_pk = fast.insert_series.insert(cursor, {"study_fk": study_pk, **_series_values(a),
                                                       "num_instances": 1})
        for accession, requested, step in a.request_attributes:
            fast.insert_request.insert(cursor, {"series_fk": series_pk, "accession_number": accession,
                                                "requested_procedure_id": requested,
                                                "scheduled_procedure_step_id": step})
        if study is not None:
            modalities = fast.study_modalities.all(cursor, {"study": study_pk})
            fast.set_modalities.rowcount(cursor, {"row": study_pk,
                                                  "value": _modalities_in_study(r[0] for r in modalities)})
        pk = fast.insert_instance.insert(cursor, {"series_fk": series_pk, **_instance_values(
            a, blob_key=blob_key, size=size, sha256=sha256,
            received_at=received_at.astimezone(dt.UTC).replace(tzinfo=None),  # as UTCDateTime stores it
            source_ae=source_ae)})
        created.append(_SeriesRef(series_pk, a.series_instance_uid, study_pk, a.study_instance_uid,
                                  study_patient))
        return Recorded(IngestStatus.STORED, int(pk), blob_key, sha256)

    # the steps of an ingest, inside a write transaction ---------------------------------------------

    def record_instance(
        self,
        s: Session,
        a: InstanceAttributes,
        *,
        blob_key: str,
        size: int,
        sha256: str,
        received_at: dt.datetime,
        source_ae: str | None,
        policy: DuplicatePolicy,
    ) -> Recorded:
        """Add the instance (and its parents as needed), or apply ``policy`` if it exists already.

        An instance of a series this index has seen committed takes a fast path: four statements
        compiled once and run on the DBAPI cursor (is the instance new, count it in its study and
        series, insert it). Anything else — a new series, a duplicate, a stale cache entry — takes the
        general path through the ORM.
        """
        ref = self._series_refs.get(a.series_instance_uid)
        if ref is not None and ref.study_uid == a.study_instance_uid:
            rec = self._append_to_series(s, ref, a, blob_key=blob_key, size=size, sha256=sha256,
                                         received_at=received_at, source_ae=source_ae)
            if rec is not None:
                return rec
        existing = s.scalars(
            select(Instance).where(Instance.sop_instance_uid == a.sop_instance_uid).with_for_update()
        ).one_or_none()
        if existing is not None:
            if existing.blob_key == blob_key:  # our own commit, when a retry follows an in-doubt commit
                return Recorded(IngestStatus.STORED, existing.pk, blob_key, sha256)
            if policy == "keep-first":
                return Recorded(IngestStatus.DUPLICATE_IGNORED, existing.pk, existing.blob_key, existing.sha256)
            if policy == "reject":
                return Recorded(IngestStatus.DUPLICATE_REJECTED, existing.pk, existing.blob_key, existing.sha256)
            return self._overwrite(s, existing, a, blob_key=blob_key, size=size, sha256=sha256,
                                   received_at=received_at, source_ae=source_ae)
        series = self._attach_parents(s, a)
        if ref is None:
            patient = s.execute(
                select(Patient.patient_id, Patient.issuer_of_patient_id)
                .join(Study, Study.patient_fk == Patient.pk)
                .where(Study.pk == series.study_fk)
            ).one()
            self._remember(s, _SeriesRef(series.pk, a.series_instance_uid, series.study_fk,
                                         a.study_instance_uid, (patient[0], patient[1])))
        inst = Instance(series_fk=series.pk, **_instance_values(
            a, blob_key=blob_key, size=size, sha256=sha256, received_at=received_at, source_ae=source_ae))
        s.add(inst)
        s.flush()
        self._add_to_counts(s, series, +1)
        return Recorded(IngestStatus.STORED, inst.pk, blob_key, sha256)

    def _append_to_series(
        self,
        s: Session,
        ref: _SeriesRef,
        a: InstanceAttributes,
        *,
        blob_key: str,
        size: int,
        sha256: str,
        received_at: dt.datetime,
        source_ae: str | None,
    ) -> Recorded | None:
        """The fast path of :meth:`record_instance`; None when the general path must decide.

        Same locking order as the general path: the instance row, then the study row (the UPDATE
        locks it), then the series. Every statement re-checks the UIDs, so a cache entry whose rows
        were deleted or whose row ids were reused matches nothing and falls back.
        """
        cursor = s.connection().connection.cursor()  # the DBAPI cursor, inside the session's transaction
        try:
            return self._append_on_cursor(cursor, ref, a, blob_key=blob_key, size=size, sha256=sha256,
                                          received_at=received_at, source_ae=source_ae)
        finally:
            cursor.close()

    def _append_on_cursor(
        self,
        cursor: Any,
        ref: _SeriesRef,
        a: InstanceAttributes,
        *,
        blob_key: str,
        size: int,
        sha256: str,
        received_at: dt.datetime,
        source_ae: str | None,
    ) -> Recorded | None:
        """The fast path's statements on a DBAPI ``cursor`` inside a write transaction (see
        :meth:`_append_to_series`); ``None`` with nothing changed when the general path must decide."""
        fast = self._fast
        if fast.instance_exists.first(cursor, {"uid": a.sop_instance_uid}) is not None:
            return None  # a duplicate: the policy is applied by the general path
        study_keys = {"row": ref.study_pk, "uid": ref.study_uid}
        if fast.count_in_study.rowcount(cursor, {**study_keys, "delta": 1}) != 1:
            self._forget(ref.series_uid)
            return None
        if fast.count_in_series.rowcount(
            cursor, {"row": ref.series_pk, "uid": ref.series_uid, "study": ref.study_pk}
        ) != 1:
            fast.count_in_study.rowcount(cursor, {**study_keys, "delta": -1})
            self._forget(ref.series_uid)
            return None
        if a.patient_id is not None and ref.patient != (a.patient_id, a.issuer_of_patient_id or ""):
            _warn_other_patient(a, ref.patient[0])
        pk = fast.insert_instance.insert(cursor, {"series_fk": ref.series_pk, **_instance_values(
            a, blob_key=blob_key, size=size, sha256=sha256,
            received_at=received_at.astimezone(dt.UTC).replace(tzinfo=None),  # as UTCDateTime stores it
            source_ae=source_ae)})
        return Recorded(IngestStatus.STORED, int(pk), blob_key, sha256)

    def _add_to_counts(self, s: Session, series: Series | int, delta: int) -> None:
        series_pk = series if isinstance(series, int) else series.pk
        study_fk = s.scalar(select(Series.study_fk).where(Series.pk == series_pk))
        s.execute(
            update(Series).where(Series.pk == series_pk).values(num_instances=Series.num_instances + delta)
        )
        s.execute(update(Study).where(Study.pk == study_fk).values(num_instances=Study.num_instances + delta))

    def _overwrite(
        self,
        s: Session,
        inst: Instance,
        a: InstanceAttributes,
        *,
        blob_key: str,
        size: int,
        sha256: str,
        received_at: dt.datetime,
        source_ae: str | None,
    ) -> Recorded:
        """Point the existing row at the new copy (same row id); move it if its series changed."""
        self._check_series_study(s, a)  # before any write, so nothing is left half-done
        replaced = inst.blob_key
        series = self._attach_parents(s, a)
        old_series_fk = inst.series_fk
        if old_series_fk != series.pk:
            old_study_fk = s.scalar(select(Series.study_fk).where(Series.pk == old_series_fk))
            assert old_study_fk is not None
            self._lock_study(s, old_study_fk)
            self._add_to_counts(s, old_series_fk, -1)
            self._add_to_counts(s, series, +1)
            inst.series_fk = series.pk
        values = _instance_values(a, blob_key=blob_key, size=size, sha256=sha256, received_at=received_at,
                                  source_ae=source_ae)
        del values["sop_instance_uid"]  # the row's key: unchanged
        for column, value in values.items():
            setattr(inst, column, value)
        s.flush()
        if old_series_fk != series.pk:
            self._prune(s, old_series_fk)
        return Recorded(IngestStatus.OVERWRITTEN, inst.pk, blob_key, sha256, replaced)

    def _lock_study(self, s: Session, study_pk: int) -> Study:
        return s.scalars(select(Study).where(Study.pk == study_pk).with_for_update()).one()

    def _check_series_study(self, s: Session, a: InstanceAttributes, study_fk: int | None = None) -> None:
        """A Series Instance UID already used in another study is an error (checked before writing)."""
        if study_fk is None:
            row = s.execute(
                select(Study.study_instance_uid)
                .join(Series, Series.study_fk == Study.pk)
                .where(Series.series_instance_uid == a.series_instance_uid)
            ).one_or_none()
        else:
            row = s.execute(select(Study.study_instance_uid).where(Study.pk == study_fk)).one_or_none()
        if row is not None and row[0] != a.study_instance_uid:
            raise InvalidInstance(
                f"series {a.series_instance_uid} already belongs to study {row[0]}, "
                f"not {a.study_instance_uid}:",
                0x0020000E,
            )

    def _attach_parents(self, s: Session, a: InstanceAttributes) -> Series:
        self._check_series_study(s, a)  # before any write, so nothing is left half-done
        study = s.scalars(
            select(Study).where(Study.study_instance_uid == a.study_instance_uid).with_for_update()
        ).one_or_none()
        if study is None:
            patient = self._patient_for(s, a)
            study = Study(patient_fk=patient.pk, **_study_values(a), num_series=0, num_instances=0)
            s.add(study)
            s.flush()
            s.execute(
                update(Patient).where(Patient.pk == patient.pk).values(num_studies=Patient.num_studies + 1)
            )
        elif a.patient_id is not None:
            self._warn_if_other_patient(s, study, a)
        series = s.scalars(
            select(Series).where(Series.series_instance_uid == a.series_instance_uid).with_for_update()
        ).one_or_none()
        if series is None:
            series = Series(study_fk=study.pk, **_series_values(a), num_instances=0)
            s.add(series)
            s.flush()
            for accession, requested, step in a.request_attributes:
                s.add(SeriesRequest(series_fk=series.pk, accession_number=accession,
                                    requested_procedure_id=requested, scheduled_procedure_step_id=step))
            s.execute(update(Study).where(Study.pk == study.pk).values(num_series=Study.num_series + 1))
            self._refresh_modalities(s, study.pk)
        elif series.study_fk != study.pk:  # created meanwhile by a concurrent transaction
            self._check_series_study(s, a, series.study_fk)
        return series

    def _patient_for(self, s: Session, a: InstanceAttributes) -> Patient:
        issuer = a.issuer_of_patient_id or ""
        patient = None
        if a.patient_id is not None:  # no PatientID: a patient of its own, never merged
            patient = s.scalars(
                select(Patient).where(
                    Patient.patient_id == a.patient_id, Patient.issuer_of_patient_id == issuer
                )
            ).one_or_none()
        if patient is None:
            patient = Patient(**_patient_values(a), num_studies=0)
            s.add(patient)
            s.flush()  # a concurrent insert of the same patient raises IntegrityError: retried
        return patient

    def _warn_if_other_patient(self, s: Session, study: Study, a: InstanceAttributes) -> None:
        row = s.execute(
            select(Patient.patient_id, Patient.issuer_of_patient_id).where(Patient.pk == study.patient_fk)
        ).one()
        if (row[0], row[1]) != (a.patient_id, a.issuer_of_patient_id or ""):
            _warn_other_patient(a, row[0])

    def _refresh_modalities(self, s: Session, study_pk: int) -> None:
        rows = s.scalars(
            select(Series.modality)
            .where(Series.study_fk == study_pk, Series.modality.is_not(None))
            .distinct()
        ).all()
        s.execute(update(Study).where(Study.pk == study_pk).values(modalities_in_study=_modalities_in_study(rows)))

    def _prune(self, s: Session, series_pk: int) -> None:
        """Delete the series if it has no instance left, then its study and patient if empty."""
        study_fk = s.scalar(select(Series.study_fk).where(Series.pk == series_pk))
        if study_fk is None:
            return
        study = self._lock_study(s, study_fk)
        if s.scalar(select(func.count()).select_from(Instance).where(Instance.series_fk == series_pk)):
            return
        s.execute(delete(SeriesRequest).where(SeriesRequest.series_fk == series_pk))
        s.execute(delete(Series).where(Series.pk == series_pk))
        s.execute(update(Study).where(Study.pk == study_fk).values(num_series=Study.num_series - 1))
        if s.scalar(select(func.count()).select_from(Series).where(Series.study_fk == study_fk)):
            self._refresh_modalities(s, study_fk)
            return
        patient_fk = study.patient_fk
        s.execute(delete(Study).where(Study.pk == study_fk))
        s.execute(
            update(Patient).where(Patient.pk == patient_fk).values(num_studies=Patient.num_studies - 1)
        )
        if not s.scalar(select(func.count()).select_from(Study).where(Study.patient_fk == patient_fk)):
            s.execute(delete(Patient).where(Patient.pk == patient_fk))

    def remove_instance(self, s: Session, sop_instance_uid: str) -> str | None:
        """Delete an instance row (and parents left empty); return its blob key (None if absent)."""
        inst = s.scalars(
            select(Instance).where(Instance.sop_instance_uid == sop_instance_uid).with_for_update()
        ).one_or_none()
        if inst is None:
            return None
        key, series_fk = inst.blob_key, inst.series_fk
        study_fk = s.scalar(select(Series.study_fk).where(Series.pk == series_fk))
        assert study_fk is not None
        self._lock_study(s, study_fk)
        s.delete(inst)
        s.flush()
        self._add_to_counts(s, series_fk, -1)
        self._prune(s, series_fk)
        return key

    def remove_instances(self, s: Session, pks: list[int]) -> None:
        """Delete the instance rows ``pks`` of one study, fix the counts, and delete the series, study
        and patient rows left empty. The caller deals with the blobs (:mod:`pacskit.store.deletion`)."""
        if not pks:
            return
        per_series: dict[int, int] = {}
        for start in range(0, len(pks), 500):
            chunk = pks[start:start + 500]
            for series_fk, n in s.execute(
                select(Instance.series_fk, func.count()).where(Instance.pk.in_(chunk)).group_by(Instance.series_fk)
            ).all():
                per_series[series_fk] = per_series.get(series_fk, 0) + n
        study_fks = set(s.scalars(select(Series.study_fk).where(Series.pk.in_(list(per_series)))))
        for study_fk in sorted(study_fks):  # the ingest's lock order: the study row first
            self._lock_study(s, study_fk)
        for start in range(0, len(pks), 500):
            s.execute(delete(Instance).where(Instance.pk.in_(pks[start:start + 500])))
        for series_fk, n in per_series.items():
            self._add_to_counts(s, series_fk, -n)
            self._prune(s, series_fk)  # (the ingest fast path's cache re-checks rows: no need to forget)

    def clear(self, s: Session) -> None:
        """Delete every row (children first)."""
        self._forget()
        for model in (Instance, SeriesRequest, Series, Study, Patient):
            s.execute(delete(model))

    # queries ----------------------------------------------------------------------------------------

    def get_instance(self, sop_instance_uid: str) -> Instance | None:
        """The instance row with its series, study and patient loaded (usable after the session)."""
        with self.reading() as s:
            return s.scalars(
                select(Instance)
                .where(Instance.sop_instance_uid == sop_instance_uid)
                .options(joinedload(Instance.series).joinedload(Series.study).joinedload(Study.patient))
            ).one_or_none()

    def find_instance(self, sop_instance_uid: str) -> tuple[int, str, str] | None:
        """(row id, blob key, sha256) of an instance, or None. Core, no session: ingest asks this.

        On an SQLite file, on a connection this thread keeps (no pool checkout and reset per call)."""
        if self._lean:
            held = getattr(self._lean_readers, "held", None)
            if held is None:
                held = self._lean_readers.held = self._detached()
            cursor = held.raw.cursor()
            try:
                row = self._fast.find_instance.first(cursor, {"uid": sop_instance_uid})
            finally:
                cursor.close()
            return (row[0], row[1], row[2]) if row is not None else None
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                row = self._fast.find_instance.first(cursor, {"uid": sop_instance_uid})
            finally:
                cursor.close()
        finally:
            raw.close()
        return (row[0], row[1], row[2]) if row is not None else None

    def is_blob_referenced(self, key: str) -> bool:
        with self.reading() as s:
            return s.scalar(select(Instance.pk).where(Instance.blob_key == key)) is not None

    def counts(self) -> Counts:
        with self.reading() as s:
            return Counts(*(s.scalar(select(func.count()).select_from(model)) or 0
                            for model in (Patient, Study, Series, Instance)))

    def count(self, level: Literal["patients", "studies", "series", "instances"] = "instances") -> int:
        return getattr(self.counts(), level)


def _warn_other_patient(a: InstanceAttributes, study_patient_id: str | None) -> None:
    log.warning(
        "instance %s names patient %r but its study %s belongs to patient %r: kept in the study",
        a.sop_instance_uid, a.patient_id, a.study_instance_uid, study_patient_id,
    )


@dataclass(slots=True, eq=False)
class _Pending:
    work: Callable[[Session], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class _GroupCommit:
    """Leader/follower group commit for :meth:`Index.run_write_shared`.

    The first caller to find no transaction running becomes the leader: it takes every queued
    request, runs them in one transaction (a SAVEPOINT each when there are several), commits, and
    hands each caller its result. Callers arriving meanwhile queue for the next batch, which one of
    them leads. A lone caller never waits for another thread; there is no background thread.
    """

    def __init__(self, index: Index) -> None:
        self._index = index
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False

    def run(self, work: Callable[[Session], T]) -> T:
        me = _Pending(work)
        with self._cond:
            self._queue.append(me)
            while not me.done and self._leading:
                self._cond.wait()
            lead = not me.done
            if lead:
                self._leading = True  # every waiting caller (at most one per writing thread)
                batch, self._queue = self._queue, []
        if lead:
            try:
                self._execute(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[no-any-return]

    def _execute(self, batch: list[_Pending]) -> None:
        """Give every request of ``batch`` a result or an error, whatever happens."""
        pending = batch
        try:
            if len(batch) > 1:
                try:
                    pending = self._shared_transaction(batch)
                except Exception as exc:  # BEGIN or COMMIT failed: nothing of it holds; each alone
                    log.debug("group commit of %d failed, retrying one by one: %s", len(batch), exc)
                    pending = batch
            for p in pending:
                try:
                    p.result, p.error = self._index.run_write(p.work), None
                except Exception as exc:
                    p.result, p.error = None, exc
                p.done = True
        except BaseException as exc:  # interrupted: whoever has no answer gets this one
            for p in batch:
                if not p.done:
                    p.error = exc
            raise
        finally:
            for p in batch:
                p.done = True

    def _shared_transaction(self, batch: list[_Pending]) -> list[_Pending]:
        """Run ``batch`` in one transaction; returns those to run again alone (retryable errors)."""
        index = self._index
        again: list[_Pending] = []
        answered: list[tuple[_Pending, Any, BaseException | None]] = []
        with index._write_lock, index._write_sessions() as session:
            with session.begin():
                for p in batch:
                    learnt = session.info.setdefault(_CACHE_KEY, [])
                    mark = len(learnt)
                    try:
                        with session.begin_nested():
                            answered.append((p, p.work(session), None))
                    except (IntegrityError, OperationalError, DBAPIError) as exc:
                        del learnt[mark:]
                        if _is_retryable(exc):
                            again.append(p)
                        else:
                            answered.append((p, None, exc))
                    except Exception as exc:
                        del learnt[mark:]
                        answered.append((p, None, exc))
            index._learn(session.info.get(_CACHE_KEY))
        for p, result, error in answered:  # only now: the commit made them true
            p.result, p.error, p.done = result, error, True
        return again
