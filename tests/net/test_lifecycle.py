"""Association life cycle between two pacskit endpoints: association limit, release collision, idle
(network) timeout, release and abort bookkeeping."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import (
    AssociationAborted,
    AssociationRejected,
    EventBus,
    NetConfig,
    RequestedContext,
    Services,
    connect,
)
from pacskit.net import events as ev
from pacskit.net.fsm import State

from ._util import AE, LOCALHOST, StoreLog, serving, wait_until

ECHO_ONLY = [RequestedContext(VERIFICATION_SOP_CLASS)]


def echo_services() -> Services:
    services = Services()
    services.register("C-ECHO", lambda req: 0)
    return services


def test_max_associations_rejects_the_third():
    async def main():
        async with serving(echo_services(), config=NetConfig(max_associations=2)) as acceptor:
            first = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY)
            second = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY)
            with pytest.raises(AssociationRejected) as err:
                await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY)
            # both held associations still work
            statuses = [await first.echo(), await second.echo()]
            await first.release()
            # a slot is free again once one is released
            assert await wait_until(lambda: acceptor.count_others(None) < 2, 10)  # type: ignore[arg-type]
            third = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY)
            statuses.append(await third.echo())
            await third.release()
            await second.release()
        return err.value, statuses

    exc, statuses = asyncio.run(main())
    assert (exc.result, exc.source, exc.reason) == (2, 3, 2)
    assert "local limit exceeded" in exc.description
    assert statuses == [0, 0, 0]


def test_wrong_called_ae_rejected_for_pacskit_requestor():
    async def main():
        async with serving(echo_services()) as acceptor:
            with pytest.raises(AssociationRejected) as err:
                await connect(LOCALHOST, acceptor.port, called_ae="ELSEWHERE", contexts=ECHO_ONLY)
            return err.value

    exc = asyncio.run(main())
    assert (exc.result, exc.source, exc.reason) == (1, 1, 7)


def test_release_collision_ends_released_on_both_sides():
    bus = EventBus()
    seen: list[tuple[str, bool]] = []
    bus.subscribe(ev.ASSOCIATION_RELEASED, lambda e: seen.append(("released", e.assoc.is_requestor)))
    bus.subscribe(ev.ASSOCIATION_ABORTED, lambda e: seen.append(("aborted", e.assoc.is_requestor)))
    sent: list[tuple[bool, int]] = []
    bus.subscribe(ev.PDU_SENT, lambda e: sent.append((e.assoc.is_requestor, e.detail["pdu_type"])) if e.detail["pdu_type"] != 4 else None)

    async def main():
        async with serving(echo_services(), bus=bus) as acceptor:
            client = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY, bus=bus)
            assert await client.echo() == 0
            [server] = list(acceptor.associations)
            assert server.dul.state == State.STA6
            # both sides send A-RELEASE-RQ before either sees the other's: a release collision
            assert server.dul.release_request()
            assert server.dul.state == State.STA7
            await client.release()
            await client.wait_closed()
            assert await wait_until(lambda: server.is_released or server.is_aborted, 10)
            await asyncio.wait_for(server.wait_closed(), 10)
        return client, server

    client, server = asyncio.run(main())
    assert client.is_released and not client.is_aborted
    assert server.is_released and not server.is_aborted
    assert client.dul.state == State.STA1
    assert sorted(seen) == [("released", False), ("released", True)]
    # it really was a collision: each side sent both an A-RELEASE-RQ (5) and an A-RELEASE-RP (6),
    # the requestor's RP first (AR-9), the acceptor's after receiving it (AR-10, AR-4); no A-ABORT (7)
    requestor = [t for is_rq, t in sent if is_rq]
    acceptor = [t for is_rq, t in sent if not is_rq]
    assert requestor == [1, 5, 6]
    assert acceptor == [2, 5, 6]


def test_idle_association_aborted_by_network_timeout(caplog):
    caplog.set_level(logging.WARNING, logger="pacskit.net")

    async def main():
        async with serving(echo_services(), config=NetConfig(network_timeout=1)) as acceptor:
            client = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY)
            assert await client.echo() == 0
            # nothing more is sent: within a few seconds the acceptor aborts
            await asyncio.wait_for(client.wait_closed(), 15)
            gone = await wait_until(lambda: not acceptor.associations, 10)
            with pytest.raises(AssociationAborted):
                await client.echo()
        return client, gone

    client, gone = asyncio.run(main())
    assert client.is_aborted and not client.is_released
    assert gone
    assert any("no traffic" in r.getMessage() for r in caplog.records)


def test_busy_association_not_aborted_by_network_timeout():
    """A long-running handler keeps the association alive even though the peer is silent meanwhile."""
    release = asyncio.Event()

    async def slow_echo(req):
        await release.wait()
        return 0

    services = Services()
    services.register("C-ECHO", slow_echo)

    async def main():
        async with serving(services, config=NetConfig(network_timeout=1)) as acceptor:
            client = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY)
            pending = asyncio.create_task(client.echo())
            await asyncio.sleep(2.5)  # > network_timeout with no traffic, but a request is being handled
            alive = client.is_established and not client.is_aborted
            release.set()
            status = await pending
            await client.release()
        return alive, status

    alive, status = asyncio.run(main())
    assert alive
    assert status == 0


def test_peer_abort_seen_by_requestor():
    """The acceptor side aborts (service user): the requestor sees AssociationAborted on pending calls."""
    started = asyncio.Event()

    async def never(req):
        started.set()
        await asyncio.sleep(60)
        return 0

    services = Services()
    services.register("C-ECHO", never)

    async def main():
        async with serving(services) as acceptor:
            client = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY)
            pending = asyncio.create_task(client.echo())
            await asyncio.wait_for(started.wait(), 10)
            [server] = list(acceptor.associations)
            server.abort()
            with pytest.raises(AssociationAborted) as err:
                await asyncio.wait_for(pending, 10)
            await asyncio.wait_for(client.wait_closed(), 10)
        return err.value, client

    exc, client = asyncio.run(main())
    assert "service-user" in str(exc)
    assert client.is_aborted


def test_release_with_storelog_acceptor_counts():
    """Many sequential associations: each released, none left in the acceptor's table."""

    async def main():
        log = StoreLog()
        async with serving(log.services()) as acceptor:
            for _ in range(20):
                async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY) as assoc:
                    assert await assoc.echo() == 0
            gone = await wait_until(lambda: not acceptor.associations, 10)
        return log.echoes, gone

    echoes, gone = asyncio.run(main())
    assert echoes == 20
    assert gone


def test_byte_counters_match_the_pdus_on_the_wire():
    """``bytes_sent`` / ``bytes_received`` (what the statistics read) count every PDU once: each side's
    sent bytes are the PDU_SENT lengths plus headers, and what one side sent is what the other received."""
    bus = EventBus()
    sent: dict[bool, int] = {True: 0, False: 0}

    def on_sent(e: ev.SpyEvent) -> None:
        sent[e.assoc.is_requestor] += e.detail["length"] + 6

    bus.subscribe(ev.PDU_SENT, on_sent)

    async def main():
        async with serving(echo_services(), bus=bus) as acceptor:
            client = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=ECHO_ONLY, bus=bus)
            for _ in range(3):
                assert await client.echo() == 0
            [server] = list(acceptor.associations)
            await client.release()
            await client.wait_closed()
            await asyncio.wait_for(server.wait_closed(), 10)
        return client, server

    client, server = asyncio.run(main())
    assert client.bytes_sent == sent[True] > 0
    assert server.bytes_sent == sent[False] > 0
    assert server.bytes_received == client.bytes_sent
    assert client.bytes_received == server.bytes_sent
