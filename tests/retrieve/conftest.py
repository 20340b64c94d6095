"""The store backend fixtures (SQLite, PostgreSQL, MariaDB) of tests/store, reused here (``need_dcmtk`` is in tests/conftest.py)."""


from store.conftest import (  # noqa: F401 - fixtures
    backend,
    blobs,
    db_url,
    mariadb_server,
    postgres_server,
    session_databases,
    store,
)
