"""One server per data folder: a held ``flock`` on ``<data folder>/pacskit.lock``.

A server (``pacskit serve``, a :class:`~pacskit.server.server.Server` that opens its own store) takes
the lock before it touches anything else in the folder — start-up recovery deletes temp files and
journalled blobs, which is only safe when nobody else writes — and holds it for the life of the
process. With ``workers = N`` the parent takes it and each worker inherits the open lock file, so the
folder stays locked while any of them lives (a parent killed with SIGKILL leaves its workers holding
it). Commands that repair (``pacskit reindex``) take the same lock, or refuse with the holder's pid;
commands that only inspect (``pacskit check``) never repair and need no lock.

The lock is the kernel's: it goes away with the last process holding it, however that process ends,
so a crash never leaves a stale lock behind. The file's content (the holder's pid and role) is only
information for the refusal message; it is not what is locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self

LOCK_FILE = "pacskit.lock"


class DataFolderBusy(RuntimeError):
    """Another process holds the data folder's lock; ``pid`` and ``role`` name it when known."""

    def __init__(self, folder: Path, pid: int | None, role: str) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"data folder {folder} is in use by {holder}{f' ({role})' if role else ''}")
        self.folder = folder
        self.pid = pid
        self.role = role


class DataFolderLock:
    """The held lock of one data folder; :meth:`release` (or process exit) lets it go."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self.fd = fd

    def fileno(self) -> int:
        """The open lock file, for ``subprocess.Popen(pass_fds=...)``: a child holding it holds the lock."""
        return self.fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor of the open file releases the flock
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_data_folder(folder: str | os.PathLike[str], role: str) -> DataFolderLock:
    """Take the exclusive lock of the existing data folder ``folder``, without waiting.

    ``role`` (e.g. ``"pacskit serve"``) is recorded with our pid for whoever is refused. Raises
    :class:`DataFolderBusy` when another process holds it (nothing else is touched), ``OSError``
    when the lock file cannot be opened.
    """
    path = Path(folder)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, holder_role = _read_holder(fd)
        os.close(fd)
        raise DataFolderBusy(path.resolve(), pid, holder_role) from None
    except BaseException:
        os.close(fd)
        raise
    record = f"{os.getpid()} {role}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    return DataFolderLock(path, fd)


def _read_holder(fd: int) -> tuple[int | None, str]:
    """The pid and role the holder wrote (``None, ""`` if it has not written them yet)."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None, ""
    head, _, role = text.partition(" ")
    return (int(head), role) if head.isdigit() else (None, "")
