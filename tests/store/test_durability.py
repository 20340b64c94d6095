"""The durability contract's start-up half: rows a power cut took from the index (SQLite at
synchronous=NORMAL) are restored from the blobs newer than the durable point; a blob cut short is
deleted. (The power cuts themselves: tests/reliability/test_power_loss.py.)"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from pacskit.store import DataStore, FilesystemBlobStore
from pacskit.store.blobs import current_minute, new_key
from pacskit.testing.synth import make_series


def _open(root: Path, **kw: object) -> DataStore:
    return DataStore.open(f"sqlite:///{root / 'index.db'}", blobs=FilesystemBlobStore(root / "files"), **kw)  # type: ignore[arg-type]


def _lose_last_rows(db: Path, n: int) -> None:
    """What a power cut does to the index's last commits (their rows and count updates are gone)."""
    with sqlite3.connect(db) as conn:
        for pk, series_fk in conn.execute("SELECT pk, series_fk FROM instances ORDER BY pk DESC LIMIT ?", (n,)).fetchall():
            conn.execute("DELETE FROM instances WHERE pk = ?", (pk,))
            conn.execute("UPDATE series SET num_instances = num_instances - 1 WHERE pk = ?", (series_fk,))
            conn.execute("UPDATE studies SET num_instances = num_instances - 1"
                         " WHERE pk = (SELECT study_fk FROM series WHERE pk = ?)", (series_fk,))


def test_the_index_is_at_synchronous_normal_and_moves_its_durable_point(tmp_path: Path) -> None:
    files = make_series(tmp_path / "src", 3, 16, 16)
    with _open(tmp_path / "pacs") as store:
        assert store.index.durable_commits is False  # restored from the blobs instead of flushed per commit
        start = store.index.durable_point()
        assert start >= current_minute() - 1  # recover() at open put it at "now"
        for f in files:
            copy = Path(store.temp_dir) / f.name
            copy.write_bytes(f.read_bytes())
            store.ingest(str(copy))
        assert store.index.durable_point() >= start
    with DataStore.open(f"sqlite:///{tmp_path / 'pacs' / 'index.db'}", blobs=FilesystemBlobStore(tmp_path / "pacs" / "files"),
                        sqlite_synchronous="FULL") as full:
        assert full.index.durable_commits is True  # an explicit engine option wins


def test_start_up_restores_rows_a_power_cut_took(tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    files = make_series(tmp_path / "src", 6, 16, 16)
    with _open(root) as store:
        for f in files:
            copy = Path(store.temp_dir) / f.name
            copy.write_bytes(f.read_bytes())
            store.ingest(str(copy))
    _lose_last_rows(root / "index.db", 3)
    with _open(root, recover=False) as store:
        assert store.count() == 3
    with _open(root) as store:  # recover() runs restore_index() first
        assert store.count() == 6
        report = store.check()
        assert report.ok, str(report)


def test_a_blob_cut_short_is_deleted_at_start_up_and_the_rest_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    files = make_series(tmp_path / "src", 2, 16, 16)
    with _open(root) as store:
        copy = Path(store.temp_dir) / files[0].name
        copy.write_bytes(files[0].read_bytes())
        store.ingest(str(copy))
        # a blob whose name reached the disk but whose bytes did not all (never acknowledged)
        key = new_key()
        torn = Path(store.blobs.path(key) or "")
        torn.parent.mkdir(parents=True, exist_ok=True)
        torn.write_bytes(files[1].read_bytes()[:-100])
    with _open(root) as store:
        assert not torn.exists()
        assert store.count() == 1
        assert store.check().ok


def test_durability_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        FilesystemBlobStore(tmp_path / "a", durability="sometimes")
    blobs = FilesystemBlobStore(tmp_path / "b", durability="none")
    src = tmp_path / "b" / "tmp" / "x"
    src.write_bytes(b"data")
    key = blobs.put_file(str(src))
    assert Path(blobs.path(key) or "").read_bytes() == b"data"
    assert list(blobs.iter_keys_since(current_minute()) or []) == [key]
    assert blobs.iter_keys_since(0) is None  # no point: the caller lists everything


def test_settings_accept_the_durability_modes(tmp_path: Path) -> None:
    from pacskit.config.settings import SettingsError, load_settings

    (tmp_path / "server.toml").write_text('[storage]\ndurability = "file"\n')
    assert load_settings(tmp_path).storage.durability == "file"
    (tmp_path / "server.toml").write_text('[storage]\ndurability = "maybe"\n')
    with pytest.raises(SettingsError):
        load_settings(tmp_path)
    os.unlink(tmp_path / "server.toml")
    assert load_settings(tmp_path).storage.durability == "full"
