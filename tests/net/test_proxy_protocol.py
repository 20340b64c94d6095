"""The PROXY protocol on the acceptor (pacskit.net.proxy): headers of both versions parsed exactly,
the client they name becoming the association's peer address, and every bad case closed with a log
line while the acceptor goes on serving. HAProxy itself sends them in tests/security/test_proxy_protocol.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from pacskit.net import NetConfig, Services, SupportedContext
from pacskit.net import events as ev
from pacskit.net.proxy import ProxyProtocolError, TrustedProxies, V2_SIGNATURE, parse_v1, parse_v2
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS

from ._util import LOCALHOST, associate_rq, serving


def v2(source: str = "192.0.2.7", port: int = 40000, *, command: int = 1, tlv: bytes = b"") -> bytes:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    addresses = (socket.inet_pton(family, source) + socket.inet_pton(family, "::1" if family == socket.AF_INET6 else "127.0.0.1")
                 + struct.pack("!HH", port, 11112))
    body = addresses + tlv
    return V2_SIGNATURE + bytes([0x20 | command, (0x10 if family == socket.AF_INET else 0x20) | 0x01]) + struct.pack("!H", len(body)) + body


# --------------------------------------------------------------------------- parsing


def test_v1_lines_give_the_source_address() -> None:
    assert parse_v1(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 11112\r\n") == ("192.0.2.7", 40000)
    assert parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 5 104\r\n") == ("2001:db8::7", 5)
    assert parse_v1(b"PROXY UNKNOWN\r\n") is None
    assert parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") is None


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n",  # a field missing
    b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 11112\n",  # no CR
    b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",  # an IPv6 address in a TCP4 line
    b"PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
    b"PROXY TCP4 192.0.2.7 10.0.0.1 0123 2\r\n",  # leading zero (spec: none)
    b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 10.0.0.1 1 " + b"2" * 80 + b"\r\n",  # longer than 107 bytes
    b"PROXY TCP4 \xff.0.2.7 10.0.0.1 1 2\r\n",
])
def test_malformed_v1_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_v1(line)


def test_v2_headers_give_the_source_address() -> None:
    assert parse_v2(v2("192.0.2.7", 40000)) == ("192.0.2.7", 40000)
    assert parse_v2(v2("2001:db8::7", 5)) == ("2001:db8::7", 5)
    assert parse_v2(v2(tlv=b"\x04\x00\x03abc")) == ("192.0.2.7", 40000)  # TLVs after the addresses are skipped
    assert parse_v2(v2(command=0)) is None  # LOCAL: the balancer's own connection


@pytest.mark.parametrize("header", [
    V2_SIGNATURE[:-1] + b"X" + v2()[12:],  # signature
    v2()[:12] + b"\x11" + v2()[13:],  # version 1 in a v2 header
    v2()[:12] + b"\x23" + v2()[13:],  # command 3
    v2()[:13] + b"\x12" + v2()[14:],  # DGRAM
    v2()[:13] + b"\x51" + v2()[14:],  # family 5
    v2()[:-1],  # shorter than its length
    V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # IPv4 with 4 address bytes
])
def test_malformed_v2_headers_are_refused(header: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_v2(header)


def test_trusted_proxies_match_addresses_and_networks() -> None:
    trusted = TrustedProxies(["10.0.0.0/24", "127.0.0.1", "2001:db8::/32"])
    assert trusted.trusts(("10.0.0.7", 1)) and trusted.trusts(("127.0.0.1", 1)) and trusted.trusts(("2001:db8::5", 1, 0, 0))
    assert trusted.trusts(("::ffff:10.0.0.9", 1, 0, 0))  # an IPv4 balancer on a dual-stack socket
    assert not trusted.trusts(("10.0.1.7", 1)) and not trusted.trusts(("127.0.0.2", 1)) and not trusted.trusts("/tmp/x")
    assert not TrustedProxies() and not TrustedProxies().trusts(("127.0.0.1", 1))
    with pytest.raises(ValueError):
        TrustedProxies(["not-an-address"])


# --------------------------------------------------------------------------- on the acceptor


def _echo_services() -> Services:
    services = Services()
    services.register("C-ECHO", lambda req: 0x0000)
    return services


def _exchange(port: int, chunks: list[bytes], source: str = LOCALHOST) -> bytes:
    """Send ``chunks`` (one write each) then read the first PDU's type; b"" if the server closed."""
    with socket.create_connection((LOCALHOST, port), timeout=10, source_address=(source, 0)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            sock.sendall(chunk)
        try:
            return sock.recv(1)
        except ConnectionResetError:
            return b""


async def _serving_with_proxy(trusted: list[str], artim: float = 5.0):  # type: ignore[no-untyped-def]
    config = NetConfig(proxy_protocol_from=TrustedProxies(trusted), artim_timeout=artim)
    return serving(_echo_services(), [SupportedContext(VERIFICATION_SOP_CLASS)], config=config)


@pytest.mark.parametrize("header, client", [
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 11112\r\n", ("192.0.2.7", 40000)),
    (v2("2001:db8::7", 5), ("2001:db8::7", 5)),
    (v2(command=0), None),  # LOCAL: the balancer's address stays
])
def test_the_named_client_is_the_peer_and_the_association_proceeds(header: bytes, client: tuple[str, int] | None) -> None:
    async def main() -> None:
        async with await _serving_with_proxy(["127.0.0.1"]) as acceptor:
            seen: list[object] = []
            acceptor.bus.subscribe(ev.CONNECTION_OPENED, lambda e: seen.append((e.detail["peer"], e.assoc.proxy_address)))
            # the header and the A-ASSOCIATE-RQ in one write: the acceptor must take the header's bytes only
            answer = await asyncio.to_thread(_exchange, acceptor.port, [header + associate_rq()])
            assert answer == b"\x02"  # A-ASSOCIATE-AC
            assert len(seen) == 1
            peer, balancer = seen[0]  # type: ignore[misc]
            if client is None:
                assert peer[0] == "127.0.0.1" and balancer is None
            else:
                assert tuple(peer) == client and balancer[0] == "127.0.0.1"

    asyncio.run(main())


def test_a_header_sent_a_byte_at_a_time_is_read_whole() -> None:
    async def main() -> None:
        async with await _serving_with_proxy(["127.0.0.1"]) as acceptor:
            header = b"PROXY TCP4 198.51.100.9 127.0.0.1 1234 11112\r\n"
            chunks = [header[i:i + 1] for i in range(len(header))] + [associate_rq()]
            assert await asyncio.to_thread(_exchange, acceptor.port, chunks) == b"\x02"
            assert await asyncio.to_thread(_exchange, acceptor.port, [v2()[:5], v2()[5:17], v2()[17:], associate_rq()]) == b"\x02"

    asyncio.run(main())


@pytest.mark.parametrize("first", [
    associate_rq(),  # a trusted balancer that sends no header: its client's bytes are not a header
    b"PROXY TCP4 192.0.2.300 127.0.0.1 1 2\r\n",
    V2_SIGNATURE + b"\x21\x11\xff\xff",  # a 64 KiB header is not buffered
    b"PROXY " + b"9" * 200,
])
def test_a_bad_header_from_the_balancer_closes_that_connection_only(first: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with await _serving_with_proxy(["127.0.0.1"]) as acceptor:
            with caplog.at_level(logging.WARNING, logger="pacskit.net"):
                assert await asyncio.to_thread(_exchange, acceptor.port, [first]) == b""
            assert any("load balancer 127.0.0.1" in r.getMessage() for r in caplog.records)
            assert not acceptor.associations
            good = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 11112\r\n" + associate_rq()
            assert await asyncio.to_thread(_exchange, acceptor.port, [good]) == b"\x02"  # still serving

    asyncio.run(main())


def test_a_balancer_silent_past_the_artim_timeout_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with await _serving_with_proxy(["127.0.0.1"], artim=0.3) as acceptor:
            with caplog.at_level(logging.WARNING, logger="pacskit.net"):
                assert await asyncio.to_thread(_exchange, acceptor.port, [b"PROXY TCP4 1"]) == b""
            assert any("no PROXY header within the ARTIM timeout" in r.getMessage() for r in caplog.records)

    asyncio.run(main())


def test_a_caller_not_listed_cannot_choose_its_address() -> None:
    """Only the listed balancers' headers are read: anyone else's is DICOM, and not valid DICOM."""
    async def main() -> None:
        async with await _serving_with_proxy(["127.0.0.2"]) as acceptor:
            seen: list[object] = []
            acceptor.bus.subscribe(ev.CONNECTION_OPENED, lambda e: seen.append(e.detail["peer"]))
            spoof = b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 11112\r\n" + associate_rq()
            answer = await asyncio.to_thread(_exchange, acceptor.port, [spoof], "127.0.0.1")
            assert answer in (b"", b"\x07")  # closed, or A-ABORT
            assert all(peer[0] == "127.0.0.1" for peer in seen)  # type: ignore[index]
            # and a direct caller (no header) from an address not listed is served as usual
            assert await asyncio.to_thread(_exchange, acceptor.port, [associate_rq()], "127.0.0.1") == b"\x02"
            # while the listed balancer's header is honoured
            assert await asyncio.to_thread(_exchange, acceptor.port, [spoof], "127.0.0.2") == b"\x02"
            assert seen[-1][0] == "10.1.2.3"  # type: ignore[index]

    asyncio.run(main())
