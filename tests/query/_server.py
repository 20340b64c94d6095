"""A pacskit server running in a background thread (its own event loop) for tests driving it with
DCMTK tools from the test thread."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.engine import URL

from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.testing.peers import dcmtk_env, dcmtk_tool

AE = "QRPACS"


def write_settings(folder: Path, db_url: URL | str | None = None, **query_options: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'ae_title = "{AE}"', "port = 0", 'data_dir = "data"']
    if db_url is not None:
        url = db_url.render_as_string(hide_password=False) if isinstance(db_url, URL) else db_url
        lines += ["[database]", f"url = {url!r}"]
    lines.append("[addins.query]")
    for key, value in query_options.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, bool) else f"{key} = {str(value).lower()}")
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return folder


@contextmanager
def running_server(folder: Path) -> Iterator[Server]:
    """Start ``Server(load_settings(folder))`` in a thread; stop it at the end."""
    started = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        async def serve() -> None:
            server = Server(load_settings(folder))
            try:
                await server.start()
            except BaseException as exc:
                holder["error"] = exc
                started.set()
                return
            holder["server"] = server
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = stop = asyncio.Event()
            started.set()
            await stop.wait()
            await server.stop(grace=5)

        asyncio.run(serve())

    thread = threading.Thread(target=main, name="qr-server", daemon=True)
    thread.start()
    started.wait(60)
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["server"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


def findscu(port: int, model: str, keys: Sequence[str | bytes], out_dir: Path, *extra: str,
            timeout: float = 120, called: str = AE) -> tuple[list[Dataset], str]:
    """Run DCMTK ``findscu -v`` (``model``: ``-S`` or ``-P``) with ``-k`` keys, extracting the answers
    (``-X``); returns the answer identifiers (pydicom) and findscu's output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    argv: list[str | bytes] = [dcmtk_tool("findscu"), "-v", model, "-aec", called, "-aet", "FINDSCU", "-X",
                               "-od", str(out_dir), *extra]
    for key in keys:
        argv += ["-k", key]
    argv += ["127.0.0.1", str(port)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          env=dcmtk_env(), timeout=timeout, check=False)
    output = proc.stdout.decode("utf-8", errors="replace")
    answers = [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
    return answers, output
