"""The crash journal of ingests in flight (slot files): what recovery removes and what it keeps."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pacskit.store import DataStore, FilesystemBlobStore
from pacskit.store.blobs import new_key
from pacskit.store.journal import SLOT_SIZE, SLOTS_PER_EXTENT, IngestJournal, journal_files, recorded_keys

from ._util import stage


def recorded(folder: str) -> list[str]:
    return sorted(k for path in journal_files(folder) for k in recorded_keys(path))


def test_slots_are_recorded_cleared_and_reused(tmp_path: Path) -> None:
    journal = IngestJournal(str(tmp_path))
    keys = [new_key() for _ in range(3)]
    slots = [journal.begin(k) for k in keys]
    assert recorded(str(tmp_path)) == sorted(keys)
    journal.end(slots[1])
    assert recorded(str(tmp_path)) == sorted([keys[0], keys[2]])
    assert journal.begin(new_key()) == slots[1]  # a free slot is reused: the file does not grow
    assert os.path.getsize(journal.path) == SLOTS_PER_EXTENT * SLOT_SIZE
    journal.close()
    assert not os.path.exists(journal.path)


def test_the_file_grows_when_every_slot_is_busy(tmp_path: Path) -> None:
    journal = IngestJournal(str(tmp_path))
    keys = [new_key() for _ in range(SLOTS_PER_EXTENT + 5)]
    for k in keys:
        journal.begin(k)
    assert os.path.getsize(journal.path) == 2 * SLOTS_PER_EXTENT * SLOT_SIZE
    assert recorded(str(tmp_path)) == sorted(keys)
    journal.close()


def test_concurrent_begin_and_end_never_share_a_slot(tmp_path: Path) -> None:
    journal = IngestJournal(str(tmp_path))
    held: set[int] = set()
    lock = threading.Lock()
    clashes: list[int] = []

    def work() -> None:
        for _ in range(300):
            slot = journal.begin(new_key())
            with lock:
                if slot in held:
                    clashes.append(slot)
                held.add(slot)
            with lock:
                held.discard(slot)
            journal.end(slot)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == []
    assert recorded(str(tmp_path)) == []
    journal.close()


@pytest.mark.parametrize("key", ["", "x" * SLOT_SIZE, "a\0b", "é"])
def test_keys_that_cannot_be_recorded_are_refused(tmp_path: Path, key: str) -> None:
    journal = IngestJournal(str(tmp_path))
    with pytest.raises((ValueError, UnicodeEncodeError)):
        journal.begin(key)
    journal.close()


def test_recovery_removes_unreferenced_journalled_blobs_and_keeps_indexed_ones(tmp_path: Path) -> None:
    """A process killed mid-ingest leaves its slot file: the next start deletes the blobs recorded in
    it that have no row (never acknowledged), keeps those that do, and removes the journal files;
    marker files of older versions are read too."""
    url = f"sqlite:///{tmp_path / 'index.db'}"
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    store = DataStore.open(url, blobs)
    stored = store.ingest(stage(store, "CT_small.dcm"), source_ae="MOD")
    # what a crash between the rename and the commit leaves: blobs in place, recorded, without rows
    orphan, old_style = new_key(), new_key()
    for key in (orphan, old_style):
        with open(tmp_path / "x.dcm", "wb") as fh:
            fh.write(b"never acknowledged")
        blobs.put_file(str(tmp_path / "x.dcm"), key_hint=key)
    dead = IngestJournal(blobs.journal_dir)  # the slot file of a process that was killed
    dead.begin(orphan)
    dead.begin(stored.blob_key)  # committed, then killed before the slot was cleared
    idle = IngestJournal(blobs.journal_dir)  # killed while nothing was in flight: an empty slot file
    Path(blobs.journal_dir, old_style).touch()
    store.close()
    assert os.path.exists(dead.path) and os.path.exists(idle.path)  # close() removes only its own file

    reopened = DataStore.open(url, blobs)
    try:
        assert not blobs.exists(orphan) and not blobs.exists(old_style)
        assert blobs.exists(stored.blob_key)
        assert os.listdir(blobs.journal_dir) == []
        assert reopened.check().ok
    finally:
        reopened.close()


def test_ingest_leaves_no_key_recorded(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    with DataStore.open(f"sqlite:///{tmp_path / 'index.db'}", blobs) as store:
        store.ingest(stage(store, "CT_small.dcm"), source_ae="MOD")
        store.ingest(stage(store, "CT_small.dcm"), source_ae="MOD")  # a duplicate
        assert recorded(blobs.journal_dir) == []
        (name,) = os.listdir(blobs.journal_dir)  # one slot file, however many ingests
        assert name.startswith("inflight-")
    assert os.listdir(blobs.journal_dir) == []
