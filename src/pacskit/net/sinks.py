"""Where incoming datasets go while they arrive (reading and writing Part 10 files is :mod:`pacskit.dicom.part10`).

An incoming dataset is handed to a :class:`DatasetSink` fragment by fragment as the bytes come off the
socket, so a multi-GB instance never sits in memory. The engine picks a sink per message through
:meth:`pacskit.net.services.Services.open_sink`: C-STORE requests go to :class:`Part10FileSink` (a
temporary Part 10 file: preamble, file meta information built from the command and the presentation
context, then the dataset bytes exactly as received); everything else (identifiers, N-service
attribute lists) to :class:`MemorySink` with a size cap.

A sink that is aborted (A-ABORT mid-dataset, connection lost, cap exceeded) removes what it wrote:
nothing half-received is ever left behind.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pacskit.dicom.codec import decode_dataset
from pacskit.net.errors import DimseError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydicom.dataset import Dataset


_PID = os.getpid()
_COUNTER = itertools.count()


class DatasetTooLarge(DimseError):
    """An incoming dataset exceeded the sink's size cap."""


class DatasetSink(Protocol):
    """Receives one dataset's bytes; exactly one of :meth:`finish` or :meth:`abort` is called last."""

    def write(self, chunk: memoryview | bytes) -> None: ...

    def finish(self) -> ReceivedDataset: ...

    def abort(self) -> None: ...


@dataclass(slots=True)
class ReceivedDataset:
    """A dataset that has fully arrived, either in memory (``data``) or in a file (``path``).

    For a file, ``offset`` is where the dataset starts (after the Part 10 header) and ``path`` is a
    complete Part 10 file; ``source_ae`` is the calling AE title of the association it arrived on.
    Whoever handles the request may take the file (``os.replace`` it, call :meth:`move_to`, or give
    the whole object to :meth:`pacskit.store.DataStore.ingest`, which takes it); the engine deletes it
    after the handler returns if it is still there.
    """

    transfer_syntax: str
    data: bytes | None = None
    path: str | None = None
    offset: int = 0
    size: int = 0
    claimed: bool = False  # the handler took the file; the engine must not delete it
    source_ae: str = ""

    def read_bytes(self) -> bytes:
        """The encoded dataset (without any Part 10 header). Reads the whole file: avoid for big data."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return fh.read()

    def decode(self, stop_before_pixels: bool = False) -> Dataset:
        """Decode with pydicom (off the hot path: handlers call this only when they need values)."""
        from pydicom import dcmread

        if self.path is not None:
            return dcmread(self.path, stop_before_pixels=stop_before_pixels, force=True)
        return decode_dataset(self.data or b"", self.transfer_syntax, stop_before_pixels=stop_before_pixels)

    def move_to(self, destination: str | os.PathLike[str]) -> str:
        """Atomically move the received Part 10 file to ``destination`` (same filesystem)."""
        if self.path is None:
            raise ValueError("dataset was received in memory, not in a file")
        dest = os.fspath(destination)
        os.replace(self.path, dest)
        self.path = dest
        self.claimed = True
        return dest

    def discard(self) -> None:
        """Delete the temporary file unless a handler claimed it (called by the engine after handling)."""
        if self.path is not None and not self.claimed:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class MemorySink:
    """Collects a dataset in memory, refusing more than ``max_size`` bytes."""

    __slots__ = ("_parts", "_size", "_max", "_ts")

    def __init__(self, transfer_syntax: str, max_size: int) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._max = max_size
        self._ts = transfer_syntax

    def write(self, chunk: memoryview | bytes) -> None:
        self._size += len(chunk)
        if self._max and self._size > self._max:
            raise DatasetTooLarge(f"dataset exceeds the in-memory limit of {self._max} bytes")
        self._parts.append(bytes(chunk))

    def finish(self) -> ReceivedDataset:
        data = b"".join(self._parts)
        self._parts = []
        return ReceivedDataset(self._ts, data=data, size=len(data))

    def abort(self) -> None:
        self._parts = []


def _create_temp(folder: str, announce: Callable[[str], None] | None = None) -> tuple[int, str]:
    """A new empty temp file in ``folder``, named from the process id and a counter (never a UID).
    ``announce`` is told the path before the file is created."""
    while True:
        path = f"{folder}/rx-{_PID}-{next(_COUNTER)}.part"
        if announce is not None:
            announce(path)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:  # a stale file from an earlier process with the same pid
            continue


class TempFiles:
    """Empty temp files created ahead of need by a helper thread, so the event loop never waits.

    Creating a file is a metadata change: on a journalling file system it waits while another
    thread's fsync commits the journal, which, on the event loop, would stall every association.
    :meth:`take` hands out a spare (or, if none is left, creates one on the spot) and wakes the helper
    once half the spares are gone (a wake-up per file cost the event loop more than the file). Spares left at
    exit are deleted; a crash leaves empty ``.part`` files, which the server purges at start-up.

    A file whose bytes went elsewhere (an object store's PUT read it) is given back with
    :meth:`recycle` instead of being deleted: emptied, it is a spare again. Creating a name in a
    folder cost this kind of machine up to 0.4-0.7 ms of kernel CPU (ext4 on a virtual disk; from
    0.02 ms, depending on the folder's state), emptying an open file 0.01-0.02 ms, deleting one about
    as little: on a node whose blobs go to S3 the helper thread's creations were 0.49 ms of its 2.24 ms
    per small instance in one run (``benchmarks/node_cpu.py``: ``pacskit-tempfiles``).
    """

    def __init__(self, folder: str, spare: int = 8) -> None:
        self.folder = folder
        self.spare = spare
        self._spare: collections.deque[tuple[int, str]] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._creating: str | None = None  # the spare the helper is creating (see spare_paths)

    def take(self) -> tuple[int, str]:
        while True:
            try:
                item = self._spare.popleft()
            except IndexError:
                item = _create_temp(self.folder)
                break
            if os.fstat(item[0]).st_nlink:
                break
            os.close(item[0])  # purged meanwhile (a server started on this folder): not usable
        if self._thread is None:
            self._start()
        if len(self._spare) <= self.spare // 2:  # refill in batches: one thread wake-up per few files
            self._wake.set()
        return item

    def recycle(self, path: str) -> bool:
        """Keep the finished file ``path`` (one this pool handed out, which nobody reads or writes any
        more) as a spare, emptied; ``False`` (the caller deletes it) when the pool is full or the file
        cannot be reopened."""
        if self._thread is None or len(self._spare) >= 2 * self.spare:
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError:
            return False
        self._spare.append((fd, path))
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._fill, name="pacskit-tempfiles", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def _fill(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._thread is None:
                return
            try:
                while len(self._spare) < self.spare:
                    self._spare.append(_create_temp(self.folder, self._announce))
                    self._creating = None
            except OSError:  # disk full, folder gone: take() creates (and reports) on its own
                pass
            self._creating = None

    def _announce(self, path: str) -> None:
        self._creating = path

    def spare_paths(self) -> set[str]:
        """Paths of the spare (empty, unused) files right now, including one the helper thread is
        creating: a folder listed before this call holds no spare that this set misses (the file
        being created is read first, then the spares, in the order the helper changes them)."""
        creating = self._creating
        paths = {path for _, path in list(self._spare)}
        if creating is not None:
            paths.add(creating)
        return paths

    def close(self) -> None:
        """Delete the spare files and stop the helper thread."""
        self._thread = None
        self._wake.set()
        while self._spare:
            fd, path = self._spare.popleft()
            os.close(fd)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


_TEMP_FILES: dict[str, TempFiles] = {}


def recycle_temp(path: str) -> bool:
    """Give the received file ``path`` back to the :class:`TempFiles` of its folder as a spare
    (:meth:`TempFiles.recycle`) once its bytes are stored elsewhere; ``False`` when its folder has no
    pool (nothing receives there in this process) or the pool is full: the caller then deletes it.
    Only for files named as :class:`Part10FileSink` names them (``rx-<pid>-<n>.part``)."""
    folder, name = os.path.split(path)
    pool = _TEMP_FILES.get(folder)
    if pool is None or not (name.startswith(f"rx-{_PID}-") and name.endswith(".part")):
        return False
    return pool.recycle(path)


def temp_files(folder: str, spare: int = 8) -> TempFiles:
    """The :class:`TempFiles` of ``folder`` (one per folder and process; the first call sets ``spare``)."""
    pool = _TEMP_FILES.get(folder)
    if pool is None:
        pool = _TEMP_FILES.setdefault(folder, TempFiles(folder, spare))
    return pool


class Part10FileSink:
    """Streams a dataset into a temporary Part 10 file in ``directory``.

    The file is written under a name made of the process id and a counter (never from a UID), with
    unbuffered ``os.write`` calls: fragments are already PDU-sized, and a per-file buffer would cost
    more than it saves on the small-instance path. It only becomes a :class:`ReceivedDataset` when
    complete. ``max_size`` (0 = unlimited) caps the dataset bytes. ``fsync`` makes :meth:`finish` flush to
    stable storage, for callers that acknowledge durability.
    """

    __slots__ = ("_fd", "_path", "_header_len", "_size", "_max", "_ts", "_fsync", "_source_ae")

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        header: bytes,
        transfer_syntax: str,
        max_size: int = 0,
        fsync: bool = False,
        spare: int = 0,
        source_ae: str = "",
    ) -> None:
        folder = os.fspath(directory) if directory is not None else tempfile.gettempdir()
        self._fd, self._path = temp_files(folder, spare).take() if spare else _create_temp(folder)
        self._header_len = len(header)
        self._size = 0
        self._max = max_size
        self._ts = transfer_syntax
        self._fsync = fsync
        self._source_ae = source_ae
        self._write_all(header)

    def _write_all(self, data: memoryview | bytes) -> None:
        written = os.write(self._fd, data)
        while written < len(data):  # short writes only happen on signals / full disks
            written += os.write(self._fd, memoryview(data)[written:])

    def write(self, chunk: memoryview | bytes) -> None:
        self._size += len(chunk)
        if self._max and self._size > self._max:
            raise DatasetTooLarge(f"dataset exceeds the limit of {self._max} bytes")
        self._write_all(chunk)

    def finish(self) -> ReceivedDataset:
        try:
            if self._fsync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1
        return ReceivedDataset(self._ts, path=self._path, offset=self._header_len, size=self._size,
                               source_ae=self._source_ae)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass


