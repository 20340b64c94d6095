"""A pacskit :class:`~pacskit.server.server.Server` in a background thread, for tests that drive it
from the test thread with blocking clients (DCMTK tools, the pacskit SCUs).

The server runs on its own event loop in a daemon thread; :func:`running_server` yields it once it
listens (so ``server.port`` is the port it bound, with ``port = 0`` in the settings), re-raises in
the caller an error it met while starting, and stops it (``grace`` seconds) when the block ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacskit.services import AddIn
from pacskit.config.settings import load_settings
from pacskit.server.server import Server


@contextmanager
def running_server(
    folder: Path,
    *,
    addin_classes: Sequence[type[AddIn]] | None = None,
    name: str = "pacskit-server",
    grace: float = 5,
    servers: Any = None,
) -> Iterator[Server]:
    """``Server(load_settings(folder), addin_classes=...)`` in a thread named ``name``; stopped at the end.
    ``servers``: the servers root the server belongs to (:class:`pacskit.services.ServersRoot`)."""
    started = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        async def serve() -> None:
            server = Server(load_settings(folder), addin_classes=addin_classes, servers=servers)
            try:
                await server.start()
            except BaseException as exc:  # re-raised in the test thread
                holder["error"] = exc
                started.set()
                return
            holder.update(server=server, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            started.set()
            await holder["stop"].wait()
            await server.stop(grace=grace)

        asyncio.run(serve())

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    started.wait(60)
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["server"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


def toml_line(key: str, value: Any) -> str:
    """``key = value`` for a test's ``server.toml``: booleans, strings, numbers and lists of them."""
    if isinstance(value, bool):
        return f"{key} = {str(value).lower()}"
    if isinstance(value, str):
        return f"{key} = {value!r}"
    return f"{key} = {value!r}".replace("'", '"')
