"""The crash journal of ingests in flight: which new blob keys may lack an index row after a crash.

A blob becomes visible (durably renamed into place) before its index row commits; a crash in between
leaves a complete, never acknowledged blob without a row. Ingest records the new key here first and
clears it once the transaction has ended. Start-up recovery (:meth:`pacskit.store.DataStore.recover`)
first restores the rows of blobs newer than the index's durable point (a complete blob is indexed,
one cut short deleted), then deletes each recorded blob that still has no row.

Each process keeps one *slot file* in the journal folder (``inflight-<pid>-<random>``): fixed-size
slots, one per ingest in flight, written with ``pwrite`` at an offset of a file allocated up front.
Recording and clearing a key is a write to the page cache: no file is created, renamed or removed per
instance. (The first design created and removed a marker file per ingest; under fsync traffic each
creation waited for the file system's journal and cost as much as an fsync.)

Nothing here is fsynced, on purpose: the journal must survive a crash of the process (kill -9, the
OOM killer), and the kernel keeps what was written. After a power failure a record may be lost while
its blob survives; start-up indexes that blob if it is complete (``DataStore.restore_index``).
Acknowledged instances never depend on the journal.

Recovery is for when nobody else writes (the service manager and ``serve --workers`` recover once,
before any worker starts): it reads every slot file and the marker files of older versions.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator

#: bytes per slot: a key (at most SLOT_SIZE - 1 bytes of ASCII), zero-padded; all zero = free
SLOT_SIZE = 128
#: slots allocated at a time (the file grows by this many when every slot is busy)
SLOTS_PER_EXTENT = 256
SLOT_FILE_PREFIX = "inflight-"


class IngestJournal:
    """This process's slot file. Thread-safe; :meth:`close` removes the file (nothing is in flight)."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, f"{SLOT_FILE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._slots = 0
        self._grow()

    def _grow(self) -> None:
        size = (self._slots + SLOTS_PER_EXTENT) * SLOT_SIZE
        try:
            os.posix_fallocate(self._fd, 0, size)  # blocks allocated now, not on the ingest path
        except OSError:  # a file system without fallocate: a sparse file is still correct
            os.ftruncate(self._fd, size)
        self._free.extend(range(self._slots + SLOTS_PER_EXTENT - 1, self._slots - 1, -1))
        self._slots += SLOTS_PER_EXTENT

    def begin(self, key: str) -> int:
        """Record ``key`` as in flight; returns the slot to pass to :meth:`end`."""
        data = key.encode("ascii")
        if not data or len(data) >= SLOT_SIZE or b"\0" in data:
            raise ValueError(f"blob key not journalable: {key!r}")
        with self._lock:
            if not self._free:
                self._grow()
            slot = self._free.pop()
        os.pwrite(self._fd, data.ljust(SLOT_SIZE, b"\0"), slot * SLOT_SIZE)
        return slot

    def end(self, slot: int) -> None:
        """The ingest of the key in ``slot`` has ended (committed, or its blob deleted)."""
        os.pwrite(self._fd, bytes(SLOT_SIZE), slot * SLOT_SIZE)
        with self._lock:
            self._free.append(slot)

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def journal_files(folder: str, *, skip: str | None = None) -> list[str]:
    """Every journal file in ``folder`` (slot files and old-style markers) but ``skip`` (one in use)."""
    return [path for name in sorted(os.listdir(folder)) if (path := os.path.join(folder, name)) != skip]


def recorded_keys(path: str) -> Iterator[str]:
    """The keys a journal file records: the busy slots of a slot file, or the name of an old-style
    marker file (one empty file per key)."""
    name = os.path.basename(path)
    if not name.startswith(SLOT_FILE_PREFIX):
        yield name
        return
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return
    for offset in range(0, len(data) - SLOT_SIZE + 1, SLOT_SIZE):
        slot = data[offset:offset + SLOT_SIZE]
        if slot[0]:
            yield slot.split(b"\0", 1)[0].decode("ascii", "replace")
