"""Choosing the blob store: [storage] backend names a built-in, an installed one or module:factory."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pacskit.addins.storage import StorageAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.client import StoreScu
from pacskit.config.settings import load_settings
from pacskit.server.server import Server, ServerError
from pacskit.store import FilesystemBlobStore, MemoryBlobStore, open_blob_store
from pacskit.testing.synth import make_instance

CUSTOM = '''
from pacskit.store import FilesystemBlobStore

PUT = []


class CountingBlobStore(FilesystemBlobStore):
    """A third-party blob store: the filesystem one, noting every blob it is given."""

    def __init__(self, root, label):
        super().__init__(root)
        self.label = label

    def put_file(self, src, key_hint=None):
        key = super().put_file(src, key_hint)
        PUT.append((self.label, key))
        return key
'''


def test_built_in_backends(tmp_path: Path) -> None:
    assert isinstance(open_blob_store("filesystem", tmp_path / "files"), FilesystemBlobStore)
    memory = open_blob_store("memory", tmp_path / "unused")
    assert isinstance(memory, MemoryBlobStore)
    assert (memory.temp_dir, memory.journal_dir, memory.purge_temp()) == (None, None, 0)  # capabilities it lacks


def test_an_unknown_backend_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown blob store 'swift' \(known: filesystem, memory, s3"):
        open_blob_store("swift", tmp_path)
    with pytest.raises(ValueError, match="takes no options"):
        open_blob_store("filesystem", tmp_path, {"bucket": "x"})


def test_a_third_party_backend_receives_the_stored_instances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "custom_blobs.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text(
        'ae_title = "BLOBS"\nport = 0\ndata_dir = "data"\n[admin]\nenabled = false\n'
        '[storage]\nbackend = "custom_blobs:CountingBlobStore"\noptions = { label = "mine" }\n'
    )
    path = make_instance(tmp_path / "in" / "one.dcm", rows=8, cols=8)

    async def run() -> None:
        async with Server(load_settings(folder), addin_classes=[VerificationAddIn, StorageAddIn]) as server:
            report = await StoreScu(f"BLOBS@127.0.0.1:{server.port}").store([path])
            assert report.ok and len(report.succeeded) == 1
            assert server.store.count("instances") == 1

    asyncio.run(run())
    module = sys.modules["custom_blobs"]
    assert [label for label, _ in module.PUT] == ["mine"]  # type: ignore[attr-defined]


def test_a_backend_that_cannot_load_stops_the_server(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "BLOBS"\nport = 0\ndata_dir = "data"\n[storage]\nbackend = "no_such_module:Store"\n')

    async def run() -> None:
        with pytest.raises(ServerError, match=r"\[storage\] blob store 'no_such_module:Store' cannot be loaded"):
            await Server(load_settings(folder), addin_classes=[]).start()

    asyncio.run(run())
