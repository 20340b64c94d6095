"""Blob stores: the filesystem store, its in-memory twin and the S3 store behave alike; hostile keys go nowhere."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pacskit.store import BlobNotFound, FilesystemBlobStore, InvalidBlobKey, MemoryBlobStore, validate_key
from pacskit.store.blobs import BlobStore
from pacskit.store.ingestlog import MAX_RECORD, iter_segment_keys


@pytest.fixture(params=["filesystem", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    if request.param == "s3":  # SeaweedFS, started once for the session (tests/store/conftest.py)
        from pacskit.store.s3 import S3BlobStore

        return S3BlobStore(tmp_path / "node", **request.getfixturevalue("s3_options"))
    return MemoryBlobStore()


def _temp(tmp_path: Path, data: bytes, store: BlobStore | None = None) -> str:
    folder = getattr(store, "temp_dir", None) or str(tmp_path)
    path = os.path.join(folder, f"in-{len(os.listdir(folder))}-{os.urandom(4).hex()}.part")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def test_put_open_delete_roundtrip(store: BlobStore, tmp_path: Path) -> None:
    assert isinstance(store, BlobStore)
    src = _temp(tmp_path, b"DICM" * 1000, store)
    key = store.put_file(src)
    assert validate_key(key) == key and len(key) == 32
    assert not os.path.exists(src), "put_file takes ownership of the temp file"
    assert store.exists(key)
    with store.open(key) as fh:
        assert fh.read() == b"DICM" * 1000
    assert list(store.iter_keys()) == [key]
    store.delete(key)
    store.delete(key)  # already gone: no error
    assert not store.exists(key)
    assert list(store.iter_keys()) == []
    with pytest.raises(BlobNotFound):
        store.open(key)


def test_keys_are_random_and_hint_is_honoured(store: BlobStore, tmp_path: Path) -> None:
    keys = {store.put_file(_temp(tmp_path, b"same bytes", store)) for _ in range(5)}
    assert len(keys) == 5, "keys never depend on content unless asked"
    hint = "ab" * 32  # a SHA-256-like key
    assert store.put_file(_temp(tmp_path, b"x", store), key_hint=hint) == hint
    with pytest.raises(FileExistsError):
        store.put_file(_temp(tmp_path, b"y", store), key_hint=hint)
    with store.open(hint) as fh:
        assert fh.read() == b"x", "an existing blob is never rewritten"


def test_filesystem_layout_and_temp_dir(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    assert os.stat(store.temp_dir).st_dev == os.stat(store.root).st_dev
    key = store.put_file(_temp(tmp_path, b"data", store))
    assert store.path(key) == str(tmp_path / "blobs" / key[:2] / key[2:4] / f"{key}.dcm")
    assert os.path.isfile(store.path(key) or "")
    # foreign and misplaced files are not keys
    (tmp_path / "blobs" / "notes.txt").write_text("x")
    misplaced = tmp_path / "blobs" / key[:2] / key[2:4] / f"{'f' * 32}.dcm"
    misplaced.write_bytes(b"x")
    _temp(tmp_path, b"in flight", store)  # temp files are not blobs
    assert list(store.iter_keys()) == [key]
    assert store.purge_temp() == 1


def test_put_file_across_filesystems_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    real_replace = os.replace
    calls = []

    def replace(src: str, dst: str) -> None:
        calls.append(src)
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    src = _temp(tmp_path, b"elsewhere")
    key = store.put_file(src)
    assert not os.path.exists(src)
    with store.open(key) as fh:
        assert fh.read() == b"elsewhere"
    assert os.listdir(store.temp_dir) == []


HOSTILE_KEYS = [
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    "",
    "ab/../../../../etc/passwd",
    "0123456789abcdef0123456789abcdef/../x",
    "0123456789ABCDEF0123456789ABCDEF",  # upper case: not our alphabet
    "0123456789abcdef0123456789abcdef\n",
    "0123456789abcdef0123456789abcdef.dcm",
    "0123456789abcdef0123456789abcde",  # 31 digits
    "1.2.840.10008.5.1.4.1.1.2",  # a UID is never a key
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_refused(store: BlobStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidBlobKey):
        validate_key(key)
    for op in (store.open, store.path, store.delete, store.exists):
        with pytest.raises(InvalidBlobKey):
            op(key)
    src = _temp(tmp_path, b"payload", store)
    with pytest.raises(InvalidBlobKey):
        store.put_file(src, key_hint=key)
    assert os.path.exists(src), "a refused put leaves the source alone"
    assert list(store.iter_keys()) == []
    assert not (tmp_path / "etc").exists()


def test_non_string_key_refused(store: BlobStore) -> None:
    with pytest.raises(InvalidBlobKey):
        store.exists(None)  # type: ignore[arg-type]


def test_shared_directory_sync_covers_concurrent_callers(tmp_path, monkeypatch):
    """Each caller returns only after an fsync that started after its call; concurrent callers share.

    The first fsync is held until all eight callers have asked, so the sharing does not depend on
    timing: the first one covers nobody who asked after it started, the second covers everybody.
    """
    import threading

    from pacskit.store import blobs as blobs_module

    log: list[str] = []
    asked = threading.Semaphore(0)
    lock = threading.Lock()

    def recording_fsync(path: str, *, directory: bool = False) -> None:
        assert directory
        with lock:
            first = not log
            log.append("start")
        if first:
            for _ in range(8):
                assert asked.acquire(timeout=10)
        with lock:
            log.append("end")

    monkeypatch.setattr(blobs_module, "fsync_path", recording_fsync)
    shared = blobs_module.SharedDirectorySync()
    order: list[tuple[int, int]] = []  # (fsyncs started when asked, fsyncs ended when returned)

    def caller() -> None:
        with lock:
            started = log.count("start")
        asked.release()
        shared.sync(str(tmp_path))
        with lock:
            order.append((started, log.count("end")))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(order) == 8
    assert log == ["start", "end", "start", "end"]  # eight callers, two fsyncs
    for started, ended in order:
        assert ended > started  # an fsync that started after the call had ended before the return


@pytest.mark.parametrize("failing", ["file", "folder"])
def test_a_failed_fsync_leaves_no_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """The blob is renamed into place before its fsyncs: if one fails, put_file raises and the
    renamed file is removed again (no blob that was never durable stays in the store)."""
    import pacskit.store.blobs as blobs_module

    store = FilesystemBlobStore(tmp_path / "blobs")
    earlier = "ab" * 15 + "cd"  # same directory: it exists, so only the fsyncs after the rename run
    store.put_file(_temp(tmp_path, b"earlier", store), key_hint=earlier)

    flush = blobs_module.fsync_path

    def fail(path: str, *, directory: bool = False) -> None:
        if directory == (failing == "folder"):
            raise OSError(errno.EIO, "simulated I/O error", path)
        flush(path, directory=directory)

    monkeypatch.setattr(blobs_module, "fsync_path", fail)
    large = b"p" * (MAX_RECORD + 1)  # larger than the ingest log takes: flushed where it is
    with pytest.raises(OSError, match="simulated"):
        store.put_file(_temp(tmp_path, large, store), key_hint="ab" * 16)
    assert not store.exists("ab" * 16)
    assert [p.name for p in (tmp_path / "blobs").rglob("*.dcm")] == [earlier + ".dcm"]
    store.close()


def test_a_failed_log_flush_leaves_no_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small blob is made durable by the ingest log's flush: if it fails, put_file raises, the
    renamed file is removed, and start-up does not bring it back from the log."""
    store = FilesystemBlobStore(tmp_path / "blobs")
    store.prepare_ingest()
    earlier = store.put_file(_temp(tmp_path, b"earlier", store))
    assert earlier in set(iter_segment_keys(str(tmp_path / "blobs" / "log")))  # it went through the log

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(OSError, match="simulated"):
        store.put_file(_temp(tmp_path, b"payload", store), key_hint="ab" * 16)
    monkeypatch.undo()
    assert not store.exists("ab" * 16)
    assert FilesystemBlobStore(tmp_path / "blobs").replay_log() == 0  # a crash now: nothing comes back
    assert not store.exists("ab" * 16)
    assert [p.name for p in (tmp_path / "blobs").rglob("*.dcm")] == [earlier + ".dcm"]
    store.close()
