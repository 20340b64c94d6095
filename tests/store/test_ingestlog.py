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
from pacskit.store import blobs as blobs_module
from pacskit.store import ingestlog
from pacskit.store.ingestlog import MAX_RECORD, IngestLog, iter_segment_keys, read_segment, segment_files
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


# the flush overlapped with the index transaction (BlobStore.start_put) -----------------------------------


def _rows(store: DataStore) -> dict[str, tuple[str, int]]:
    from sqlalchemy import select

    from pacskit.store.index.models import Instance

    with store.index.reading() as s:
        return {uid: (key, size) for uid, key, size in
                s.execute(select(Instance.sop_instance_uid, Instance.blob_key, Instance.size)).all()}


def test_the_answer_waits_for_the_flush_the_transaction_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index transaction runs while the record's flush is under way; ingest returns only after it."""
    files = make_series(tmp_path / "src", 2, 16, 16)
    store = _open(tmp_path / "pacs")
    try:
        _ingest(store, files[:1])  # the series is known: the second takes the lean lane
        flushing, release = threading.Event(), threading.Event()
        real_flush = IngestLog._flush_records

        def held_flush(fd: int) -> None:
            flushing.set()
            assert release.wait(30)
            real_flush(fd)

        monkeypatch.setattr(IngestLog, "_flush_records", staticmethod(held_flush))
        committed = threading.Event()
        real_append = store.index.append_instance

        def append(*args: object, **kwargs: object) -> object:
            rec = real_append(*args, **kwargs)  # type: ignore[arg-type]
            committed.set()
            return rec

        monkeypatch.setattr(store.index, "append_instance", append)
        done: list[str] = []
        worker = threading.Thread(target=lambda: done.extend(_ingest(store, files[1:])))
        worker.start()
        assert flushing.wait(30) and committed.wait(30)
        assert done == [], "ingest returned before its blob's flush"
        assert len(_rows(store)) == 2  # the row is committed while the flush is held
        release.set()
        worker.join(30)
        assert len(done) == 1
    finally:
        release.set()
        store.close()


def test_a_failed_flush_of_a_large_blob_fails_the_ingest_before_its_row(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob larger than a log record is flushed on the flusher threads and its row committed only
    once that flush is done: a flush that fails leaves no row, no blob, and the store checks clean."""
    files = make_series(tmp_path / "src", 2, 200, 200)
    assert files[0].stat().st_size > MAX_RECORD
    store = _open(tmp_path / "pacs")
    try:
        _ingest(store, files[:1])
        real = blobs_module.fsync_path

        def broken(path: str, *, directory: bool = False) -> None:
            if not directory:
                raise OSError(5, "Input/output error")
            real(path, directory=directory)

        monkeypatch.setattr(blobs_module, "fsync_path", broken)
        copy = Path(store.temp_dir) / files[1].name
        copy.write_bytes(files[1].read_bytes())
        pending = store.start_ingest(str(copy))
        assert pending.flushing is not None
        assert len(_rows(store)) == 1, "no row before the flush"
        with pytest.raises(OSError):
            pending.result()
        monkeypatch.undo()
        assert len(_rows(store)) == 1
        assert store.check().ok, store.check()
    finally:
        store.close()


def test_a_blob_store_whose_pending_put_predates_flushing_still_ingests(tmp_path: Path) -> None:
    """``PendingPut.flushing`` is newer than the protocol's first version: a third-party store whose
    pending put has only ``key`` and ``wait()`` is waited for before the answer, as before."""
    waited: list[str] = []

    class OldPut:
        def __init__(self, put: object) -> None:
            self._put = put
            self.key = put.key  # type: ignore[attr-defined]

        def wait(self) -> None:
            self._put.wait()  # type: ignore[attr-defined]
            waited.append(self.key)

    class OldStore(FilesystemBlobStore):
        def start_put(self, src: str, key_hint: str | None = None) -> OldPut:  # type: ignore[override]
            return OldPut(super().start_put(src, key_hint))

    files = make_series(tmp_path / "src", 2, 200, 200)
    store = DataStore.open(f"sqlite:///{tmp_path / 'index.db'}", blobs=OldStore(tmp_path / "files"))
    try:
        uids = _ingest(store, files)
        assert len(uids) == 2 and len(waited) == 2
        assert store.check().ok
    finally:
        store.close()


def test_a_failed_flush_after_the_commit_fails_the_ingest_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_series(tmp_path / "src", 2, 16, 16)
    store = _open(tmp_path / "pacs")
    try:
        _ingest(store, files[:1])

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        # the log's flush fails (its record is then not trusted), and so does the blob's own
        monkeypatch.setattr(IngestLog, "_flush_records", staticmethod(broken))
        monkeypatch.setattr("pacskit.store.blobs.fsync_path", lambda path, directory=False: broken(0))
        with pytest.raises(OSError):
            _ingest(store, files[1:])
        assert len(_rows(store)) == 1
        monkeypatch.undo()
        assert store.check().ok, store.check()
        assert store.counts().instances == 1
    finally:
        store.close()


def _move_blob(store: DataStore, uid: str, key: str, minutes_ago: int) -> None:
    """Give ``uid``'s blob a key of a minute long gone (what a blob made before the durable point has)."""
    from sqlalchemy import update

    from pacskit.store.blobs import KEY_MINUTES, current_minute
    from pacskit.store.index.models import Instance

    old = f"{(current_minute() - minutes_ago) % KEY_MINUTES:04x}{key[4:]}"
    dest = Path(store.blobs._file(old))  # type: ignore[attr-defined]
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(store.blobs.path(key) or "", dest)
    store.index.run_write(lambda s: s.execute(update(Instance).where(Instance.sop_instance_uid == uid)
                                              .values(blob_key=old)))


def test_start_up_removes_rows_since_the_durable_point_whose_blob_did_not_survive(tmp_path: Path) -> None:
    """A row can be durable before its blob (the flush overlaps the transaction): after a power cut
    in between, the blob is missing or torn and the instance was never acknowledged. Start-up removes
    such rows from the durable point on (counts included), keeps the ones whose blob is intact, and
    leaves older rows to ``check``: before the point, every row's blob was durable."""
    files = make_series(tmp_path / "src", 5, 16, 16)
    root = tmp_path / "pacs"
    store = _open(root)
    uids = _ingest(store, files)
    rows = _rows(store)
    _move_blob(store, uids[4], rows[uids[4]][0], minutes_ago=90)  # made long before the point
    store.close()  # checkpoints the log: nothing to replay
    lost, torn, intact, short, old = uids
    Path(store.blobs.path(rows[lost][0]) or "").unlink()
    Path(store.blobs.path(rows[torn][0]) or "").write_bytes(bytes(rows[torn][1]))  # the size, no data
    Path(store.blobs.path(rows[short][0]) or "").write_bytes(b"")
    old_key = _rows(DataStore.open(f"sqlite:///{root / 'index.db'}", blobs=FilesystemBlobStore(root / "files"),
                                   recover=False))[old][0]
    Path(FilesystemBlobStore(root / "files").path(old_key) or "").unlink()

    store = _open(root)  # recovers
    try:
        left = _rows(store)
        assert set(left) == {intact, old}
        report = store.check()
        assert [p.kind for p in report.problems] == ["missing-blob"], report  # the old one: not ours to judge
        assert report.problems[0].sop_instance_uid == old
        assert store.counts().instances == 2
        assert not (root / "files" / rows[torn][0][:2] / rows[torn][0][2:4] / f"{rows[torn][0]}.dcm").exists()
    finally:
        store.close()


def test_without_a_durable_point_no_row_is_judged(tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    store = _open(root)
    uids = _ingest(store, make_series(tmp_path / "src", 1, 16, 16))
    store.index.set_durable_point(0)
    assert store.remove_unbacked_rows() == 0
    Path(store.blobs.path(_rows(store)[uids[0]][0]) or "").unlink()
    assert store.remove_unbacked_rows() == 0
    store.index.set_durable_point(store.index.durable_point() or 1)
    store.close()
