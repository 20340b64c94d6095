"""The ingest log: one cheap, shared flush makes a small new blob durable (docs/store.md, "The durability contract").

Making a new file durable costs two flushes: its bytes (``fdatasync``, which on ext4 also commits the
file system's journal, since the file's size and blocks changed) and its name (``fsync`` of its
folder). A write into a file whose blocks are already allocated and written costs less: ``fdatasync``
then writes the data and flushes the disk's cache, with no journal commit at all. So a small blob is
made durable by a *record* in a log whose segments were zero-filled and flushed up front:

* ``put_file`` renames the received file into place (a page-cache change, not flushed), then
  :meth:`IngestLog.append` writes a record — its key, length, CRC-32, reception time and bytes — at
  the segment's next offset (``pwritev``) and waits until a flush covers it;
* **write-back ahead** (:meth:`IngestLog.start` with ``background``, ``FilesystemBlobStore.start_put``):
  the record is written and its write-back started (``sync_file_range``, no waiting) while the writer
  goes on (the data store runs the hash, the duplicate check and the index transaction meanwhile),
  then :meth:`IngestLog.wait` runs (or joins) the group-committed flush. A flusher thread that
  flushed while the writer worked was measured slower: in CPython it needs the GIL before and after
  its ``fdatasync``, and won it back only late from the writer's CPU work;
* **group commit**: one writer at a time flushes the segment (``fdatasync``) for every record written
  before it started; writers that arrive meanwhile wait for the next flush, which one of them runs.
  A lone association pays one flush per instance, concurrent ones share them. A writer is released
  only when every record *before* its own is written and flushed too, so after a power cut the log's
  valid records are a prefix: start-up reads records until the first one that is torn or belongs to an
  earlier use of the segment (each use has its own random *generation*, written in the segment's
  header and in each record);
* **checkpoint**: a full segment is sealed and a background thread makes its blobs durable themselves
  (``syncfs`` on file systems known to honour it — ext4, XFS, btrfs, f2fs — else ``fdatasync`` of each
  blob and ``fsync`` of their folders), then *retires* the segment (its header's generation set to 0,
  flushed) and reuses it. Retiring is done oldest first;
* **deleted blobs** must not come back: deleting a blob whose record is in a segment not yet retired
  writes a *tombstone* record (:meth:`IngestLog.forget`), flushed with the next flush or by
  :meth:`IngestLog.sync` (``FilesystemBlobStore.sync_removals``, which a deletion calls before it is
  reported done);
* **replay** (:func:`replay`, run by ``DataStore.recover`` before anything else at start-up): for each
  blob record of every segment left by earlier processes, the blob is checked (size and CRC-32) and
  rewritten from the record when it is missing or torn; every blob named is then flushed with its
  folder and the segment files are deleted.

Records larger than :data:`MAX_RECORD` bypass the log (``put_file`` flushes the blob and its folder, in
parallel): a large blob's own flush costs about what writing it twice would, and its folder's flush is
shared by concurrent puts. Until the first segment is ready (it is prepared by a background thread on
the first put) puts take that direct path too.

One log per process (``serve --workers N`` has one per worker), named ``<pid>-<random>-<n>.seg`` in
the log folder; a process that closes its store checkpoints and deletes its own segments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger("pacskit.store")

#: bytes per segment file (its first HEADER_SIZE bytes are the header); a process's first segment is
#: FIRST_SEGMENT_SIZE, so that a store that takes a few instances never writes megabytes of zeros
SEGMENT_SIZE = 8 << 20
FIRST_SEGMENT_SIZE = 1 << 20
#: segments a process keeps at most (one in use, one ready, the rest being checkpointed)
MAX_SEGMENTS = 3
#: the largest blob that goes through the log; larger ones are flushed where they are (their bytes
#: would be written twice). put_file A/B on the benchmark's VM (load ~3, median of 3): 9 KB through the
#: log 0.76 ms, direct 0.84; 32 KB 0.74 / 0.76; 64 KB 0.95 / 0.95 but 0.69 / 0.59 ms of CPU; 128 KB
#: 0.87 / 0.87 with 0.62 / 0.57 ms of CPU: from 64 KB on the log no longer pays for itself.
MAX_RECORD = 64 << 10
HEADER_SIZE = 4096
SEGMENT_SUFFIX = ".seg"

_SEG_MAGIC = b"PKSEG001"
_SEG_HEADER = struct.Struct("<8sQI")  # magic, generation (0: retired), CRC-32 of the two
_REC_MAGIC = b"PKR1"
_REC = struct.Struct("<4sB3xQQQI64sI")  # magic, kind, generation, length, time_ns, data CRC, key, header CRC
_REC_SIZE = 112
assert _REC.size <= _REC_SIZE
_BLOB, _TOMBSTONE = 1, 2
_ZEROS = bytes(1 << 20)

#: file systems whose ``syncfs`` flushes every file's data and names (a FUSE file system gets nothing)
SYNCFS_TYPES = frozenset({"ext4", "ext3", "xfs", "btrfs", "f2fs"})
#: file systems on this machine's own disks (or memory), whose operations take microseconds; not FUSE
#: (a program answers each operation) nor network file systems (each is a round trip)
LOCAL_DISK_TYPES = SYNCFS_TYPES | {"ext2", "tmpfs"}


def _pad(n: int) -> int:
    return (n + 7) & ~7


def _record(kind: int, gen: int, key: str, data: bytes | memoryview, time_ns: int) -> bytes:
    head = _REC.pack(_REC_MAGIC, kind, gen, len(data), time_ns, zlib.crc32(data), key.encode("ascii"), 0)
    crc = zlib.crc32(head[:-4])
    return head[:-4] + struct.pack("<I", crc) + bytes(_REC_SIZE - _REC.size)


def _segment_header(gen: int) -> bytes:
    head = _SEG_MAGIC + struct.pack("<Q", gen)
    return head + struct.pack("<I", zlib.crc32(head))


def fs_type(path: str) -> str:
    """The type of the file system ``path`` is on (from /proc/self/mountinfo; "" if unknown)."""
    path = os.path.realpath(path)
    best, kind = -1, ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                parts = left.split()
                if len(parts) < 5 or not right:
                    continue
                mount = parts[4].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > best:
                    best, kind = len(mount), right.split()[0]
    except OSError:
        return ""
    return kind


_libc: ctypes.CDLL | None = None
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)``: start writing these bytes to the disk, without
    waiting and without any durability (the flush does that). A hint: nothing if it is missing."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.sync_file_range(fd, ctypes.c_longlong(offset), ctypes.c_longlong(length),
                              ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))
    except (AttributeError, OSError):
        pass


def syncfs(path: str) -> None:
    """``syncfs(2)`` of the file system holding ``path`` (Python has no binding). Raises OSError."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def fsync_path(path: str, *, directory: bool = False) -> None:
    """``fsync`` (a folder: its names) or ``fdatasync`` (a file: its bytes) of ``path``."""
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY | os.O_CLOEXEC)
    try:
        if directory:
            os.fsync(fd)
        else:
            os.fdatasync(fd)
    finally:
        os.close(fd)


@dataclass(eq=False)
class _Segment:
    path: str
    fd: int
    size: int
    gen: int = 0
    state: str = "free"  # free -> live -> sealed -> free
    reserved: int = HEADER_SIZE  # next record offset
    written: int = HEADER_SIZE  # every record below is written
    durable: int = HEADER_SIZE  # every record below is written and flushed
    done: dict[int, int] = field(default_factory=dict)  # written records above ``written``: start -> end
    failed_at: int | None = None  # a write or flush failed here: no record from it on is covered
    flushing: bool = False
    pending: int = 0  # writers between reserving and their end (durable, or failed)
    keys: list[str] = field(default_factory=list)  # blob records, in order


@dataclass(frozen=True, slots=True)
class LogTicket:
    """A record written by :meth:`IngestLog.start`, to be waited for with :meth:`IngestLog.wait`."""

    segment: _Segment
    end: int


class IngestLog:
    """This process's ingest log under ``folder``; ``blob_path(key)`` names a blob's file."""

    def __init__(self, folder: str, blob_path: Callable[[str], str], *, segment_size: int = SEGMENT_SIZE,
                 max_segments: int = MAX_SEGMENTS, use_syncfs: bool | None = None) -> None:
        self.folder = folder
        self._blob_path = blob_path
        self._segment_size = segment_size
        self._max_segments = max_segments
        self._syncfs = fs_type(folder) in SYNCFS_TYPES if use_syncfs is None else use_syncfs
        self._prefix = f"{os.getpid()}-{secrets.token_hex(3)}-"
        self._cond = threading.Condition(threading.Lock())
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None
        self._sealed: list[_Segment] = []  # oldest first
        self._live: dict[str, _Segment] = {}  # key -> segment of its blob record (not yet retired)
        self._tombstones: dict[_Segment, int] = {}  # segment -> end of its last tombstone not yet synced
        self._closed = False
        #: flushes of records (group commits), records made durable by them, segments retired
        self.flushes = 0
        self.records = 0
        self.checkpoints = 0
        self._wake = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="pacskit-ingestlog", daemon=True)
        self._keeper.start()
        self._wake.set()

    @property
    def uses_syncfs(self) -> bool:
        """Checkpoints flush with one ``syncfs`` (else a flush per blob and folder)."""
        return self._syncfs

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until a segment can take records (a server calls this at start, so that its first
        C-STOREs already go through the log); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._current is not None or any(s.state == "ready" for s in self._segments), timeout)

    # the write path -------------------------------------------------------------------------------------

    def append(self, key: str, path: str) -> bool:
        """Record the blob ``key`` (the complete file at ``path``) and return once the record is durable.

        ``False`` when the log cannot take it (too large, no segment ready, a failed write): the caller
        then makes the blob durable itself. Raises ``OSError`` when the log's flush failed."""
        ticket = self.start(key, path)
        return ticket is not None and self.wait(ticket)

    def start(self, key: str, path: str, *, background: bool = False) -> LogTicket | None:
        """Write the record of the blob ``key`` (the complete file at ``path``) without waiting for its
        flush; :meth:`wait` then waits for it. Every ticket must be waited for once (until then the
        segment cannot be checkpointed). ``background``: the record's write-back to the disk starts
        now (``sync_file_range``), so that it runs while the caller does other work
        (``FilesystemBlobStore.start_put``) and the flush in :meth:`wait` has less left to do.
        ``None`` when the log cannot take the blob (too large, no segment ready, a failed write):
        nothing to wait for, the caller makes the blob durable itself."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size > MAX_RECORD:
                return None
            data = os.read(fd, size + 1)
        finally:
            os.close(fd)
        if len(data) != size:
            return None  # changing under us: not ours to log
        length = _REC_SIZE + _pad(size)
        with self._cond:
            seg = self._current
            room = seg is not None and seg.failed_at is None and (
                seg.reserved + length + _REC_SIZE * (len(seg.keys) + 1) <= seg.size)
            if not room:
                if seg is not None:
                    self._seal(seg)
                seg = self._current = self._take_ready()
                if seg is None or seg.reserved + length + _REC_SIZE > seg.size:
                    return None
            assert seg is not None
            start = seg.reserved
            seg.reserved += length
            seg.pending += 1
            seg.keys.append(key)
            self._live[key] = seg
        record = _record(_BLOB, seg.gen, key, data, time.time_ns())
        written = False
        try:
            written = self._write(seg, start, [record, data, bytes(_pad(size) - size)])
        finally:
            if not written:
                self._end(seg, False)
        if not written:
            return None
        if background:
            # The record's pages start towards the disk now; the flush in wait() then only waits for
            # that write and the disk cache's flush (a 9 KB record on this VM's ext4: ~75 us left of
            # ~130, after ~150 us of other work).
            _start_writeback(seg.fd, start, length)
        return LogTicket(seg, start + length)

    def wait(self, ticket: LogTicket) -> bool:
        """Return once the record of ``ticket`` is durable (``True``); ``False`` when a failed write
        before it leaves it uncovered (the caller makes the blob durable itself). Raises ``OSError``
        when the log's flush failed."""
        durable = False
        try:
            with self._cond:
                durable = self._wait_durable(ticket.segment, ticket.end)
            return durable
        finally:
            self._end(ticket.segment, durable)

    def _end(self, seg: _Segment, durable: bool) -> None:
        with self._cond:
            seg.pending -= 1
            self.records += durable
            self._cond.notify_all()

    def forget(self, key: str) -> None:
        """The blob ``key`` is being deleted: write a tombstone so that start-up does not bring it back
        from a segment not yet retired (flushed by the next flush, or :meth:`sync`)."""
        with self._cond:
            seg = self._live.pop(key, None)
            if seg is None:
                return
            # Written even into a segment whose flush failed: its record may still be on disk.
            start = seg.reserved
            seg.reserved += _REC_SIZE  # room kept by append: a tombstone always fits
            seg.pending += 1
        try:
            self._write(seg, start, [_record(_TOMBSTONE, seg.gen, key, b"", time.time_ns())])
            with self._cond:
                self._tombstones[seg] = max(self._tombstones.get(seg, 0), start + _REC_SIZE)
        finally:
            with self._cond:
                seg.pending -= 1
                self._cond.notify_all()

    def sync(self) -> None:
        """Make every tombstone written so far durable."""
        with self._cond:
            todo = list(self._tombstones.items())
            self._tombstones.clear()
        for seg, end in todo:
            with self._cond:
                ok = self._wait_durable(seg, end)
            if not ok:  # the segment failed: flush it whole, what was written is enough
                os.fdatasync(seg.fd)

    def _write(self, seg: _Segment, start: int, parts: list[bytes]) -> bool:
        end = start + sum(len(p) for p in parts)
        try:
            written = os.pwritev(seg.fd, parts, start)
            if written != end - start:
                raise OSError(f"short write to the ingest log ({written} of {end - start} bytes)")
        except OSError as exc:
            log.error("ingest log %s: write failed (%s); puts flush their blobs directly", seg.path, exc)
            with self._cond:
                seg.failed_at = start if seg.failed_at is None else min(seg.failed_at, start)
                self._cond.notify_all()
            return False
        with self._cond:
            seg.done[start] = end
            while seg.written in seg.done:
                seg.written = seg.done.pop(seg.written)
            self._cond.notify_all()
        return True

    @staticmethod
    def _flush_records(fd: int) -> None:
        """The one flush an acknowledgement waits for: the records written so far become durable.
        (A method of its own so that the power-loss tests can take it away and see acknowledged
        blobs lost: tests/reliability/test_ingestlog_power_loss.py.)"""
        os.fdatasync(fd)

    def _wait_durable(self, seg: _Segment, end: int) -> bool:
        """Group commit (call with the lock held): wait until the records below ``end`` are flushed,
        flushing them if nobody is. False if a failed write comes before ``end``."""
        while seg.durable < end:
            if seg.failed_at is not None and seg.failed_at < end:
                return False
            if seg.flushing or seg.written < end:
                self._cond.wait()
                continue
            self._flush_locked(seg)
        return True

    def _flush_locked(self, seg: _Segment) -> None:
        """Flush every record written so far (lock held on entry and on return, released meanwhile)."""
        seg.flushing = True
        target = seg.written
        self._cond.release()
        try:
            self._flush_records(seg.fd)
        except OSError:
            self._cond.acquire()
            seg.flushing = False
            seg.failed_at = seg.durable if seg.failed_at is None else min(seg.failed_at, seg.durable)
            self._cond.notify_all()
            raise
        self._cond.acquire()
        seg.flushing = False
        seg.durable = max(seg.durable, target)
        self.flushes += 1
        self._cond.notify_all()

    # segments -------------------------------------------------------------------------------------------

    def _take_ready(self) -> _Segment | None:
        """A free segment, made live (lock held); None if none is ready (the keeper prepares one)."""
        self._wake.set()
        for seg in self._segments:
            if seg.state == "ready":
                seg.state = "live"
                return seg
        return None

    def _seal(self, seg: _Segment) -> None:
        if seg.state == "live":
            seg.state = "sealed"
            self._sealed.append(seg)
            if self._current is seg:
                self._current = None
            self._wake.set()

    def _keep(self) -> None:
        """The keeper thread: keep one segment ready, checkpoint and retire sealed ones."""
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                while True:
                    with self._cond:
                        if self._closed:
                            return
                        sealed = self._sealed[0] if self._sealed else None
                        ready = any(s.state == "ready" for s in self._segments)
                    if sealed is not None:
                        self._checkpoint(sealed)
                        continue
                    if not ready and not self._prepare():
                        break
                    if ready:
                        break
            except Exception as exc:  # the direct path covers puts meanwhile
                log.error("ingest log: %s", exc)

    def _prepare(self) -> bool:
        """Make a free segment ready (a new one zero-filled, or a retired one with a new generation)."""
        with self._cond:
            seg = next((s for s in self._segments if s.state == "free"), None)
            if seg is None and len(self._segments) >= self._max_segments:
                return False
        if seg is None:
            path = os.path.join(self.folder, f"{self._prefix}{len(self._segments)}{SEGMENT_SUFFIX}")
            size = self._segment_size if self._segments else min(FIRST_SEGMENT_SIZE, self._segment_size)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                # Written, not fallocated: on ext4 a write into fallocated (unwritten) blocks is a
                # metadata change, and each flush would commit the journal again.
                for offset in range(0, size, len(_ZEROS)):
                    os.pwrite(fd, _ZEROS[: min(len(_ZEROS), size - offset)], offset)
                os.fdatasync(fd)
                fsync_path(self.folder, directory=True)
            except BaseException:
                os.close(fd)
                os.unlink(path)
                raise
            seg = _Segment(path, fd, size)
            with self._cond:
                self._segments.append(seg)
        gen = int.from_bytes(secrets.token_bytes(8), "little") | 1
        os.pwrite(seg.fd, _segment_header(gen), 0)
        os.fdatasync(seg.fd)
        with self._cond:
            seg.gen = gen
            seg.reserved = seg.written = seg.durable = HEADER_SIZE
            seg.done.clear()
            seg.failed_at = None
            seg.keys = []
            seg.state = "ready"
            self._cond.notify_all()
        return True

    def _checkpoint(self, seg: _Segment) -> None:
        """Make the blobs of a sealed segment durable on their own, then retire it (oldest first)."""
        with self._cond:
            while seg.pending:
                self._cond.wait()
            keys = list(seg.keys)
        if self._syncfs:
            syncfs(self.folder)
        else:
            folders: set[str] = set()
            for key in keys:
                path = self._blob_path(key)
                try:
                    fsync_path(path)
                except FileNotFoundError:  # deleted meanwhile
                    pass
                folders.add(os.path.dirname(path))
            for folder in sorted(folders):
                try:
                    fsync_path(folder, directory=True)
                except FileNotFoundError:
                    pass
        os.pwrite(seg.fd, _segment_header(0), 0)
        os.fdatasync(seg.fd)
        with self._cond:
            for key in keys:
                if self._live.get(key) is seg:
                    del self._live[key]
            while seg.pending:  # tombstones written into it meanwhile finish first
                self._cond.wait()
            self._tombstones.pop(seg, None)
            self.checkpoints += 1
            seg.state = "free"
            self._sealed.remove(seg)
            self._cond.notify_all()

    def close(self) -> None:
        """Checkpoint every segment, delete this process's segment files and stop the keeper."""
        with self._cond:
            if self._closed:
                return
            if self._current is not None:
                self._seal(self._current)
            self._closed = True
            self._wake.set()
        self._keeper.join()
        segments, self._segments = self._segments, []
        try:
            # If a checkpoint fails, not every blob is durable on its own: the segments stay, and the
            # next start replays them.
            for seg in list(self._sealed):
                self._checkpoint(seg)
        finally:
            for seg in segments:
                try:
                    os.close(seg.fd)  # released even when it reports an error (EIO from a dead disk)
                except OSError as exc:
                    log.warning("ingest log %s: %s", seg.path, exc)
        for seg in segments:
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
        if segments:
            fsync_path(self.folder, directory=True)
        if self.records:
            log.info("ingest log closed: %d records made durable by %d flushes (%.2f per record)",
                     self.records, self.flushes, self.flushes / self.records)


# start-up -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A valid blob record of a segment: where its bytes are in the segment file."""

    key: str
    offset: int
    length: int
    crc: int
    time_ns: int


def read_segment(path: str) -> tuple[list[LogRecord], set[str]]:
    """The blob records and the tombstoned keys of a segment file (nothing if it is retired or not
    a segment). Reading stops at the first record that is torn or of an earlier generation."""
    with open(path, "rb") as fh:
        data = fh.read()
    records: list[LogRecord] = []
    tombstones: set[str] = set()
    if len(data) < HEADER_SIZE:
        return records, tombstones
    magic, gen, crc = _SEG_HEADER.unpack_from(data, 0)
    if magic != _SEG_MAGIC or crc != zlib.crc32(data[:16]) or gen == 0:
        return records, tombstones
    offset = HEADER_SIZE
    while offset + _REC_SIZE <= len(data):
        rmagic, kind, rgen, length, time_ns, dcrc, raw_key, hcrc = _REC.unpack_from(data, offset)
        if rmagic != _REC_MAGIC or rgen != gen or hcrc != zlib.crc32(data[offset:offset + _REC.size - 4]):
            break
        body = offset + _REC_SIZE
        if body + length > len(data) or zlib.crc32(data[body:body + length]) != dcrc:
            break
        key = raw_key.rstrip(b"\0").decode("ascii", "replace")
        if kind == _BLOB:
            records.append(LogRecord(key, body, length, dcrc, time_ns))
        elif kind == _TOMBSTONE:
            tombstones.add(key)
        else:
            break
        offset = body + _pad(length)
    return records, tombstones


def segment_files(folder: str) -> list[str]:
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    return [os.path.join(folder, n) for n in names if n.endswith(SEGMENT_SUFFIX)]


def _blob_intact(path: str, record: LogRecord) -> bool:
    try:
        with open(path, "rb") as fh:
            data = fh.read(record.length + 1)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return len(data) == record.length and zlib.crc32(data) == record.crc


def replay(folder: str, blob_path: Callable[[str], str], ensure_dir: Callable[[str], str],
           temp_dir: str, valid_key: Callable[[str], bool]) -> int:
    """Bring back, from the segments earlier processes left in ``folder``, the blobs a power cut took
    (missing or torn), make every blob they name durable, and delete the segments. Returns how many
    blobs were rewritten. Only while nobody else writes to the store (start-up recovery)."""
    rewritten = 0
    paths = segment_files(folder)
    if not paths:
        return 0
    folders: set[str] = set()
    flushed: set[str] = set()
    for seg_path in paths:
        records, tombstones = read_segment(seg_path)
        if not records:
            continue
        with open(seg_path, "rb") as seg:
            for record in records:
                if record.key in tombstones or not valid_key(record.key):
                    continue
                target = blob_path(record.key)
                folders.add(ensure_dir(record.key))
                if not _blob_intact(target, record):
                    seg.seek(record.offset)
                    data = seg.read(record.length)
                    tmp = os.path.join(temp_dir, f"replay-{record.key}.part")
                    with open(tmp, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fdatasync(out.fileno())
                    os.utime(tmp, ns=(record.time_ns, record.time_ns))  # its place in the reception order
                    os.replace(tmp, target)
                    rewritten += 1
                    log.debug("blob %s restored from the ingest log", record.key)
                flushed.add(target)
    # Every blob named is made durable before its records go (after a crash of the process alone,
    # the intact ones may still be only in the page cache).
    if fs_type(folder) in SYNCFS_TYPES:
        syncfs(folder)
    else:
        for path in sorted(flushed):
            fsync_path(path)
        for path in sorted(folders):
            fsync_path(path, directory=True)
    for seg_path in paths:
        os.unlink(seg_path)
    fsync_path(folder, directory=True)
    if rewritten:
        log.warning("restored %d blobs from the ingest log (a power cut took them; %d checked)",
                    rewritten, len(flushed))
    return rewritten


def iter_segment_keys(folder: str) -> Iterator[str]:
    """Keys of the blob records in every segment of ``folder`` (diagnostics and tests)."""
    for path in segment_files(folder):
        for record in read_segment(path)[0]:
            yield record.key
