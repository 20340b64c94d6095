"""A bounded queue drained by one writer thread in batches: how records leave the DIMSE path.

The transaction log, the database and syslog log destinations and the audit trail all share the same
need: the thread that produces a record (the event loop, a handler thread) must never wait for a
database or a network peer. :class:`BatchWriter` gives them a bounded :class:`queue.Queue`;
:meth:`BatchWriter.submit` never blocks — when the queue is full the record is dropped and counted in
:attr:`BatchWriter.dropped` (and logged, at most once per ``drop_log_interval`` seconds, so a flood of
drops does not become a flood of log lines). One thread takes up to ``batch_size`` records at a time
and hands them to ``write`` (one database transaction per batch). A failing ``write`` is logged; its
batch is counted in :attr:`BatchWriter.failed` and the writer goes on.

``linger`` is how long the writer waits for more records after the first of a batch: fewer, larger
transactions (on SQLite each is an fsync competing with the ingest's own) at the price of that
much latency. While it lingers the writer sleeps and is not woken by each new record (only by
:meth:`flush` and :meth:`close`): a busy producer (the event loop, once per DIMSE message) then
pays a queue put, not a thread wake-up per record.

``idle`` is called by the writer thread at least every ``idle_interval`` seconds (retention purges,
spool retries), never concurrently with ``write``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_STOP = object()
_FLUSH = object()  # ends a lingering batch now (flush)
log = logging.getLogger("pacskit.records.background")


class BatchWriter(Generic[T]):
    """See the module docstring. Call :meth:`start` to run the thread, :meth:`close` to drain and stop."""

    def __init__(
        self,
        name: str,
        write: Callable[[Sequence[T]], Any],
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        idle: Callable[[], Any] | None = None,
        idle_interval: float = 60.0,
        linger: float = 0.0,
        drop_log_interval: float = 10.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        self.name = name
        self._write = write
        self._idle = idle
        self._idle_interval = idle_interval
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._batch_size = batch_size
        self._linger = linger
        self._thread: threading.Thread | None = None
        self._log = logger or log
        self._drop_log_interval = drop_log_interval
        self._last_drop_log = -1e18
        self._lock = threading.Lock()
        self._hurry = threading.Event()  # ends a linger early (flush, close)
        #: records refused because the queue was full
        self.dropped = 0
        #: records whose batch could not be written (the error was logged)
        self.failed = 0
        #: records written
        self.written = 0

    @property
    def queue_size(self) -> int:
        return self._queue.maxsize

    @property
    def pending(self) -> int:
        """Records waiting in the queue."""
        return self._queue.qsize()

    def submit(self, item: T) -> bool:
        """Queue ``item`` without blocking; ``False`` (and one more drop) when the queue is full."""
        try:
            self._queue.put_nowait(item)
            if self._linger and len(self._queue.queue) >= self._batch_size:
                self._hurry.set()  # a whole batch is waiting: no reason to linger on
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
                now = time.monotonic()
                should_log = now - self._last_drop_log >= self._drop_log_interval
                if should_log:
                    self._last_drop_log = now
            if should_log:
                # never through a destination that feeds this writer: that would recurse
                self._log.warning("%s: queue full (%d), %d records dropped so far", self.name, self._queue.maxsize,
                                  dropped, extra={"pacskit_no_background": True})
            return False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"pacskit-{self.name}", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has been written (or failed); ``False`` on timeout."""
        if not self.running:
            return self._queue.unfinished_tasks == 0
        deadline = time.monotonic() + timeout
        if self._linger and self._queue.unfinished_tasks:
            try:
                self._queue.put_nowait(_FLUSH)  # the writer need not wait out its linger
            except queue.Full:
                pass
            self._hurry.set()
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        while True:
            try:
                self._queue.put(_STOP, timeout=timeout)
                break
            except queue.Full:  # pragma: no cover - the writer is stuck
                self._log.error("%s: writer does not drain; %d records left", self.name, self._queue.qsize())
                return
        self._hurry.set()
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        q = self._queue
        next_idle = time.monotonic()
        while True:
            if self._idle is not None and time.monotonic() >= next_idle:
                self._run_idle()
                next_idle = time.monotonic() + self._idle_interval
            wait = max(0.0, next_idle - time.monotonic()) if self._idle is not None else None
            try:
                first = q.get(timeout=wait)
            except queue.Empty:
                continue
            batch: list[Any] = [first]
            if self._linger and first is not _STOP and first is not _FLUSH:
                # sleep instead of waiting on the queue: records arriving meanwhile wake nobody
                if len(q.queue) + 1 < self._batch_size:
                    self._hurry.wait(self._linger)
                self._hurry.clear()
            while len(batch) < self._batch_size and batch[-1] is not _STOP and batch[-1] is not _FLUSH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP and item is not _FLUSH]
            if items:
                try:
                    self._write(items)
                    self.written += len(items)
                except Exception:
                    self.failed += len(items)
                    self._log.exception("%s: %d records could not be written", self.name, len(items),
                                        extra={"pacskit_no_background": True})
            for _ in batch:
                q.task_done()
            if stop:
                return

    def _run_idle(self) -> None:
        assert self._idle is not None
        try:
            self._idle()
        except Exception:
            self._log.exception("%s: periodic task failed", self.name, extra={"pacskit_no_background": True})
