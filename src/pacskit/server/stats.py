"""Statistics and notifications of one server, built from its spy event bus.

:class:`Statistics` subscribes to the server's :class:`~pacskit.net.EventBus` (association and DIMSE
notifications) and keeps counters: associations (active, total, rejected, aborted), operations
served per DIMSE service with their statuses and a latency histogram, bytes in and out (read from
each association's own PDU byte counters, so no event per PDU), and per connection what the clients
view shows (bytes, operations, the operation running now). Nothing is
subscribed until :meth:`Statistics.start`; ``[admin] statistics = false`` never starts it, and the
engine then pays nothing (the bus is free when unobserved).

Only operations *served* are counted (requests arriving on associations we accepted); the C-STORE
sub-operations a C-MOVE sends go through outgoing associations and count in bytes only.

:class:`Notifications` fans events out to Server-Sent-Events subscribers through bounded queues: a
subscriber that does not keep up loses events (counted in :attr:`Notifications.dropped`), it never
slows an association.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pacskit.net import events as ev
from pacskit.net.dimse import CommandField
from pacskit.dicom.status import status_category

# Seconds; the upper bounds of the latency histogram's buckets (plus +Inf).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# command field -> service name ("C-STORE"...), computed once: the enum lookup costs more than the rest
_SERVICE_OF: dict[int, str] = {int(f): f.service for f in CommandField}


class Histogram:
    """A fixed-bucket histogram (Prometheus-style upper bounds; the last bucket is +Inf)."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1  # the first bound >= value, or +Inf
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip([*map(_fmt_bound, LATENCY_BUCKETS), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sum_seconds": round(self.sum, 6), "buckets": dict(self.cumulative())}


def _fmt_bound(value: float) -> str:
    return f"{value:g}"


@dataclass(slots=True)
class OperationStats:
    """One DIMSE service: how many were answered, with which final statuses, how long they took."""

    count: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)

    def as_dict(self) -> dict[str, Any]:
        categories: Counter[str] = Counter()
        for status, n in self.statuses.items():
            categories[status_category(status).lower()] += n
        return {
            "count": self.count,
            "statuses": {f"0x{s:04X}": n for s, n in sorted(self.statuses.items())},
            "by_category": dict(categories),
            "latency": self.latency.as_dict(),
        }


@dataclass(slots=True)
class Activity:
    """What one association did so far (kept while it is open)."""

    assoc: Any = None
    operations: int = 0
    running: dict[int, tuple[str, float]] = field(default_factory=dict)  # message id -> (service, started)
    connection_id: int | None = None

    @property
    def bytes_in(self) -> int:
        """PDU bytes received (the association's own counter: no event per PDU)."""
        return getattr(self.assoc, "bytes_received", 0)

    @property
    def bytes_out(self) -> int:
        return getattr(self.assoc, "bytes_sent", 0)

    def current_operation(self, now: float) -> dict[str, Any] | None:
        if not self.running:
            return None
        message_id, (service, started) = next(iter(self.running.items()))
        return {"service": service, "message_id": message_id, "running_seconds": round(now - started, 3)}


class Notifications:
    """A fan-out of JSON-able events to any number of subscribers (the SSE stream).

    :meth:`publish` may be called from any thread; delivery happens on the server's loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, queue_size: int = 1000) -> None:
        self._loop = loop
        self._queue_size = queue_size
        self._subscribers: dict[asyncio.Queue[dict[str, Any] | None], frozenset[str] | None] = {}
        self.dropped = 0
        self.published = 0

    @property
    def wanted(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self, kinds: frozenset[str] | None = None) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue receiving the events of ``kinds`` (all when ``None``); ``None`` in it ends the stream."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._queue_size)
        self._subscribers[queue] = kinds
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.pop(queue, None)

    def publish(self, kind: str, **data: Any) -> None:
        if not self._subscribers:
            return
        # UTC ISO 8601 with milliseconds, as every time the admin API gives (docs/admin.md)
        event = {"event": kind, "time": datetime.now(UTC).isoformat(timespec="milliseconds"), **data}
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._deliver(event)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: dict[str, Any]) -> None:
        self.published += 1
        for queue, kinds in list(self._subscribers.items()):
            if kinds is not None and event["event"] not in kinds:
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1

    def close(self) -> None:
        """End every stream (server shutdown)."""
        for queue in list(self._subscribers):
            while True:
                try:
                    queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()
        self._subscribers.clear()


class ErrorNotifier(logging.Handler):
    """Forwards ERROR (and worse) log records of ``pacskit.*`` to the notification stream."""

    def __init__(self, notifications: Notifications) -> None:
        super().__init__(logging.ERROR)
        self.notifications = notifications

    def emit(self, record: logging.LogRecord) -> None:
        if not self.notifications.wanted:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the caller
            message = str(record.msg)
        self.notifications.publish("error", source="log", logger=record.name, level=record.levelname, message=message)


_SUBSCRIBED = (
    ev.CONNECTION_OPENED,
    ev.CONNECTION_CLOSED,
    ev.ASSOCIATION_ACCEPTED,
    ev.ASSOCIATION_REJECTED,
    ev.ASSOCIATION_RELEASED,
    ev.ASSOCIATION_ABORTED,
    ev.DIMSE_RECEIVED,
    ev.OPERATION_COMPLETED,
)


class Statistics:
    """Counters built from the event bus; see the module docstring.

    ``connection_id(assoc)`` names an incoming association the way the clients view does (the
    acceptor's connection id); ``notifications`` receives connection, operation and error events.
    """

    def __init__(
        self,
        bus: ev.EventBus,
        *,
        notifications: Notifications | None = None,
        connection_id: Callable[[Any], int | None] = lambda assoc: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.notifications = notifications
        self._connection_id = connection_id
        self._clock = clock
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.connections_total = 0
        self.associations_total = 0
        self.associations_rejected = 0
        self.associations_aborted = 0
        self.associations_released = 0
        self.outgoing_associations_total = 0
        self._closed_bytes_in = 0  # of associations no longer open
        self._closed_bytes_out = 0
        self.operations: dict[str, OperationStats] = {}
        self._activity: dict[int, Activity] = {}  # id(assoc) -> activity, while open
        self._handlers: dict[str, Callable[[ev.SpyEvent], None]] = {
            ev.CONNECTION_OPENED: self._on_opened,
            ev.CONNECTION_CLOSED: self._on_closed,
            ev.ASSOCIATION_ACCEPTED: self._on_accepted,
            ev.ASSOCIATION_REJECTED: self._on_rejected,
            ev.ASSOCIATION_RELEASED: self._on_released,
            ev.ASSOCIATION_ABORTED: self._on_aborted,
            ev.DIMSE_RECEIVED: self._on_dimse_received,
            ev.OPERATION_COMPLETED: self._on_operation_completed,
        }
        self._running = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self._running:
            return
        for kind in _SUBSCRIBED:
            self.bus.subscribe(kind, self._handlers[kind])
        self._running = True

    def stop(self) -> None:
        for kind in _SUBSCRIBED:
            self.bus.unsubscribe(kind, self._handlers[kind])
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ views

    @property
    def bytes_in(self) -> int:
        """PDU bytes received since the start, on every association (open ones included)."""
        return self._closed_bytes_in + sum(a.bytes_in for a in list(self._activity.values()))

    @property
    def bytes_out(self) -> int:
        return self._closed_bytes_out + sum(a.bytes_out for a in list(self._activity.values()))

    def activity(self, assoc: Any) -> Activity | None:
        return self._activity.get(id(assoc))

    def operations_snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: op.as_dict() for name, op in sorted(self.operations.items())}

    def snapshot(self) -> dict[str, Any]:
        return {
            "collecting": self._running,
            "since": self.started_at,
            "connections_total": self.connections_total,
            "associations_total": self.associations_total,
            "associations_rejected": self.associations_rejected,
            "associations_aborted": self.associations_aborted,
            "associations_released": self.associations_released,
            "outgoing_associations_total": self.outgoing_associations_total,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "operations": self.operations_snapshot(),
        }

    # ------------------------------------------------------------------ observers

    def _get(self, assoc: Any) -> Activity:
        activity = self._activity.get(id(assoc))
        if activity is None:
            activity = self._activity[id(assoc)] = Activity(assoc)
        return activity

    def _cid(self, assoc: Any, activity: Activity) -> int | None:
        if activity.connection_id is None and assoc is not None and not assoc.is_requestor:
            activity.connection_id = self._connection_id(assoc)
        return activity.connection_id

    def _notify(self, kind: str, **data: Any) -> None:
        if self.notifications is not None and self.notifications.wanted:
            self.notifications.publish(kind, **data)

    def _on_opened(self, event: ev.SpyEvent) -> None:
        assoc = event.assoc
        activity = self._get(assoc)
        if assoc is not None and assoc.is_requestor:
            return
        self.connections_total += 1
        self._notify("connection", state="opened", id=self._cid(assoc, activity), address=_address(event.detail.get("peer")))

    def _on_closed(self, event: ev.SpyEvent) -> None:
        activity = self._activity.pop(id(event.assoc), None)
        if activity is not None:
            self._closed_bytes_in += activity.bytes_in
            self._closed_bytes_out += activity.bytes_out
        assoc = event.assoc
        if assoc is None or assoc.is_requestor or activity is None:
            return
        self._notify(
            "connection", state="closed", id=activity.connection_id, calling_ae=assoc.remote_ae_title,
            bytes_in=activity.bytes_in, bytes_out=activity.bytes_out, operations=activity.operations,
        )

    def _on_accepted(self, event: ev.SpyEvent) -> None:
        assoc = event.assoc
        if assoc is not None and assoc.is_requestor:
            self.outgoing_associations_total += 1
            return
        self.associations_total += 1
        activity = self._get(assoc)
        self._notify(
            "connection", state="accepted", id=self._cid(assoc, activity),
            calling_ae=event.detail.get("calling_ae", ""), called_ae=event.detail.get("called_ae", ""),
            address=_address(getattr(assoc, "peer_address", None)),
        )

    def _on_rejected(self, event: ev.SpyEvent) -> None:
        assoc = event.assoc
        if assoc is not None and assoc.is_requestor:
            return
        self.associations_rejected += 1
        activity = self._get(assoc)
        self._notify(
            "connection", state="rejected", id=self._cid(assoc, activity),
            calling_ae=getattr(assoc, "remote_ae_title", ""), address=_address(getattr(assoc, "peer_address", None)),
            reason=str(event.detail.get("description") or event.detail.get("reason", "")),
        )

    def _on_released(self, event: ev.SpyEvent) -> None:
        assoc = event.assoc
        if assoc is not None and assoc.is_requestor:
            return
        self.associations_released += 1
        self._notify("connection", state="released", id=self._cid(assoc, self._get(assoc)), calling_ae=assoc.remote_ae_title if assoc else "")

    def _on_aborted(self, event: ev.SpyEvent) -> None:
        assoc = event.assoc
        if assoc is not None and assoc.is_requestor:
            return
        self.associations_aborted += 1
        self._notify(
            "connection", state="aborted", id=self._cid(assoc, self._get(assoc)),
            calling_ae=assoc.remote_ae_title if assoc else "", description=str(event.detail.get("description", "")),
        )

    def _on_dimse_received(self, event: ev.SpyEvent) -> None:
        assoc = event.assoc
        if assoc is None or assoc.is_requestor:
            return
        command = event.detail["command"]
        field_ = command.command_field
        if field_ & 0x8000 or field_ == CommandField.C_CANCEL_RQ:
            return  # a response to a request we sent (C-GET sub-operation), or a cancel
        service = _SERVICE_OF.get(field_) or f"0x{field_:04X}"
        activity = self._activity.get(id(assoc)) or self._get(assoc)
        activity.running[command.get("MessageID", 0)] = (service, self._clock())

    def _on_operation_completed(self, event: ev.SpyEvent) -> None:
        """One request answered (its final response sent): count it. Subscribing to this rather than
        to every DIMSE message sent keeps a C-FIND's Pending answers free of statistics work."""
        assoc = event.assoc
        if assoc is None or assoc.is_requestor:
            return
        activity = self._activity.get(id(assoc))
        if activity is None:
            return
        started = activity.running.pop(event.detail["command"].get("MessageID", 0), None)
        status = event.detail["status"]
        if started is None or status is None:
            return  # not seen arriving, or the association broke before a final response
        service, t0 = started
        elapsed = self._clock() - t0
        activity.operations += 1
        with self._lock:
            op = self.operations.get(service)
            if op is None:
                op = self.operations[service] = OperationStats()
            op.count += 1
            statuses = op.statuses
            statuses[status] = statuses.get(status, 0) + 1
            op.latency.observe(elapsed)
        if self.notifications is not None and self.notifications.wanted:
            category = status_category(status)
            data = dict(
                id=self._cid(assoc, activity), calling_ae=assoc.remote_ae_title, service=service,
                status=f"0x{status:04X}", category=category.lower(), seconds=round(elapsed, 6),
            )
            self.notifications.publish("operation", **data)
            if category == "Failure":
                self.notifications.publish("error", source="operation", **data)


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "" if peer is None else str(peer)
