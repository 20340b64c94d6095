"""The store backend fixtures of tests/store (SQLite, PostgreSQL, MariaDB), reused for the tests that
show the commitment tables on every backend."""

from store.conftest import (  # noqa: F401 - fixtures
    backend,
    fresh_db_url,
    mariadb_server,
    postgres_server,
)
