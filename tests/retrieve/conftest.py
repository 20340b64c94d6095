"""The store backend fixtures (SQLite, PostgreSQL, MariaDB) of tests/store, reused here, and
``need_dcmtk`` for the modules that drive DCMTK tools (``pytest.mark.usefixtures("need_dcmtk")``)."""

import pytest

from pacskit.testing.peers import have_dcmtk

from store.conftest import (  # noqa: F401 - fixtures
    backend,
    blobs,
    db_url,
    mariadb_server,
    postgres_server,
    session_databases,
    store,
)


@pytest.fixture
def need_dcmtk() -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
