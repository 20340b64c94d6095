"""Blob storage: where the Part 10 files live, behind a small interface (like httpx transports).

A blob is one received file, kept byte-for-byte. The index refers to it by an opaque *key*: a random
hex id (or a content hash), never derived from UIDs or patient data, and always checked against
:data:`KEY_PATTERN` before it is turned into a path, so a hostile key (``../../etc/passwd``) can never
reach the filesystem.

Blobs are immutable: a key, once written, is never rewritten (an overwrite in the index writes a new
blob under a new key and deletes the old one afterwards).

* :class:`FilesystemBlobStore` keeps ``root/ab/cd/<key>.dcm``; :meth:`~FilesystemBlobStore.put_file`
  takes ownership of a complete temp file on the same filesystem (the network engine writes into
  :attr:`~FilesystemBlobStore.temp_dir`): ``os.replace`` it into place, then make it durable: a
  small blob by a record in the ingest log (:mod:`pacskit.store.ingestlog`: one flush, shared by
  concurrent puts), a large one by ``fdatasync`` of the file and ``fsync`` of its folder (shared by
  concurrent puts). When it returns, the blob survives a power failure (with ``durability="full"``,
  the default; see :data:`DURABILITY_MODES`).
* :class:`MemoryBlobStore` is the in-memory twin for unit tests.
"""

from __future__ import annotations

import concurrent.futures
import errno
import functools
import io
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from pacskit.store.ingestlog import LOCAL_DISK_TYPES, SEGMENT_SIZE, IngestLog, LogTicket, fs_type, fsync_path, replay

#: A key: 32 (random id) or 64 (SHA-256) lower-case hex digits. Nothing else is ever a key.
KEY_PATTERN = re.compile(r"\A(?:[0-9a-f]{32}|[0-9a-f]{64})\Z")

_SUFFIX = ".dcm"
_COPY_CHUNK = 1 << 20

#: ``[storage] durability``: what :meth:`FilesystemBlobStore.put_file` flushes before it returns.
#: ``full`` (the default, the durability contract of docs/store.md): the file's bytes and its
#: directory entry, or the ingest log's record of both (small blobs); ``file``: the bytes only (a
#: power cut may lose the name of an acknowledged file on a file system that does not order renames
#: with data, e.g. ext4 data=writeback, XFS, or one that drops unsynced directory changes); ``none``: nothing (acknowledged instances survive a crash of
#: the server, not of the machine: a power cut loses the last seconds of them).
DURABILITY_MODES = ("full", "file", "none")

#: blob keys start with the minute of their creation modulo this (see :func:`new_key`)
KEY_MINUTES = 1 << 16


class InvalidBlobKey(ValueError):
    """A key that does not match :data:`KEY_PATTERN` (never turned into a path)."""


class BlobNotFound(LookupError):
    """No blob has this key."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key, else raise :class:`InvalidBlobKey`."""
    if not isinstance(key, str) or KEY_PATTERN.match(key) is None:
        raise InvalidBlobKey(f"invalid blob key {key!r}")
    return key


def new_key() -> str:
    """A fresh key: 32 hex digits, the first 4 the minute of creation (modulo 2^16, about 45 days), the
    other 112 bits random.

    The filesystem store fans out on the first four digits, so the blobs of one minute share a
    directory: a young store creates (and syncs) one directory a minute instead of two per blob, and
    a burst of ingests keeps touching the same directory. Over 45 days every directory is reused; the
    random part keeps keys unique and unguessable.
    """
    minute = (int(time.time()) // 60) % KEY_MINUTES
    return f"{minute:04x}{secrets.token_hex(14)}"


def current_minute() -> int:
    """Minutes since the epoch: what :func:`new_key` puts (modulo 2^16) at the head of a key."""
    return int(time.time()) // 60


class PendingPut(Protocol):
    """A blob :meth:`BlobStore.start_put` put in place whose durability may still be on its way."""

    key: str
    #: The flush still on its way, as a future that is done when :meth:`wait` no longer blocks, or
    #: ``None`` when ``wait`` does (or joins) the flush itself or there is nothing left to wait for.
    #: A caller on an event loop awaits it (``asyncio.wrap_future``) before calling ``wait``, so that
    #: the loop goes on meanwhile.
    flushing: concurrent.futures.Future[None] | None

    def wait(self) -> None:
        """Return once the blob is durable (as :meth:`BlobStore.put_file` would have returned). Raises
        ``OSError`` when it could not be made durable; the blob is then left in place for the caller
        to delete (or to keep, if something already refers to it). Call it exactly once."""
        ...


class DurablePut:
    """The :class:`PendingPut` of a blob that was durable when it was put (nothing to wait for): what
    :meth:`BlobStore.start_put` gives on stores whose puts are durable when they return."""

    __slots__ = ("key",)
    flushing = None

    def __init__(self, key: str) -> None:
        self.key = key

    def wait(self) -> None:
        return None


class _FlushingPut:
    """A blob whose flush (its bytes, and its name in its folder) runs on the store's flusher threads
    (:meth:`FilesystemBlobStore.start_put`): ``wait`` joins it, and re-raises its ``OSError``."""

    __slots__ = ("key", "flushing")

    def __init__(self, key: str, flushing: concurrent.futures.Future[None]) -> None:
        self.key = key
        self.flushing: concurrent.futures.Future[None] | None = flushing

    def wait(self) -> None:
        assert self.flushing is not None
        self.flushing.result()


@runtime_checkable
class BlobStore(Protocol):
    """Where blobs are kept. Implementations must be thread-safe."""

    def put_file(self, src: str, key_hint: str | None = None) -> str:
        """Take ownership of the complete file ``src`` and store it durably; return its key.

        ``src`` is gone afterwards (moved or copied then deleted). ``key_hint`` asks for a given key
        (e.g. a content hash; it must match :data:`KEY_PATTERN`); a blob with that key must not exist
        (``FileExistsError``). Without a hint a random key is made.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """The blob's bytes, as a binary file object (caller closes it). ``BlobNotFound`` if absent."""
        ...

    def path(self, key: str) -> str | None:
        """The blob's local filesystem path if it has one (for zero-copy sending), else None."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; no error if it is already gone."""
        ...

    def exists(self, key: str) -> bool: ...

    def iter_keys(self) -> Iterator[str]:
        """Every stored key, in no particular order."""
        ...

    # Optional capabilities. Every store has these members; one without the capability answers
    # ``None`` (or 0), and the data store then does without it.

    def start_put(self, src: str, key_hint: str | None = None) -> PendingPut:
        """:meth:`put_file`, except that it may return before the blob is durable: the blob is in place
        under its key, and ``wait()`` of what it returns blocks until it is durable. The data store
        runs the index transaction in between, so that the blob's way to the disk and the
        transaction overlap (the row may then become durable before the blob: start-up removes
        such rows when the blob did not survive, ``DataStore.remove_unbacked_rows``). A store whose
        puts are durable when they return does the whole put here and returns a
        :class:`DurablePut`; a store without this member is used through :meth:`put_file`."""
        ...

    @property
    def temp_dir(self) -> str | None:
        """A folder on the blobs' own filesystem where received files may be written, so that
        :meth:`put_file` is a rename; ``None``: the system's temp folder (``put_file`` then copies)."""
        ...

    @property
    def journal_dir(self) -> str | None:
        """Where the ingest journal lives (crash recovery of blobs written but never indexed,
        :mod:`pacskit.store.journal`); ``None``: no journal, no such recovery."""
        ...

    def size(self, key: str) -> int | None:
        """The blob's size without reading it, or ``None`` when that is not cheap (it is then read)."""
        ...

    def purge_temp(self) -> int:
        """Delete incomplete files an earlier run left in :attr:`temp_dir` (at start-up, before any
        association); returns how many. 0 for a store without a temp folder."""
        ...

    def maybe_in_flight(self, key: str) -> bool:
        """True when a blob without an index row may be an ingest in flight that the journal cannot
        show: a store shared by several nodes, each journalling in its own local folder, answers True
        for blobs written recently. ``check`` counts such a blob in flight instead of as an orphan.
        False for a store that one server's journal covers."""
        ...


#: Entry point group of third-party blob stores: ``name = "package.module:factory"``, where
#: ``factory(root=Path, **options)`` returns a :class:`BlobStore` (``[storage] backend = "name"``).
BLOB_STORE_GROUP = "pacskit.blobstores"


def open_blob_store(backend: str, root: str | os.PathLike[str], options: Mapping[str, Any] | None = None,
                    *, durability: str = "full") -> BlobStore:
    """The blob store ``backend`` names (``[storage] backend`` in ``server.toml``): ``"filesystem"``
    (the default: :class:`FilesystemBlobStore` under ``root``), ``"memory"`` (:class:`MemoryBlobStore`,
    for tests: nothing survives the process), ``"s3"`` (:class:`pacskit.store.s3.S3BlobStore`, an
    S3-compatible object store; ``root`` is the node's local folder; needs the ``s3`` extra), the name of an entry point in :data:`BLOB_STORE_GROUP`,
    or ``"module:attribute"``. The factory is called as ``factory(root=root, **options)``.
    ``durability`` (:data:`DURABILITY_MODES`) applies to the filesystem store; an object store's
    durability is its own (a write is acknowledged when the store has it).
    Raises ``ValueError`` with one clear line for an unknown backend or options it does not take."""
    options = dict(options or {})
    if backend in ("filesystem", "memory"):
        if options:
            raise ValueError(f"blob store {backend!r} takes no options (got {', '.join(sorted(options))})")
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_MODES)}, not {durability!r}")
        return FilesystemBlobStore(root, durability=durability) if backend == "filesystem" else MemoryBlobStore()
    if backend == "s3":
        from pacskit.store.s3 import S3ConfigError, open_s3_blob_store

        try:
            return open_s3_blob_store(root=Path(root), **options)
        except TypeError as exc:
            raise ValueError(f"blob store 's3': {exc}") from exc
        except S3ConfigError as exc:
            raise ValueError(f"blob store 's3': {exc}") from exc
    if ":" in backend:
        import importlib

        module_name, _, attribute = backend.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"blob store {backend!r} cannot be loaded: {exc}") from exc
    else:
        from importlib.metadata import entry_points

        found = {ep.name: ep for ep in entry_points(group=BLOB_STORE_GROUP)}
        if backend not in found:
            known = ", ".join(sorted({"filesystem", "memory", "s3", *found}))
            raise ValueError(f"unknown blob store {backend!r} (known: {known}; or module:attribute)")
        factory = found[backend].load()
    try:
        return factory(root=Path(root), **options)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ValueError(f"blob store {backend!r}: {exc}") from exc


class SharedDirectorySync:
    """``fsync`` of a directory, shared by the threads that need one at the same time.

    A rename is durable once its directory has been fsynced *after* it. Under N parallel ingests
    into one bucket directory every caller would issue its own fsync, each forcing a journal commit
    of the file system, during which other threads' file creations and writes wait. Here a caller
    that finds an fsync of its directory running waits for it, then for the next one, which it runs
    itself or joins: one fsync covers every rename made before it started. A lone caller just
    fsyncs. An fsync that fails is not counted; its waiters try again themselves.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._state: dict[str, list[int]] = {}  # path -> [fsyncs started, last finished, running]

    def sync(self, path: str) -> None:
        with self._cond:
            state = self._state.setdefault(path, [0, 0, 0])
            needed = state[0] + 1  # the first fsync that starts after this call
            while state[1] < needed:
                if state[2]:
                    self._cond.wait()
                    continue
                state[2] = 1
                state[0] += 1
                ticket = state[0]
                self._cond.release()
                try:
                    fsync_path(path, directory=True)
                    done = True
                except BaseException:
                    done = False
                    raise
                finally:
                    self._cond.acquire()
                    state[2] = 0
                    if done:
                        state[1] = ticket  # one runs at a time, so they finish in order
                    self._cond.notify_all()


class FilesystemBlobStore:
    """Blobs as files under ``root``: ``root/ab/cd/<key>.dcm``, temp files in ``root/tmp``.

    ``root`` is created if needed. ``temp_dir`` is on the same filesystem, so moving a received temp
    file into place is a rename, not a copy. ``log_segment_size``: bytes per segment of the ingest
    log (:mod:`pacskit.store.ingestlog`; smaller segments are checkpointed more often).
    """

    def __init__(self, root: str | os.PathLike[str], *, durability: str = "full",
                 log_segment_size: int = SEGMENT_SIZE) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_MODES)}, not {durability!r}")
        self.durability = durability
        self.root = os.path.abspath(os.fspath(root))
        self._temp = os.path.join(self.root, "tmp")
        os.makedirs(self._temp, exist_ok=True)
        if durability == "full":  # the folders themselves survive a power cut (new ones, or not yet flushed)
            fsync_path(self.root, directory=True)
            fsync_path(os.path.dirname(self.root), directory=True)
        self._known_dirs: set[str] = set()
        self._dir_lock = threading.Lock()
        self._dir_syncs = SharedDirectorySync()
        self._flush_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._log: IngestLog | None = None  # made by the first put (durability "full")
        self._log_segment_size = log_segment_size

    def _flusher(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that flush folders while the caller flushes its file (made on first use)."""
        pool = self._flush_pool
        if pool is None:
            with self._dir_lock:
                if self._flush_pool is None:
                    self._flush_pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="blob-flush")
                pool = self._flush_pool
        return pool

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({self.root!r})"

    @property
    def temp_dir(self) -> str:
        """Where incoming temp files should be written (same filesystem as the blobs)."""
        return self._temp

    @functools.cached_property
    def on_local_disk(self) -> bool:
        """The blobs are on a file system of this machine's own disks (or memory), where a file
        operation takes microseconds: not FUSE, not a network file system (:data:`LOCAL_DISK_TYPES`)."""
        return fs_type(self.root) in LOCAL_DISK_TYPES

    @property
    def journal_dir(self) -> str:
        """Where :class:`~pacskit.store.DataStore` records blobs whose index row is not committed yet."""
        folder = os.path.join(self.root, "journal")
        os.makedirs(folder, exist_ok=True)
        return folder

    # paths -----------------------------------------------------------------------------------------

    def _file(self, key: str) -> str:
        validate_key(key)
        return os.path.join(self.root, key[:2], key[2:4], key + _SUFFIX)

    def _ensure_dir(self, key: str) -> str:
        """Create ``root/ab/cd`` if needed; every directory created is made durable in its parent."""
        leaf = os.path.join(self.root, key[:2], key[2:4])
        if leaf in self._known_dirs:
            return leaf
        with self._dir_lock:
            parent = self.root
            for part in (key[:2], key[2:4]):
                folder = os.path.join(parent, part)
                try:
                    os.mkdir(folder, 0o755)
                except FileExistsError:
                    pass
                else:
                    fsync_path(parent, directory=True)
                parent = folder
            self._known_dirs.add(leaf)
        return leaf

    # BlobStore ---------------------------------------------------------------------------------------

    def put_file(self, src: str, key_hint: str | None = None) -> str:
        pending = self._put(src, key_hint, background=False)
        try:
            pending.wait()
        except BaseException:
            self._drop(pending.key)  # not durable: the caller gets the error, and no blob is left behind
            raise
        return pending.key

    def start_put(self, src: str, key_hint: str | None = None) -> PendingPut:
        """Rename ``src`` into place and start making it durable; see :meth:`BlobStore.start_put`. A
        small blob's ingest log record is written here and its write-back started
        (``IngestLog.start(..., background=True)``); ``wait()`` runs or joins the log's flush (or takes
        the direct path below when the log could not cover it). A larger blob's file and folder are
        flushed on the flusher threads, started here: its ``flushing`` future says when."""
        return self._put(src, key_hint, background=True)

    def _put(self, src: str, key_hint: str | None, *, background: bool) -> PendingPut:
        """:meth:`start_put`; without ``background`` (:meth:`put_file`, which waits at once) a larger
        blob is flushed here, its file on this thread and its folder beside it, as no other work
        would overlap a flush in the background."""
        src = os.fspath(src)
        key = validate_key(key_hint) if key_hint is not None else new_key()
        dest = self._file(key)
        folder = self._ensure_dir(key)
        if key_hint is not None and os.path.exists(dest):
            raise FileExistsError(f"blob {key} already exists")
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # EXDEV: src on another filesystem, so copy then rename
                raise
            self._copy_in(src, dest)
            os.unlink(src)
        try:
            # Rename first, then flush: the blob is visible before it is durable, which nobody can
            # observe: no index row refers to it yet, and a crash in between leaves a journalled
            # blob without a row that recovery deletes (or restores, if it is complete).
            if self.durability == "full":
                # A small blob: one record in the ingest log, whose flush is shared by concurrent
                # puts (group commit), makes its bytes and its name durable (replayed at start-up).
                log = self.ingest_log()
                ticket = log.start(key, dest, background=True)
                if ticket is not None:
                    return _LoggedPut(self, key, folder, log, ticket)
                # A larger blob: its flushes run on the flusher threads while the caller goes on
                # (the hash and the index transaction; on an event loop, other associations).
                if background:
                    return _FlushingPut(key, self._flush_in_background(key, folder))
                self._flush_direct(key, folder)
            elif self.durability == "file":
                if background:
                    return _FlushingPut(key, self._flusher().submit(fsync_path, dest))
                fsync_path(dest)
        except BaseException:
            self._drop(key)
            raise
        return DurablePut(key)

    def _flush_direct(self, key: str, folder: str) -> None:
        """A blob's bytes and its name, flushed at the same time (the rename came first, so the file's
        flush commits the file system journal with the rename in it and the folder's has next to
        nothing left); the folder's fsync is shared with concurrent puts (SharedDirectorySync)."""
        name_flushed = self._flusher().submit(self._dir_syncs.sync, folder)
        try:
            fsync_path(self._file(key))
        finally:
            name_flushed.result()

    def _flush_in_background(self, key: str, folder: str) -> concurrent.futures.Future[None]:
        """The flushes of :meth:`_flush_direct`, each on a flusher thread (not one task waiting for
        the other, which could take every thread of the pool): a future done when both are, with
        the first error."""
        pool = self._flusher()
        parts = [pool.submit(self._dir_syncs.sync, folder), pool.submit(fsync_path, self._file(key))]
        both: concurrent.futures.Future[None] = concurrent.futures.Future()
        both.set_running_or_notify_cancel()
        left = [len(parts)]
        lock = threading.Lock()

        def one_done(part: concurrent.futures.Future[None]) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                error = next((e for e in (p.exception() for p in parts) if e is not None), None)
                if error is None:
                    both.set_result(None)
                else:
                    both.set_exception(error)

        for part in parts:
            part.add_done_callback(one_done)
        return both

    def _drop(self, key: str) -> None:
        try:
            if self._log is not None:
                self._log.forget(key)
            os.unlink(self._file(key))
        except FileNotFoundError:
            pass

    def ingest_log(self) -> IngestLog:
        """This process's ingest log (``root/log``), made on first use (again after :meth:`close`);
        its first segment is prepared in the background (:meth:`IngestLog.wait_ready`)."""
        log = self._log
        if log is None:
            with self._dir_lock:
                if self._log is None:
                    folder = os.path.join(self.root, "log")
                    if not os.path.isdir(folder):
                        os.makedirs(folder, exist_ok=True)
                        fsync_path(self.root, directory=True)
                    self._log = IngestLog(folder, self._file, segment_size=self._log_segment_size)
                log = self._log
        assert log is not None
        return log

    def prepare_ingest(self, timeout: float = 5.0) -> None:
        """With ``durability="full"``: start the ingest log and wait (up to ``timeout``) for its first
        segment, so that the first puts do not take the direct path."""
        if self.durability == "full":
            self.ingest_log().wait_ready(timeout)

    def replay_log(self) -> int:
        """Start-up, before anything else (``DataStore.recover``): bring back from the ingest logs of
        earlier processes the small blobs a power cut took, make every blob they name durable, and
        delete them. Returns how many blobs were rewritten. Only while nobody else writes here."""
        def valid(key: str) -> bool:
            return KEY_PATTERN.match(key) is not None

        return replay(os.path.join(self.root, "log"), self._file, self._ensure_dir, self._temp, valid)

    def close(self) -> None:
        """Checkpoint and delete this process's ingest log (its blobs are then durable on their own)."""
        with self._dir_lock:
            log, self._log = self._log, None
        if log is not None:
            log.close()

    def _copy_in(self, src: str, dest: str) -> None:
        tmp = os.path.join(self._temp, f"copy-{new_key()}.part")
        try:
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                while chunk := fin.read(_COPY_CHUNK):
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._file(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def path(self, key: str) -> str | None:
        return self._file(key)

    def delete(self, key: str) -> None:
        path = self._file(key)
        log = self._log
        if log is not None:  # its record must not bring it back at start-up (synced by sync_removals)
            log.forget(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._file(key))

    def size(self, key: str) -> int:
        try:
            return os.stat(self._file(key)).st_size
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def iter_keys(self) -> Iterator[str]:
        """Keys of the files that sit where their key says; anything else in ``root`` is ignored."""
        hex2 = re.compile(r"\A[0-9a-f]{2}\Z")
        for first in sorted(os.listdir(self.root)):
            if not hex2.match(first):
                continue  # tmp/ and anything foreign
            d1 = os.path.join(self.root, first)
            if not os.path.isdir(d1):
                continue
            for second in sorted(os.listdir(d1)):
                d2 = os.path.join(d1, second)
                if not hex2.match(second) or not os.path.isdir(d2):
                    continue
                for name in os.listdir(d2):
                    if not name.endswith(_SUFFIX):
                        continue
                    key = name[: -len(_SUFFIX)]
                    if KEY_PATTERN.match(key) and key[:2] == first and key[2:4] == second:
                        yield key

    def iter_keys_since(self, minute: int) -> Iterator[str] | None:
        """Keys of the blobs created since ``minute`` (minutes since the epoch, :func:`current_minute`;
        from a minute earlier, for clocks that differ by a little), plus any older ones that share
        their folders (folders are reused every 2^16 minutes, about 45 days). ``None`` when that is
        not a small part of the store (no point, a point older than 45 days or in the future): the
        caller lists everything. Start-up uses this to find the blobs newer than the index's last
        durable point (docs/store.md, "The durability contract")."""
        now = current_minute()
        if minute <= 0 or minute > now + 1 or now - minute >= KEY_MINUTES - 2:
            return None

        def keys() -> Iterator[str]:
            for m in range(minute - 1, now + 2):
                prefix = f"{m % KEY_MINUTES:04x}"
                folder = os.path.join(self.root, prefix[:2], prefix[2:])
                try:
                    names = os.listdir(folder)
                except FileNotFoundError:
                    continue
                for name in names:
                    key = name[: -len(_SUFFIX)]
                    if name.endswith(_SUFFIX) and KEY_PATTERN.match(key) and key[:4] == prefix:
                        yield key

        return keys()

    def mtime_ns(self, key: str) -> int:
        """When the blob's file was last written (nanoseconds; orders blobs by reception)."""
        return os.stat(self._file(key)).st_mtime_ns

    def sync_removals(self, keys: Iterable[str]) -> None:
        """Make the deletion of ``keys`` durable (fsync of their folders), so that a power cut cannot
        bring back a blob whose deletion was reported done (``durability="full"`` only)."""
        if self.durability != "full":
            return
        folders = {os.path.dirname(self._file(k)) for k in keys}
        for folder in sorted(folders):
            try:
                fsync_path(folder, directory=True)
            except FileNotFoundError:
                pass
        log = self._log
        if log is not None:  # the tombstones of deleted blobs still named in the ingest log
            log.sync()

    def maybe_in_flight(self, key: str) -> bool:
        """False: one server writes here, and its journal shows every ingest in flight."""
        return False

    def purge_temp(self) -> int:
        """Delete leftover temp files (call at start-up, before accepting associations)."""
        removed = 0
        for name in os.listdir(self._temp):
            try:
                os.unlink(os.path.join(self._temp, name))
                removed += 1
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass
        return removed


class _LoggedPut:
    """A small blob whose ingest log record is written and being flushed (:meth:`FilesystemBlobStore.start_put`)."""

    __slots__ = ("key", "_store", "_folder", "_log", "_ticket")
    flushing = None  # wait() joins (or leads) the log's group flush: well under a millisecond

    def __init__(self, store: FilesystemBlobStore, key: str, folder: str, log: IngestLog, ticket: LogTicket) -> None:
        self.key = key
        self._store = store
        self._folder = folder
        self._log = log
        self._ticket = ticket

    def wait(self) -> None:
        if not self._log.wait(self._ticket):  # a failed write before ours: the record cannot be trusted
            self._store._flush_direct(self.key, self._folder)


class MemoryBlobStore:
    """Blobs in a dict: the in-memory twin of :class:`FilesystemBlobStore` for unit tests."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryBlobStore({len(self._blobs)} blobs)"

    def put_file(self, src: str, key_hint: str | None = None) -> str:
        key = validate_key(key_hint) if key_hint is not None else new_key()
        with open(src, "rb") as fh:
            data = fh.read()
        with self._lock:
            if key in self._blobs:
                raise FileExistsError(f"blob {key} already exists")
            self._blobs[key] = data
        os.unlink(src)
        return key

    def start_put(self, src: str, key_hint: str | None = None) -> PendingPut:
        """:meth:`put_file` (nothing here outlives the process: there is nothing to wait for)."""
        return DurablePut(self.put_file(src, key_hint))

    def put_bytes(self, data: bytes, key_hint: str | None = None) -> str:
        key = validate_key(key_hint) if key_hint is not None else new_key()
        with self._lock:
            if key in self._blobs:
                raise FileExistsError(f"blob {key} already exists")
            self._blobs[key] = bytes(data)
        return key

    def open(self, key: str) -> BinaryIO:
        validate_key(key)
        try:
            return io.BytesIO(self._blobs[key])
        except KeyError:
            raise BlobNotFound(key) from None

    def path(self, key: str) -> str | None:
        validate_key(key)
        return None

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._blobs.pop(key, None)

    def exists(self, key: str) -> bool:
        validate_key(key)
        return key in self._blobs

    def size(self, key: str) -> int:
        validate_key(key)
        try:
            return len(self._blobs[key])
        except KeyError:
            raise BlobNotFound(key) from None

    @property
    def temp_dir(self) -> None:
        return None

    @property
    def journal_dir(self) -> None:
        return None

    def purge_temp(self) -> int:
        return 0

    def maybe_in_flight(self, key: str) -> bool:
        return False

    def iter_keys(self) -> Iterator[str]:
        with self._lock:
            keys = list(self._blobs)
        return iter(keys)
