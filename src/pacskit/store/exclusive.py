"""Archive-wide exclusive tasks: work that one process of an archive must do at a time.

An archive may be served by several processes at once: the workers of ``serve --workers N`` on one
data folder, or the nodes of a cluster on one PostgreSQL database. Some periodic work must not run in
two of them together: a retention pass (two would pick the same studies, delete and audit them
twice), any sweep over the whole archive. :class:`ExclusiveTasks` gives such work a named lock that
at most one process of the archive holds; the others skip their turn instead of waiting, since the
holder is doing the same work.

- On a PostgreSQL index: a session advisory lock (``pg_try_advisory_lock``) on a connection held for
  the task, so it spans every node and every worker of the database, and a process that dies (kill -9,
  power loss) releases it with its session. Advisory locks are per database: two archives on one
  PostgreSQL server do not share them.
- Otherwise (SQLite, MariaDB: one host): ``flock`` on ``<data folder>/locks/<name>.lock``, released
  by the kernel when the process ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("pacskit.store")

__all__ = ["ExclusiveTasks"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")


class ExclusiveTasks:
    """Named locks, each held by at most one process of the archive (see the module docstring).

    ``engine``: the index's engine (PostgreSQL: advisory locks); ``folder``: where the lock files go
    otherwise (the data folder, shared by the workers of one server). Names are short lower-case
    words (``retention``), the same in every process: they are the lock's identity."""

    def __init__(self, engine: Engine | None, folder: str | os.PathLike[str]) -> None:
        self.engine = engine if engine is not None and engine.dialect.name == "postgresql" else None
        self.folder = Path(folder) / "locks"

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        """``with tasks.hold("retention") as mine:``: ``mine`` is True when this process now holds the
        lock (until the block ends), False when another process of the archive holds it (do nothing:
        it is doing the work). Never waits. Raises ``ValueError`` for a name that is not a short
        lower-case word, and what the database or the file system raises when they fail."""
        if not _NAME.match(name):
            raise ValueError(f"exclusive task name {name!r}: lower-case letters, digits, '.', '_' and '-' (1-64)")
        if self.engine is not None:
            with self._advisory(name) as mine:
                yield mine
        else:
            with self._flock(name) as mine:
                yield mine

    @contextlib.contextmanager
    def _advisory(self, name: str) -> Iterator[bool]:
        key = int.from_bytes(hashlib.sha256(f"pacskit.exclusive:{name}".encode()).digest()[:8], "big", signed=True)
        assert self.engine is not None
        with self.engine.connect() as conn:
            mine = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one())
            conn.commit()  # the lock is the session's: no transaction stays open while the task runs
            try:
                yield mine
            finally:
                if mine:
                    try:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
                    except DBAPIError as exc:  # the session is gone, and its lock with it
                        log.debug("exclusive task %s: unlock on a lost session: %s", name, exc)

    @contextlib.contextmanager
    def _flock(self, name: str) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
