"""A pacskit server with the media creation add-in for the tests: in a thread (pynetdicom drives it
from the test thread), or as a process of its own (for ``kill -9``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacskit.config.settings import load_settings
from pacskit.server.server import Server, open_store

AE = "MEDIASCP"

LAUNCHER = """
import asyncio, signal, sys
from pacskit.config.settings import load_settings
from pacskit.server.server import Server
from pacskit.addins.verification import VerificationAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.addins.media import MediaCreationAddIn

async def main():
    server = Server(load_settings(sys.argv[1]), addin_classes=[VerificationAddIn, StorageAddIn, MediaCreationAddIn])
    await server.start()
    print("PORT", server.port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=5)

asyncio.run(main())
"""


def addin_classes() -> list[type]:
    from pacskit.addins.media import MediaCreationAddIn
    from pacskit.addins.query import QueryAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn

    return [VerificationAddIn, StorageAddIn, QueryAddIn, MediaCreationAddIn]


def write_settings(folder: Path, **media: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'ae_title = "{AE}"', "port = 0", 'data_dir = "data"', "[addins.media]"]
    for key, value in media.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, dict):
            inner = ", ".join(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, bool) else f"{k} = {str(v).lower()}"
                              for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return folder


def ingest(folder: Path, paths: list[Path]) -> None:
    """Store files in the server folder's archive (before the server starts)."""
    store = open_store(load_settings(folder))
    try:
        for p in paths:
            assert store.ingest(p, source_ae="TEST").stored
    finally:
        store.close()


@contextmanager
def running_server(folder: Path) -> Iterator[Server]:
    started = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        async def serve() -> None:
            server = Server(load_settings(folder), addin_classes=addin_classes())
            try:
                await server.start()
            except BaseException as exc:
                holder["error"] = exc
                started.set()
                return
            holder["server"], holder["loop"] = server, asyncio.get_running_loop()
            holder["stop"] = stop = asyncio.Event()
            started.set()
            await stop.wait()
            await server.stop(grace=5)

        asyncio.run(serve())

    thread = threading.Thread(target=main, name="media-server", daemon=True)
    thread.start()
    started.wait(60)
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["server"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def start_process(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """The server as a process of its own; returns it and its port."""
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("PORT "):
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()  # keep the pipe drained
            return proc, int(line.split()[1])
    raise AssertionError(f"server did not start (exit {proc.wait()})")
