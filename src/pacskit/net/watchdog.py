"""The watchdog of handlers that run on the event loop's own thread (:class:`~pacskit.net.services.InlineHandler`).

A handler in the thread pool that overruns its timeout is answered by the event loop, which is free.
A handler that runs *inline*, on the loop's thread, holds the loop: nobody there can answer for it. The
watchdog is one daemon thread per process that can: :meth:`Watchdog.begin` notes a call and its
deadline, :meth:`Watchdog.end` forgets it and says whether the watchdog answered it meanwhile, and a
call still running at its deadline has its ``on_overrun`` run on the watchdog's thread (the engine
writes the failure response to the socket from there, :meth:`pacskit.net.dispatch.Dispatch._overrun`).

It costs the hot path one uncontended lock per call and no thread wake-up: the thread sleeps until the
earliest deadline it knows of, and is woken only by a call whose deadline comes before that (with one
timeout per handler: only the first call after it found nothing running). So it wakes about once per
timeout, whatever the rate of calls.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("pacskit.net")

_NEVER = float("inf")


class InlineCall:
    """One handler call on the event loop's thread, as the watchdog sees it."""

    __slots__ = ("deadline", "on_overrun", "answered")

    def __init__(self, deadline: float, on_overrun: Callable[[], None]) -> None:
        self.deadline = deadline
        self.on_overrun = on_overrun
        #: the watchdog ran ``on_overrun``: the request was answered (or its association cut)
        self.answered = False


class Watchdog:
    """See the module docstring. :data:`WATCHDOG` is the process's."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._running: set[InlineCall] = set()
        self._wake_at = _NEVER  # when the thread wakes next (monotonic); _NEVER: parked
        self._thread: threading.Thread | None = None
        #: calls answered by the watchdog so far
        self.overruns = 0

    def begin(self, timeout: float, on_overrun: Callable[[], None]) -> InlineCall:
        """Note a call that must end within ``timeout`` seconds; ``on_overrun`` runs on the watchdog's
        thread if it has not (with the watchdog's lock held: :meth:`end` waits for it to finish)."""
        call = InlineCall(time.monotonic() + timeout, on_overrun)
        with self._cond:
            self._running.add(call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pacskit-watchdog", daemon=True)
                self._thread.start()
            elif call.deadline < self._wake_at:
                self._cond.notify()
        return call

    def end(self, call: InlineCall) -> bool:
        """The call returned (or raised): ``True`` when the watchdog answered it meanwhile, so the
        caller must not answer it again."""
        with self._cond:
            self._running.discard(call)
            return call.answered

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for call in [c for c in self._running if c.deadline <= now]:
                    self._running.discard(call)
                    call.answered = True
                    self.overruns += 1
                    try:
                        call.on_overrun()
                    except Exception:
                        log.exception("the answer to a handler that overran its timeout failed")
                self._wake_at = min((c.deadline for c in self._running), default=_NEVER)
                self._cond.wait(None if self._wake_at == _NEVER else max(0.0, self._wake_at - now))


#: the process's watchdog (its thread starts with the first inline call that has a timeout)
WATCHDOG = Watchdog()


def _after_fork() -> None:  # a forked child has no watchdog thread: the next call starts one
    global WATCHDOG
    WATCHDOG = Watchdog()


os.register_at_fork(after_in_child=_after_fork)
