"""ASGI applications served by uvicorn on the server's own event loop: no thread, no second process.

Both HTTP listeners of a server use this: the admin API (:mod:`pacskit.server.admin_api`) and the
public listener of the add-ins' HTTP services (:mod:`pacskit.server.http`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


class AsgiServers:
    """The uvicorn servers one component runs, each on sockets it was given (already listening)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._running: list[tuple[Any, list[socket.socket], asyncio.Task[None]]] = []

    async def serve(self, app: Any, sock: socket.socket, *, forwarded_from: list[str] | None = None, **ssl: str) -> None:
        """Serve ``app`` on ``sock`` (``ssl_certfile``/``ssl_keyfile`` for HTTPS). ``forwarded_from``:
        the load balancers whose ``X-Forwarded-For`` names the client (uvicorn's default, loopback
        only, when not given). Raises what uvicorn raises when it cannot start (an unreadable
        certificate, say)."""
        import uvicorn

        trust = {"forwarded_allow_ips": [str(n) for n in forwarded_from]} if forwarded_from else {}
        config = uvicorn.Config(
            app,
            **trust,  # type: ignore[arg-type]
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            **ssl,  # type: ignore[arg-type]
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        task = asyncio.get_running_loop().create_task(server.main_loop(), name=self.name)
        self._running.append((server, [sock], task))

    async def stop(self) -> None:
        """Stop every server (open requests get uvicorn's graceful shutdown of 2 s)."""
        for server, sockets, task in self._running:
            server.should_exit = True
            await task
            await server.shutdown(sockets=sockets)
        self._running.clear()


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (0: any free port; ``reuse_port``:
    ``SO_REUSEPORT``, for processes sharing the port). Raises ``OSError``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, proto, _, address = infos[0]
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # accepted sockets inherit it; without it every response waits ~40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
