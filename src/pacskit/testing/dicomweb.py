"""Run a pacskit server with the DICOMweb add-in (and the DIMSE storage/query/retrieve add-ins), running
on its own event loop in a thread so synchronous clients (dicomweb-client, Orthanc) can call it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacskit.addins.dicomweb import DicomWebAddIn
from pacskit.addins.query import QueryAddIn
from pacskit.addins.retrieve import RetrieveAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.config.settings import load_settings
from pacskit.server.server import Server

ADDINS = [VerificationAddIn, StorageAddIn, QueryAddIn, RetrieveAddIn, DicomWebAddIn]


@dataclass
class Running:
    server: Server
    loop: asyncio.AbstractEventLoop
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http.port}/dicom-web"

    @property
    def dicom_port(self) -> int:
        return self.server.port

    def ingest(self, paths: Any) -> None:
        for path in paths:
            self.server.store.ingest(str(path), source_ae="TEST")

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


def write_folder(tmp_path: Path, extra: str = "", ae_titles: str = "") -> Path:
    folder = tmp_path / "srv"
    folder.mkdir(exist_ok=True)
    (folder / "server.toml").write_text(
        'ae_title = "PACSKIT"\nport = 0\ndata_dir = "data"\n[admin]\nenabled = false\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\n[addins.dicomweb]\nenabled = true\n' + extra)
    if ae_titles:
        (folder / "ae-titles.toml").write_text(ae_titles)
    return folder


def keep_copies(tmp_path: Path, files: list[Path]) -> list[Path]:
    """Copies of ``files`` to ingest (ingest consumes what it is given)."""
    out = []
    for i, f in enumerate(files):
        dest = tmp_path / "copies" / f"{i}.dcm"
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(f.read_bytes())
        out.append(dest)
    return out


@contextlib.contextmanager
def start_server(folder: Path) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event  # created on the loop
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["stop"] = stop()
        try:
            async with Server(load_settings(folder), addin_classes=ADDINS, use_entry_points=False) as server:
                holder["server"] = server
                started.set()
                await holder["stop"].wait()
        except BaseException as exc:
            holder["error"] = exc
            started.set()
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(60)
    if "error" in holder:
        raise holder["error"]
    try:
        yield Running(holder["server"], loop, folder)
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(60)
        loop.close()




ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def have_orthanc_dicomweb() -> bool:
    """Orthanc and its DICOMweb plugin (Debian ``orthanc-dicomweb``) are installed."""
    from pacskit.testing.peers import have_orthanc

    return have_orthanc() and Path(ORTHANC_DICOMWEB_PLUGIN).exists()


@contextlib.contextmanager
def orthanc_dicomweb(work_dir: Path, servers: dict[str, str] | None = None, **kwargs: Any) -> Iterator[Any]:
    """An Orthanc with its DICOMweb plugin (server at ``/dicom-web/``; ``servers``: name -> base URL of
    DICOMweb servers it may call as a client, ``/dicom-web/servers/<name>/...``)."""
    from pacskit.testing.peers import orthanc

    config = {
        "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Servers": {name: [url.rstrip("/") + "/"] for name, url in (servers or {}).items()}},
    }
    extra = dict(kwargs.pop("extra_config", {}) or {})
    config.update(extra)
    with orthanc(work_dir, extra_config=config, **kwargs) as peer:
        yield peer


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(content type with parameters, body) of each part of a multipart/related answer, parsed with
    the standard library's MIME parser (not pacskit's code)."""
    import email.parser
    import email.policy

    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise ValueError(f"not a multipart body: {content_type}")
    out = []
    for part in msg.iter_parts():
        params = "".join(f"; {k}={v}" for k, v in part.get_params()[1:])
        out.append((part.get_content_type() + params, part.get_payload(decode=True)))
    return out
