"""The engine's ``operation-completed`` event and ``current_operation`` context (pacskit's own requestor
against its acceptor), the "free when nobody listens" rule, and RFC 5424 formatting."""

from __future__ import annotations

import asyncio
from typing import Any

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import (
    Acceptor,
    EventBus,
    RequestedContext,
    Services,
    SupportedContext,
    connect,
    current_operation,
)
from pacskit.net import events as ev
from pacskit.records.syslog import format_message, frame_octet_counting


async def _echo_twice(bus: EventBus, handler: Any) -> list[int]:
    services = Services()
    services.register("C-ECHO", handler)
    acceptor = Acceptor("EVT", [SupportedContext(VERIFICATION_SOP_CLASS)], services, bus=bus)
    await acceptor.start("127.0.0.1", 0)
    try:
        assoc = await connect("127.0.0.1", acceptor.port, called_ae="EVT", calling_ae="CALLER",
                              contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
        async with assoc:
            return [await assoc.echo(), await assoc.echo()]
    finally:
        await acceptor.close(1)


def test_operation_completed_carries_the_outcome_and_the_context_reaches_handler_threads() -> None:
    bus = EventBus()
    events: list[Any] = []
    bus.subscribe(ev.OPERATION_COMPLETED, events.append)
    seen: list[Any] = []

    def handler(request: Any) -> int:  # a plain function: runs in the handler thread pool
        seen.append(current_operation.get())
        if len(seen) == 2:
            raise RuntimeError("second echo fails")
        return 0

    statuses = asyncio.run(_echo_twice(bus, handler))
    assert statuses == [0x0000, 0x0110]
    assert [(e.detail["service"], e.detail["status"]) for e in events] == [("C-ECHO", 0x0000), ("C-ECHO", 0x0110)]
    assert events[1].detail["final_elements"]["ErrorComment"].startswith("RuntimeError")
    assert all(e.detail["duration"] >= 0 and e.detail["abstract_syntax"] == VERIFICATION_SOP_CLASS for e in events)
    assert [(op.calling_ae, op.called_ae, op.service, op.message_id) for op in seen] == [
        ("CALLER", "EVT", "C-ECHO", 1), ("CALLER", "EVT", "C-ECHO", 2)]
    assert seen[0].association_id == events[0].assoc.id
    assert current_operation.get() is None  # reset after each handler


def test_nothing_is_built_when_nobody_listens() -> None:
    class CountingBus(EventBus):
        emitted: list[str] = []

        def emit(self, kind: str, assoc: Any, **detail: Any) -> None:
            self.emitted.append(kind)
            super().emit(kind, assoc, **detail)

    bus = CountingBus()
    bus.subscribe(ev.ASSOCIATION_ACCEPTED, lambda e: None)
    assert asyncio.run(_echo_twice(bus, lambda request: 0)) == [0, 0]
    assert ev.OPERATION_COMPLETED not in bus.emitted and ev.ASSOCIATION_ACCEPTED in bus.emitted


def test_rfc5424_format_and_framing() -> None:
    import datetime as dt

    msg = format_message("héllo", facility=10, severity=5, timestamp=dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC),
                         hostname="pacs host", app_name="pacskit", procid="7", msgid="IHE+RFC-3881",
                         structured_data={"x@32473": {"a": 'q"u]o\\te'}})
    assert msg == (b'<85>1 2026-12-01T10:00:00.000000Z pacs_host pacskit 7 IHE+RFC-3881 '
                   b'[x@32473 a="q\\"u\\]o\\\\te"] ') + b"\xef\xbb\xbf" + "héllo".encode()
    assert frame_octet_counting(b"abc") == b"3 abc"
    nil = format_message(b"raw", hostname="", procid="", msgid=None)
    assert b" - - - " in nil and nil.endswith(b"- raw")
