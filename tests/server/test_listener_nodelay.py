"""The HTTP listeners' sockets (server/asgi.py ``bind_tcp``) get TCP_NODELAY on every accepted
connection, as asyncio gives any TCP socket: without it a response written in two pieces (headers,
body) waits for the client's delayed ACK, ~40 ms per request (measured: 44 ms per QIDO-RS search)."""

from __future__ import annotations

import asyncio
import socket

from pacskit.server.asgi import bind_tcp


def test_accepted_connections_have_nodelay() -> None:
    async def run() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listener = bind_tcp("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(run()) != 0
