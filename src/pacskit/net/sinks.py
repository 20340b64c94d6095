"""Where incoming datasets go while they arrive, and how outgoing files are read.

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
import io
import itertools
import os
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol


from pacskit.net.errors import DimseError
from pacskit.net.presentation import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

if TYPE_CHECKING:
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
    complete Part 10 file. Whoever handles the request may take the file (``os.replace`` it or call
    :meth:`move_to`); the engine deletes it after the handler returns if it is still there.
    """

    transfer_syntax: str
    data: bytes | None = None
    path: str | None = None
    offset: int = 0
    size: int = 0
    claimed: bool = False  # the handler took the file; the engine must not delete it

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
        from pydicom.filereader import read_dataset

        if self.path is not None:
            return dcmread(self.path, stop_before_pixels=stop_before_pixels, force=True)
        raw = self.data or b""
        if self.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            inflated = io.BytesIO()
            inflate(raw, inflated.write, MAX_INFLATED_IN_MEMORY)
            raw = inflated.getvalue()
        ds = read_dataset(
            io.BytesIO(raw),
            is_implicit_VR=self.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
            is_little_endian=self.transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
            stop_when=(lambda tag, vr, length: tag == 0x7FE00010) if stop_before_pixels else None,
        )
        return ds

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


_EXPLICIT_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_class_uid: str,
    implementation_version_name: str = "",
    source_ae_title: str = "",
) -> bytes:
    """Preamble, ``DICM`` and a File Meta Information group (PS3.10 7.1), Explicit VR Little Endian."""

    def elem(tag_elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) & 1:
            value += pad
        if vr in _EXPLICIT_LONG_VRS:
            return struct.pack("<HH2sHL", 0x0002, tag_elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value

    body = [
        elem(0x0001, b"OB", b"\x00\x01", b"\x00"),
        elem(0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
        elem(0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
        elem(0x0010, b"UI", transfer_syntax.encode("ascii"), b"\x00"),
        elem(0x0012, b"UI", implementation_class_uid.encode("ascii"), b"\x00"),
    ]
    if implementation_version_name:
        body.append(elem(0x0013, b"SH", implementation_version_name.encode("ascii"), b" "))
    if source_ae_title:
        body.append(elem(0x0016, b"AE", source_ae_title.encode("ascii"), b" "))
    group = b"".join(body)
    return bytes(128) + b"DICM" + elem(0x0000, b"UL", struct.pack("<L", len(group)), b"") + group


def _create_temp(folder: str) -> tuple[int, str]:
    """A new empty temp file in ``folder``, named from the process id and a counter (never a UID)."""
    while True:
        path = f"{folder}/rx-{_PID}-{next(_COUNTER)}.part"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:  # a stale file from an earlier process with the same pid
            continue


class TempFiles:
    """Empty temp files created ahead of need by a helper thread, so the event loop never waits.

    Creating a file is a metadata change: on a journalling file system it waits while another
    thread's fsync commits the journal, which, on the event loop, would stall every association.
    :meth:`take` hands out a spare (or, if none is left, creates one on the spot). Spares left at
    exit are deleted; a crash leaves empty ``.part`` files, which the server purges at start-up.
    """

    def __init__(self, folder: str, spare: int = 8) -> None:
        self.folder = folder
        self.spare = spare
        self._spare: collections.deque[tuple[int, str]] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

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
        self._wake.set()
        return item

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
                    self._spare.append(_create_temp(self.folder))
            except OSError:  # disk full, folder gone: take() creates (and reports) on its own
                pass

    def spare_paths(self) -> set[str]:
        """Paths of the spare (empty, unused) files right now."""
        return {path for _, path in list(self._spare)}

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

    __slots__ = ("_fd", "_path", "_header_len", "_size", "_max", "_ts", "_fsync")

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        header: bytes,
        transfer_syntax: str,
        max_size: int = 0,
        fsync: bool = False,
        spare: int = 0,
    ) -> None:
        folder = os.fspath(directory) if directory is not None else tempfile.gettempdir()
        self._fd, self._path = temp_files(folder, spare).take() if spare else _create_temp(folder)
        self._header_len = len(header)
        self._size = 0
        self._max = max_size
        self._ts = transfer_syntax
        self._fsync = fsync
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
        return ReceivedDataset(self._ts, path=self._path, offset=self._header_len, size=self._size)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass


#: What a deflated dataset may inflate to when decoded in memory (a deflate bomb inflates ~1000:1).
MAX_INFLATED_IN_MEMORY = 64 * 1024 * 1024
_INFLATE_PIECE = 1 << 20


class InflationLimit(ValueError):
    """A deflated dataset inflates beyond the allowed size (a deflate bomb, or simply too big)."""


def inflate(source: BinaryIO | bytes, write: Any, limit: int) -> int:
    """Inflate the raw deflate stream ``source`` (PS3.5 A.5: Deflated Explicit VR Little Endian) into
    ``write``, a piece of at most 1 MiB at a time; returns the inflated size.

    Raises :class:`InflationLimit` as soon as more than ``limit`` bytes would come out, so neither
    memory nor disk ever holds more than that, whatever the compression ratio. Raises ``zlib.error``
    for a corrupt stream, and for one cut short (no final block): what came out is then not the
    whole dataset. Bytes after the final block (PS3.5 A.5 pads to an even length) are ignored.
    """
    import zlib

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    view = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    while True:
        data = view.read(_INFLATE_PIECE)
        if not data:
            break
        while data:
            piece = inflater.decompress(data, _INFLATE_PIECE)
            total += len(piece)
            if total > limit:
                raise InflationLimit(f"deflated dataset inflates beyond {limit:,} bytes")
            write(piece)
            data = inflater.unconsumed_tail
        if inflater.eof:
            break
    rest = inflater.flush()
    total += len(rest)
    if total > limit:
        raise InflationLimit(f"deflated dataset inflates beyond {limit:,} bytes")
    write(rest)
    if not inflater.eof:
        raise zlib.error("the deflate stream is cut short (no final block)")
    return total


@dataclass(slots=True)
class Part10Info:
    """What :func:`read_part10_header` found: the File Meta values and where the dataset starts."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    file_size: int
    source_ae: str | None = None  # (0002,0016) Source Application Entity Title, if present


def read_part10_header(path: str | os.PathLike[str]) -> Part10Info:
    """Read only the File Meta Information of a Part 10 file (no pydicom, no pixel data touched).

    Raises ``ValueError`` when the file is not Part 10 or lacks the UIDs a C-STORE needs.
    """
    return read_part10(path)[0]


_META_PROBE = 16384  # bytes read to find the File Meta Information (read again, larger, if it is longer)


def read_part10(path: str | os.PathLike[str], *, whole_below: int = 0) -> tuple[Part10Info, bytes | None]:
    """The File Meta Information of a Part 10 file and, when the file is at most ``whole_below`` bytes,
    its dataset bytes as well: one open and one read for a small instance (a C-STORE of it then needs
    no second open), the meta alone for a big one (which is then streamed with
    :func:`iter_file_chunks`). Raises ``ValueError`` when the file is not Part 10 or lacks the UIDs
    a C-STORE needs."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # no io object: a third of the cost
    try:
        size = os.fstat(fd).st_size
        whole = size <= whole_below
        buf = _read_up_to(fd, size if whole else min(size, _META_PROBE))
        while (parsed := _parse_file_meta(buf, path, complete=len(buf) >= size)) is None:
            buf += _read_up_to(fd, min(size, len(buf) * 4) - len(buf))
    finally:
        os.close(fd)
    values, pos = parsed
    try:
        info = Part10Info(values[0x0002], values[0x0003], values[0x0010], pos, size, values.get(0x0016) or None)
    except KeyError as exc:
        raise ValueError(f"{path}: file meta information lacks (0002,{exc.args[0]:04X})") from exc
    return info, (buf[pos:] if whole else None)


def _read_up_to(fd: int, n: int) -> bytes:
    parts = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _parse_file_meta(buf: bytes, path: Any, *, complete: bool) -> tuple[dict[int, str], int] | None:
    """The group 0002 values (element -> text) and where the dataset starts, from the first bytes of
    a file (``complete``: all of it); ``None`` when ``buf`` ends inside the group (read more)."""
    end = len(buf)
    if end < 132 and not complete:
        return None
    if end < 132 or buf[128:132] != b"DICM":
        raise ValueError(f"{path}: not a DICOM Part 10 file (no DICM prefix)")
    values: dict[int, str] = {}
    pos = 132
    while True:
        if pos + 8 > end:
            return (values, pos) if complete else None  # the file ends with its meta: no dataset
        group, elem, vr = struct.unpack_from("<HH2s", buf, pos)
        if group != 0x0002:
            return values, pos
        if vr in _EXPLICIT_LONG_VRS:
            if pos + 12 > end:
                break
            (length,) = struct.unpack_from("<L", buf, pos + 8)
            header_len = 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            header_len = 8
        start = pos + header_len
        if start + length > end:
            break
        values[elem] = buf[start : start + length].decode("ascii", "replace").rstrip("\x00 ")
        pos = start + length
    if complete:
        raise ValueError(f"{path}: truncated file meta information")
    return None


def iter_file_chunks(path: str | os.PathLike[str], offset: int, chunk_size: int) -> Iterator[bytes]:
    """Read ``path`` from ``offset`` in pieces of ``chunk_size`` bytes (the PDV payload size)."""
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                return
            yield chunk
