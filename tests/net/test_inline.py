"""Handlers that may run on the event loop's own thread (InlineHandler): where they run, and the timeout
contract when they do (the watchdog answers for a handler that holds the loop).

The acceptor runs on its own event loop in a thread, the requestor on the test's loop: a handler only
runs inline on an association that is the only connection of its loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import InlineHandler, NetConfig, RequestedContext, Services, SupportedContext, connect
from pacskit.net import dul as dul_module
from pacskit.net import watchdog

from ._util import AE, LOCALHOST, serving

CONTEXTS = [SupportedContext(VERIFICATION_SOP_CLASS)]
REQUESTED = [RequestedContext(VERIFICATION_SOP_CLASS)]


@contextlib.contextmanager
def acceptor_in_thread(services: Services, config: NetConfig | None = None) -> Iterator[dict[str, Any]]:
    """An acceptor on its own event loop in a thread; yields {"port", "loop", "thread"}."""
    ready = threading.Event()
    held: dict[str, Any] = {}

    def main() -> None:
        async def serve() -> None:
            async with serving(services, CONTEXTS, config=config) as acceptor:
                held.update(port=acceptor.port, loop=asyncio.get_running_loop(), thread=threading.current_thread(),
                            stop=asyncio.Event(), acceptor=acceptor)
                ready.set()
                await held["stop"].wait()

        asyncio.run(serve())

    thread = threading.Thread(target=main, name="inline-acceptor", daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield held
    finally:
        held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(30)


def _where(threads: list[threading.Thread], status: int = 0x0000):
    def on_echo(request):
        threads.append(threading.current_thread())
        return status
    return on_echo


def test_inline_handler_runs_on_the_loop_thread_of_a_lone_association():
    threads: list[threading.Thread] = []
    services = Services()
    services.register("C-ECHO", InlineHandler(_where(threads)), timeout=30)

    with acceptor_in_thread(services) as server:
        async def main():
            async with await connect(LOCALHOST, server["port"], called_ae=AE, contexts=REQUESTED) as assoc:
                return [await assoc.echo(), await assoc.echo()]

        assert asyncio.run(main()) == [0, 0]
    assert threads == [server["thread"], server["thread"]]


@pytest.mark.parametrize("brief, inline", [(None, False), (lambda request: True, True), (lambda request: False, False)])
def test_inline_handler_beside_another_association_runs_on_the_loop_only_when_brief(brief, inline):
    """Alone on its loop the handler runs inline. Beside another association it runs in the pool,
    unless its ``brief`` says yes (asked only then); once the other one is gone, inline again."""
    threads: list[threading.Thread] = []
    asked: list[int] = []
    services = Services()

    def is_brief(request):
        asked.append(request.message_id)
        return brief(request)

    services.register("C-ECHO", InlineHandler(_where(threads), brief=is_brief if brief else None), timeout=30)

    with acceptor_in_thread(services) as server:
        async def main():
            async with await connect(LOCALHOST, server["port"], called_ae=AE, contexts=REQUESTED) as first:
                alone = await first.echo()
                async with await connect(LOCALHOST, server["port"], called_ae=AE, contexts=REQUESTED) as second:
                    both = [await first.echo(), await second.echo()]
                again = await first.echo()  # the second one is gone: inline again
            return [alone, *both, again]

        assert asyncio.run(main()) == [0, 0, 0, 0]
    loop_thread = server["thread"]
    assert [t is loop_thread for t in threads] == [True, inline, inline, True]
    assert len(asked) == (2 if brief else 0)


@pytest.mark.parametrize("config, when", [(NetConfig(inline_handlers=False), None), (None, lambda request: False)])
def test_inline_handler_declined_runs_in_the_pool(config, when):
    """``NetConfig.inline_handlers=False`` and a ``when`` that says no both keep it in the pool."""
    threads: list[threading.Thread] = []
    services = Services()
    services.register("C-ECHO", InlineHandler(_where(threads), when=when))

    with acceptor_in_thread(services, config) as server:
        async def main():
            async with await connect(LOCALHOST, server["port"], called_ae=AE, contexts=REQUESTED) as assoc:
                return await assoc.echo()

        assert asyncio.run(main()) == 0
    assert len(threads) == 1 and threads[0] is not server["thread"]


def test_inline_handler_that_overruns_is_answered_by_the_watchdog_and_the_association_goes_on(caplog):
    """The handler holds the loop's thread until the test lets it go, which it does only once the
    failure answer has arrived: so the answer was sent while the loop was held (by the watchdog).
    What the handler returns afterwards is dropped; the next request is served as usual."""
    release = threading.Event()
    calls: list[str] = []

    def on_echo(request):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            assert release.wait(30)
            return 0x0000  # too late: dropped
        return 0x0000

    services = Services()
    services.register("C-ECHO", InlineHandler(on_echo), timeout=0.3)
    before = watchdog.WATCHDOG.overruns

    with caplog.at_level(logging.WARNING, logger="pacskit.net"), acceptor_in_thread(services) as server:
        async def main():
            async with await connect(LOCALHOST, server["port"], called_ae=AE, contexts=REQUESTED) as assoc:
                first = await assoc.echo()
                release.set()
                second = await assoc.echo()
                return first, second, assoc.is_established and not assoc.is_aborted

        first, second, still_up = asyncio.run(main())
    assert (first, second, still_up) == (0x0110, 0x0000, True)
    assert calls == ["inline-acceptor", "inline-acceptor"]
    assert watchdog.WATCHDOG.overruns == before + 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("did not answer within 0.3 s (on the event loop's thread): answered 0x0110" in m for m in messages)
    assert any("returned after its timeout was answered" in m for m in messages)


async def _two_echoes_released_between(port: int, release: threading.Event) -> tuple[int, int]:
    """Two C-ECHOs on one association, ``release`` set between them: the statuses."""
    async with await connect(LOCALHOST, port, called_ae=AE, contexts=REQUESTED) as assoc:
        first = await assoc.echo()
        release.set()
        return first, await assoc.echo()


def test_an_awaitable_an_overrun_inline_handler_returns_still_runs_to_its_end():
    """An inline handler may return an awaitable (the Storage add-in awaits a flush that way). Returned
    after the watchdog answered, it is not answered with, but it still runs: it may have to settle
    what the handler began."""
    release = threading.Event()
    settled = threading.Event()

    def on_echo(request):
        if not release.is_set():
            assert release.wait(30)

            async def late() -> int:
                await asyncio.sleep(0)
                settled.set()
                return 0x0000

            return late()
        return 0x0000

    services = Services()
    services.register("C-ECHO", InlineHandler(on_echo), timeout=0.3)

    with acceptor_in_thread(services) as server:
        assert asyncio.run(_two_echoes_released_between(server["port"], release)) == (0x0110, 0x0000)
        assert settled.wait(30)


def test_inline_handler_that_raises_after_its_timeout_is_not_answered_twice(caplog):
    release = threading.Event()

    def on_echo(request):
        if not release.is_set():
            assert release.wait(30)
            raise RuntimeError("late failure")
        return 0x0000

    services = Services()
    services.register("C-ECHO", InlineHandler(on_echo), timeout=0.3)

    with caplog.at_level(logging.WARNING, logger="pacskit.net"), acceptor_in_thread(services) as server:
        assert asyncio.run(_two_echoes_released_between(server["port"], release)) == (0x0110, 0x0000)
    assert any("raised after its timeout was answered" in r.getMessage() for r in caplog.records)


def test_send_from_thread_cuts_the_connection_when_it_cannot_send():
    """When the watchdog's answer cannot go out whole (here: nothing to send, as when it could not be
    encoded), the connection is shut down, so the peer is not left waiting for an answer."""

    async def main():
        services = Services()
        services.register("C-ECHO", lambda request: 0)
        async with serving(services, CONTEXTS) as acceptor:
            assoc = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED)
            server_side = next(iter(acceptor.associations))
            assert server_side.dul.send_from_thread(None) is False
            await asyncio.wait_for(assoc.dul.closed, 10)
            return assoc.is_aborted

    assert asyncio.run(main()) is True


def test_open_connections_are_counted_per_loop():
    async def main():
        loop = asyncio.get_running_loop()
        services = Services()
        services.register("C-ECHO", lambda request: 0)
        assert dul_module.open_connections(loop) == 0
        async with serving(services, CONTEXTS) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                during = dul_module.open_connections(loop)  # both ends are on this loop
            await asyncio.wait_for(assoc.dul.closed, 10)
            for server_side in list(acceptor.associations):
                await asyncio.wait_for(server_side.dul.closed, 10)
        return during, dul_module.open_connections(loop)

    assert asyncio.run(main()) == (2, 0)


def test_only_plain_functions_may_be_inline():
    async def coroutine(request):
        return 0

    def generator(request):
        yield 0

    for fn in (coroutine, generator):
        with pytest.raises(TypeError, match="only a plain function"):
            InlineHandler(fn)


def test_server_toml_inline_handlers_reaches_the_engine(tmp_path):
    from pacskit.config.settings import load_settings

    assert load_settings(tmp_path).net_config().inline_handlers is True  # the default
    (tmp_path / "server.toml").write_text("inline_handlers = false\n")
    assert load_settings(tmp_path).net_config().inline_handlers is False
