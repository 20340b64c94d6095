"""The ingest log (pacskit.store.ingestlog): small blobs made durable by one group-committed flush, and
what start-up does with the segments a crash or a power cut left.

What a power cut leaves is made here by hand on a real file system (a blob file gone, one cut short,
the index's last rows gone, a record torn); tests/reliability/test_power_loss.py takes real power cuts
on lossyfs with four storescu.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from pacskit.store import DataStore, FilesystemBlobStore
from pacskit.store import ingestlog
from pacskit.store.ingestlog import IngestLog, iter_segment_keys, read_segment, segment_files
from pacskit.testing.synth import make_series


def _open(root: Path, **kw: object) -> DataStore:
    store = DataStore.open(f"sqlite:///{root / 'index.db'}", blobs=FilesystemBlobStore(root / "files"), **kw)  # type: ignore[arg-type]
    store.prepare_ingest()
    return store


def _ingest(store: DataStore, files: list[Path]) -> list[str]:
    uids = []
    for f in files:
        copy = Path(store.temp_dir) / f.name
        copy.write_bytes(f.read_bytes())
        uids.append(store.ingest(str(copy)).sop_instance_uid)
    return uids


def _lose_rows(db: Path) -> None:
    """What a power cut does to the index's commits since its last flush (here: all of them)."""
    with sqlite3.connect(db) as conn:
        for table in ("instances", "series", "studies", "patients"):
            conn.execute(f"DELETE FROM {table}")


def test_small_blobs_go_through_the_log_and_large_ones_do_not(tmp_path: Path) -> None:
    small = make_series(tmp_path / "small", 3, 16, 16)
    large = make_series(tmp_path / "large", 1, 256, 256, bits=16)  # 128 KiB of pixels: over MAX_RECORD
    store = _open(tmp_path / "pacs")
    try:
        _ingest(store, small + large)
        logged = set(iter_segment_keys(str(tmp_path / "pacs" / "files" / "log")))
        with store.index.reading() as s:
            from sqlalchemy import select

            from pacskit.store.index.models import Instance

            sizes = dict(s.execute(select(Instance.blob_key, Instance.size)).all())
        assert {k for k, n in sizes.items() if n <= ingestlog.MAX_RECORD} == logged
        assert len(logged) == 3
    finally:
        store.close()
    assert segment_files(str(tmp_path / "pacs" / "files" / "log")) == []  # checkpointed and deleted at close


def test_start_up_rewrites_lost_and_torn_blobs_from_the_log_and_indexes_them(tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    files = make_series(tmp_path / "src", 6, 16, 16)
    crashed = _open(root)  # never closed: its log stays, as after a power cut
    uids = _ingest(crashed, files)
    paths = {uid: crashed.instance_path(uid) for uid in uids}
    sent = {uid: Path(paths[uid] or "").read_bytes() for uid in uids}
    os.unlink(paths[uids[0]] or "")  # the name never reached the disk
    with open(paths[uids[1]] or "", "r+b") as fh:  # the name did, not all the bytes
        fh.truncate(100)
    Path(paths[uids[2]] or "").write_bytes(b"\0" * len(sent[uids[2]]))  # the size did, not the bytes
    crashed.index.close()
    _lose_rows(root / "index.db")
    with _open(root) as store:  # recover(): replay, then restore_index
        assert store.count() == 6
        for uid in uids:
            assert Path(store.instance_path(uid) or "").read_bytes() == sent[uid]
        assert store.check().ok
    assert segment_files(str(root / "files" / "log")) == []


def test_a_deleted_instance_does_not_come_back_from_the_log(tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    files = make_series(tmp_path / "src", 3, 16, 16)
    crashed = _open(root)
    uids = _ingest(crashed, files)
    gone = crashed.instance_path(uids[0])
    assert crashed.delete_instance(uids[0])  # its row, its blob, and a tombstone in the log (synced)
    assert gone is not None and not os.path.exists(gone)
    crashed.index.close()
    with _open(root) as store:
        assert store.get_instance(uids[0]) is None
        assert not os.path.exists(gone)
        assert store.count() == 2
        assert store.check().ok


def test_replay_stops_at_a_torn_record_and_ignores_retired_segments(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    blobs = tmp_path / "blobs"
    blobs.mkdir()

    def blob_path(key: str) -> str:
        return str(blobs / f"{key}.dcm")

    log = IngestLog(str(folder), blob_path, segment_size=64 << 10, max_segments=3, use_syncfs=False)
    assert log.wait_ready(10)
    keys: list[str] = []

    def append(n: int) -> None:
        key = f"{n:032x}"
        Path(blob_path(key)).write_bytes(bytes([n]) * 5000)
        with log._cond:  # the keeper has the next segment ready before this one fills
            assert log._cond.wait_for(lambda: any(s.state in ("ready", "live") for s in log._segments), 10)
        assert log.append(key, blob_path(key))
        keys.append(key)

    for n in range(11):  # 11 records of 5 KB fill the first 64 KiB segment
        append(n)
    with log._cond:
        assert log._cond.wait_for(lambda: any(s.state == "ready" for s in log._segments), 10)
    for n in range(11, 15):  # the 12th goes into the next one; the first is checkpointed and retired
        append(n)
    assert log.records == 15 and log.flushes <= 15
    with log._cond:
        assert log._cond.wait_for(lambda: not log._sealed, 10)
    segments = segment_files(str(folder))
    in_use = [p for p in segments if read_segment(p)[0]]
    assert len(segments) == 2 and len(in_use) == 1  # the retired one: nothing in it counts
    live = read_segment(in_use[0])[0]
    assert [r.key for r in live] == keys[11:]
    # a power cut: the blobs of the first and of the last two records are gone, the last record is torn
    for key in (keys[0], *keys[-2:]):
        os.unlink(blob_path(key))
    with open(in_use[0], "r+b") as fh:
        fh.seek(live[-1].offset + 10)
        fh.write(b"torn")
    assert ingestlog.replay(str(folder), blob_path, lambda key: str(blobs), str(tmp_path), lambda key: True) == 1
    assert Path(blob_path(keys[-2])).read_bytes() == bytes([13]) * 5000  # restored
    assert not os.path.exists(blob_path(keys[-1]))  # torn: never acknowledged, not restored
    assert not os.path.exists(blob_path(keys[0]))  # its segment was retired: its blob was durable, then deleted
    assert segment_files(str(folder)) == []
    log.close()


def test_concurrent_appends_share_a_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: the first flush is held until the seven other writers have written their
    records; the next flush, run by one of them, covers all seven (two flushes for eight records)."""
    folder = tmp_path / "log"
    folder.mkdir()
    log = IngestLog(str(folder), lambda key: str(tmp_path / key), use_syncfs=False)
    assert log.wait_ready(10)
    real = os.fdatasync
    held = threading.Event()

    def fdatasync(fd: int) -> None:
        seg = log._current
        if seg is not None and fd == seg.fd and not held.is_set():
            held.set()
            with log._cond:
                assert log._cond.wait_for(lambda: len(seg.keys) == 8 and seg.written == seg.reserved, 10)
        real(fd)

    for n in range(8):
        (tmp_path / f"{n:032x}").write_bytes(b"x" * 1000)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(log.append(f"{0:032x}", str(tmp_path / f"{0:032x}"))))
    first.start()
    assert held.wait(10)
    others = [threading.Thread(target=lambda n=n: results.append(log.append(f"{n:032x}", str(tmp_path / f"{n:032x}"))))
              for n in range(1, 8)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(10)
    monkeypatch.undo()
    assert results == [True] * 8
    assert (log.records, log.flushes) == (8, 2)
    log.close()
