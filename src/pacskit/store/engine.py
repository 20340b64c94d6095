"""Engines for the three supported backends, set up for durability and concurrent use.

URLs (``make_url`` normalises the driver, so plain ``postgresql://`` and ``mysql://`` work too):

* ``sqlite:///path/to/index.db`` — embedded; one process writes. ``sqlite://`` is an in-memory
  database on one shared connection (unit tests).
* ``postgresql+psycopg://user@host:5432/db`` — psycopg 3.
* ``mysql+pymysql://user@host:3306/db?charset=utf8mb4`` (or ``mariadb+pymysql://``) — PyMySQL;
  ``charset=utf8mb4`` is added when missing.

SQLite, per connection (``connect`` event):

* ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers.
* ``synchronous=FULL`` by default here (``sqlite_synchronous="NORMAL"`` to trade): FULL fsyncs the
  WAL at each commit. In WAL mode NORMAL fsyncs only at checkpoints: a committed transaction
  survives an application crash but may be rolled back by a power failure or OS crash.
  :meth:`pacskit.store.DataStore.open` asks for NORMAL over a filesystem blob store, whose blobs are
  flushed before each C-STORE is answered and from which start-up restores lost rows (docs/store.md,
  "The durability contract").
* ``foreign_keys=ON`` (off by default in SQLite), ``busy_timeout`` 30 s.
* ``mmap_size`` 1 GiB (``sqlite_mmap_size``; 0 turns it off): pages are read through a memory map
  instead of one ``pread`` each, about a third of a 300-match name query at 1M instances. Writes still
  go through the journal as usual. Mapped pages are the OS page cache, shared by every connection
  (a bigger ``cache_size`` would be per connection), and count in the process's RSS as file pages.
* The driver's own transaction handling is switched off and SQLAlchemy emits ``BEGIN`` itself:
  ``BEGIN IMMEDIATE`` for write transactions (connections with the ``pacskit_write`` execution
  option), so a writer takes the write lock up front instead of failing to upgrade a read lock with
  SQLITE_BUSY, and SAVEPOINTs work.

Connection liveness on PostgreSQL costs no round trip: ``pool_pre_ping`` (a ``SELECT 1`` per
checkout, two per ingest on the general path) is off. At checkout a connection psycopg knows broken,
or whose socket has something to read while idle (the server's goodbye after
``pg_terminate_backend``, a restart, ``idle_session_timeout``: PostgreSQL sends nothing unasked to a
session that does not ``LISTEN``), is replaced (:func:`pacskit.store.index.pglane.connection_is_dead`);
``pool_recycle`` (30 min) replaces old ones before a firewall's idle timeout can drop them silently. A
connection lost without a word fails its statement: SQLAlchemy invalidates it and every connection
checked out before, and :meth:`pacskit.store.index.database.Index.run_write` runs the transaction
again on a new one. MariaDB keeps ``pool_pre_ping``.

PostgreSQL and MariaDB run at READ COMMITTED: each statement sees the latest committed rows, which
with the row locks taken by the index (``SELECT ... FOR UPDATE`` on the study) keeps the derived
counts exact under concurrent ingests (MariaDB's default REPEATABLE READ would keep a snapshot).
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.engine import make_url as _sa_make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_S = 30.0
WRITE_OPTION = "pacskit_write"
#: seconds after which a pooled PostgreSQL connection is replaced (below common firewall idle timeouts)
PG_POOL_RECYCLE_S = 1800


def make_url(url: str | URL) -> URL:
    """Parse ``url`` and pick our drivers: psycopg 3 for PostgreSQL, PyMySQL (utf8mb4) for MySQL/MariaDB."""
    u = _sa_make_url(url) if isinstance(url, str) else url
    backend, _, driver = u.drivername.partition("+")
    if backend in ("postgresql", "postgres") and not driver:
        u = u.set(drivername="postgresql+psycopg")
    elif backend in ("mysql", "mariadb"):
        if not driver:
            u = u.set(drivername=f"{backend}+pymysql")
        if "charset" not in u.query:
            u = u.update_query_dict({"charset": "utf8mb4"})
    return u


def backend_name(url: str | URL) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB included)."""
    name = make_url(url).get_backend_name()
    return "mysql" if name == "mariadb" else name


def make_engine(
    url: str | URL,
    *,
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL",
    sqlite_mmap_size: int = 1024 * 1024 * 1024,
    pool_size: int = 10,
    echo: bool = False,
    **kwargs: Any,
) -> Engine:
    """An engine for ``url`` with the per-backend settings described in the module docstring."""
    u = make_url(url)
    backend = backend_name(u)
    if backend == "sqlite":
        if sqlite_synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"bad sqlite_synchronous {sqlite_synchronous!r}")
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        connect_args.update(kwargs.pop("connect_args", {}))
        if u.database in (None, "", ":memory:"):  # one shared connection, or each would be empty
            kwargs.setdefault("poolclass", StaticPool)
        engine = create_engine(u, echo=echo, connect_args=connect_args, **kwargs)
        _setup_sqlite(engine, sqlite_synchronous, int(sqlite_mmap_size))
        return engine
    kwargs.setdefault("pool_pre_ping", pings_connections(u))
    kwargs.setdefault("pool_size", pool_size)
    kwargs.setdefault("max_overflow", pool_size)
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    connect_args = kwargs.pop("connect_args", {})
    if backend == "postgresql":
        connect_args.setdefault("connect_timeout", 10)
        kwargs.setdefault("pool_recycle", PG_POOL_RECYCLE_S)
    elif backend == "mysql":
        connect_args.setdefault("connect_timeout", 10)
        kwargs.setdefault("pool_recycle", 3600)  # MariaDB drops idle connections (wait_timeout)
    try:
        engine = create_engine(u, echo=echo, connect_args=connect_args, **kwargs)
    except ModuleNotFoundError as exc:  # the driver is an extra: say which
        extra = {"postgresql": "postgresql", "mysql": "mysql"}.get(backend, backend)
        raise ModuleNotFoundError(
            f"the {backend} driver ({exc.name}) is not installed: pip install 'pacskit[{extra}]'", name=exc.name
        ) from exc
    if backend == "postgresql" and not kwargs.get("pool_pre_ping"):
        replace_dead_connections(engine)
    return engine


def pings_connections(url: str | URL) -> bool:
    """Whether an engine for ``url`` checks connections with ``pool_pre_ping`` (a round trip per
    checkout): all but PostgreSQL through psycopg 3, whose are checked without one
    (:func:`replace_dead_connections`)."""
    u = make_url(url)
    return not (backend_name(u) == "postgresql" and u.get_driver_name() == "psycopg")


def replace_dead_connections(engine: Engine) -> None:
    """Make ``engine``'s pool (PostgreSQL, psycopg) replace at checkout, without a round trip, a
    connection the server has closed (module doc): what ``pool_pre_ping`` does with a ``SELECT 1``.
    psycopg 3 only (another driver keeps ``pool_pre_ping``: :func:`pings_connections`)."""
    if engine.dialect.driver != "psycopg":
        raise ValueError(f"replace_dead_connections needs psycopg 3, not {engine.dialect.driver}")
    from pacskit.store.index.pglane import connection_is_dead

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        # raising DisconnectionError here makes the pool discard the connection and hand out another
        if connection_is_dead(dbapi_conn.driver_connection if hasattr(dbapi_conn, "driver_connection")
                              else dbapi_conn):
            raise DisconnectionError("the server closed this idle connection")


def _setup_sqlite(engine: Engine, synchronous: str, mmap_size: int) -> None:
    memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see "begin" below)
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA mmap_size={max(0, mmap_size)}")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # on the driver's connection: a statement through SQLAlchemy costs more than SQLite's BEGIN
        conn.connection.driver_connection.execute(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")
