"""Spy events: notifications about connections, associations, DIMSE messages and PDUs.

These are *notifications* (many observers, return value ignored, an exception is logged and isolated,
never reaches the association). Decisions that change the outcome of a request — which status a C-STORE
gets — are not events but service handlers (:class:`pacskit.net.services.Services`).

Emitting is free when nobody listens: emitters call :meth:`EventBus.wants` (one dict lookup) before
building an event object, so the C-STORE data path pays nothing for unused spies.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacskit.net.association import Association

log = logging.getLogger("pacskit.net.events")

CONNECTION_OPENED = "connection-opened"
CONNECTION_CLOSED = "connection-closed"
ASSOCIATION_REQUESTED = "association-requested"
ASSOCIATION_ACCEPTED = "association-accepted"
ASSOCIATION_REJECTED = "association-rejected"
ASSOCIATION_RELEASED = "association-released"
ASSOCIATION_ABORTED = "association-aborted"
DIMSE_RECEIVED = "dimse-received"
DIMSE_SENT = "dimse-sent"
PDU_RECEIVED = "pdu-received"
PDU_SENT = "pdu-sent"
OPERATION_COMPLETED = "operation-completed"

ALL_EVENTS = (
    CONNECTION_OPENED,
    CONNECTION_CLOSED,
    ASSOCIATION_REQUESTED,
    ASSOCIATION_ACCEPTED,
    ASSOCIATION_REJECTED,
    ASSOCIATION_RELEASED,
    ASSOCIATION_ABORTED,
    DIMSE_RECEIVED,
    DIMSE_SENT,
    PDU_RECEIVED,
    PDU_SENT,
    OPERATION_COMPLETED,
)


@dataclass(slots=True)
class SpyEvent:
    """What an observer receives.

    ``kind`` is one of the module constants; ``assoc`` the association (``None`` only for connection
    events before an association object exists); ``detail`` holds kind-specific values:

    - association-requested/accepted: ``calling_ae``, ``called_ae``, ``contexts``
    - association-rejected: ``result``, ``source``, ``reason``, ``description``
    - association-aborted: ``source``, ``reason``, ``description``
    - dimse-received/sent: ``command`` (a :class:`~pacskit.net.dimse.Command`), ``context_id``,
      ``dataset_bytes``
    - pdu-received/sent: ``pdu_type``, ``length``, and ``pdu`` (raw bytes) for non-P-DATA PDUs
    - operation-completed (acceptor side: one per DIMSE request the association answered, whatever
      the outcome, after its final response was sent or the attempt failed): ``service``
      (``"C-STORE"``...), ``command`` (the request :class:`~pacskit.net.dimse.Command`),
      ``abstract_syntax``, ``status`` (the final status sent; ``None`` when the association broke
      first), ``started`` (``time.time()`` when handling began), ``duration`` (seconds, monotonic),
      ``bytes_received`` (the request's dataset), ``bytes_sent`` (datasets sent on this association
      while handling it: C-FIND matches, C-GET sub-operations), ``identifier`` (the request dataset as
      encoded bytes when it arrived in memory — C-FIND/C-MOVE/C-GET identifiers, N-service datasets —
      else ``None``), ``transfer_syntax`` (of the context), ``final_elements`` (the extra command
      elements of the final response, e.g. sub-operation counts)
    """

    kind: str
    assoc: Association | None
    detail: dict[str, Any] = field(default_factory=dict)


Observer = Callable[[SpyEvent], Any]


class EventBus:
    """Subscribe observers to event kinds; one bus per acceptor (and per requestor unless shared)."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Observer]] = {}

    def subscribe(self, kind: str, observer: Observer) -> None:
        if kind not in ALL_EVENTS:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(ALL_EVENTS)}")
        self._subs.setdefault(kind, []).append(observer)

    def unsubscribe(self, kind: str, observer: Observer) -> None:
        subs = self._subs.get(kind, [])
        if observer in subs:
            subs.remove(observer)
        if not subs:
            self._subs.pop(kind, None)

    def wants(self, kind: str) -> bool:
        return kind in self._subs

    def emit(self, kind: str, assoc: Association | None, **detail: Any) -> None:
        observers = self._subs.get(kind)
        if not observers:
            return
        event = SpyEvent(kind, assoc, detail)
        for observer in list(observers):
            try:
                result = observer(event)
                if result is not None and inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(_log_task_failure)
            except Exception:  # observers never break an association
                log.exception("observer %r of %s failed", observer, kind)


def _log_task_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("async observer failed", exc_info=task.exception())
