"""A pacskit server with the print add-in, running in a thread (tests drive it with SCUs and DCMTK)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacskit.addins.print import PrintAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.config.settings import load_settings
from pacskit.server.server import Server

AE = "PRINTSCP"


def write_settings(folder: Path, **print_options: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    print_options.setdefault("enabled", True)
    lines = [f'ae_title = "{AE}"', "port = 0", 'data_dir = "data"', "[addins.verification]", "[addins.print]"]
    for key, value in print_options.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f"{key} = {value!r}")
        else:
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return folder


@contextmanager
def print_server(folder: Path, **print_options: Any) -> Iterator[Server]:
    """``Server`` with the verification and print add-ins (given as classes: the editable install's
    entry points may predate the print add-in) in a thread; stopped at the end."""
    write_settings(folder, **print_options)
    started = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        async def serve() -> None:
            server = Server(load_settings(folder), addin_classes=[VerificationAddIn, PrintAddIn])
            try:
                await server.start()
            except BaseException as exc:
                holder["error"] = exc
                started.set()
                return
            holder.update(server=server, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            started.set()
            await holder["stop"].wait()
            await server.stop(grace=5)

        asyncio.run(serve())

    thread = threading.Thread(target=main, name="print-server", daemon=True)
    thread.start()
    started.wait(60)
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["server"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


def print_addin(server: Server) -> PrintAddIn:
    return next(a for a in server.addins if isinstance(a, PrintAddIn))
