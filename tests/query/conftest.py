"""Fixtures for the query tests: the corpus (tests/query/_corpus.py) loaded once per backend and module.

The database servers and their per-session databases come from tests/store/conftest.py (same URLs,
same skip-with-reason when a server is unreachable, which fails a CI run).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from pacskit.store import DataStore, FilesystemBlobStore
from store.conftest import BACKENDS, mariadb_server, postgres_server  # noqa: F401 - fixtures

from ._corpus import Corpus, build


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build(tmp_path_factory.mktemp("corpus"))


def open_backend_store(request: pytest.FixtureRequest, backend: str, folder: Path) -> DataStore:
    """An empty data store of its own on ``backend`` (a new database on the servers)."""
    url: URL | str
    if backend == "sqlite":
        url = f"sqlite:///{folder}/index.db"
    else:
        servers = request.getfixturevalue("postgres_server" if backend == "postgresql" else "mariadb_server")
        url = servers.create()
    return DataStore.open(url, blobs=FilesystemBlobStore(folder / "blobs"))


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[DataStore]:
    """A data store on each backend holding the corpus (read-only for the tests that use it)."""
    store = open_backend_store(request, request.param, tmp_path_factory.mktemp(f"qstore-{request.param}"))
    try:
        corpus.load(store)
        yield store
    finally:
        store.close()
