"""When an ingest counts as brief (the Storage add-in then runs C-STOREs on the event loop beside other
associations: pacskit.services.InlineHandler ``brief``), and when it would queue behind other work."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pacskit.store import DataStore, FilesystemBlobStore, MemoryBlobStore
from pacskit.store import datastore as datastore_module
from pacskit.store.ingestlog import MAX_RECORD


def test_brief_with_sqlite_and_blobs_on_a_local_disk(tmp_path: Path) -> None:
    store = DataStore.open(f"sqlite:///{tmp_path / 'index.db'}", blobs=FilesystemBlobStore(tmp_path / "files"))
    try:
        assert store.ingest_is_brief()
        assert store.ingest_is_brief(MAX_RECORD)
        # its own flushes run on the blob store's threads while the index transaction does, and the
        # caller awaits them (PendingIngest.flushing); an overwrite makes the blob durable first
        assert store.ingest_is_brief(MAX_RECORD + 1)
        assert not store.ingest_is_brief(MAX_RECORD + 1, "overwrite")
        assert store.ingest_is_brief(MAX_RECORD, "overwrite")
    finally:
        store.close()
    memory = DataStore.open("sqlite://", blobs=MemoryBlobStore())
    try:
        assert memory.ingest_is_brief()
    finally:
        memory.close()


@pytest.mark.parametrize("kind", ["fuse.lossyfs", "nfs4", "cifs", ""])
def test_not_brief_with_blobs_on_fuse_or_a_network_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               kind: str) -> None:
    monkeypatch.setattr("pacskit.store.blobs.fs_type", lambda path: kind)
    store = DataStore.open(f"sqlite:///{tmp_path / 'index.db'}", blobs=FilesystemBlobStore(tmp_path / "files"))
    try:
        assert not store.ingest_is_brief()
    finally:
        store.close()


def test_not_brief_with_the_sqlite_index_on_a_network_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index_dir = tmp_path / "nas"
    index_dir.mkdir()
    real = datastore_module.fs_type
    monkeypatch.setattr(datastore_module, "fs_type", lambda path: "nfs" if path == str(index_dir) else real(path))
    store = DataStore.open(f"sqlite:///{index_dir / 'index.db'}", blobs=FilesystemBlobStore(tmp_path / "files"))
    try:
        assert not store.ingest_is_brief()
    finally:
        store.close()


def test_an_ingest_would_queue_while_another_thread_holds_the_write_lock_or_a_reindex_runs(tmp_path: Path) -> None:
    store = DataStore.open(f"sqlite:///{tmp_path / 'index.db'}", blobs=FilesystemBlobStore(tmp_path / "files"))
    try:
        assert not store.ingest_would_queue()
        held, release = threading.Event(), threading.Event()

        def hold_lock() -> None:
            with store.index._write_lock:
                held.set()
                release.wait(30)

        def hold_gate() -> None:
            with store._gate.exclusive():
                held.set()
                release.wait(30)

        for hold in (hold_lock, hold_gate):
            held.clear()
            release.clear()
            t = threading.Thread(target=hold)
            t.start()
            assert held.wait(30)
            assert store.ingest_would_queue()
            release.set()
            t.join(30)
            assert not store.ingest_would_queue()
    finally:
        store.close()


@pytest.mark.parametrize("url, brief", [
    ("postgresql+psycopg://postgres@127.0.0.1:5432/pacs", True),
    ("postgresql+psycopg://postgres@localhost/pacs", True),
    ("postgresql+psycopg://postgres@/pacs?host=/run/postgresql", True),
    ("mysql+pymysql://root@127.0.0.1:3306/pacs", True),
    ("postgresql+psycopg://postgres@db.hospital.example:5432/pacs", False),
    ("mysql+pymysql://root@10.1.2.3:3306/pacs", False),
])
def test_brief_with_a_database_server_only_on_this_machine(tmp_path: Path, url: str, brief: bool) -> None:
    """A commit to a server on this machine is a local round trip and a local flush; to another
    machine a network round trip, which concurrent ingests overlap only from several threads."""
    from sqlalchemy import create_engine

    from pacskit.store.index.database import Index

    engine = create_engine(url)  # never connected: the decision reads the URL only
    try:
        store = DataStore(Index(engine), FilesystemBlobStore(tmp_path / "files"))
        assert store.ingest_is_brief() is brief
        # a commit there is durable, so a large blob is flushed before it, on the caller's thread
        assert not store.ingest_is_brief(MAX_RECORD + 1)
    finally:
        engine.dispose()
