"""Fixtures for the TLS and access-control tests: a lab PKI with good and bad certificates, and a pacskit
server running in a thread of its own (so DCMTK tools can be run synchronously against it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pacskit.cli.certs import issue_certificate, make_ca, make_crl, new_key, write_key, write_pem
from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.server.server import Server
from pacskit.config.settings import load_settings


@dataclass
class Pki:
    folder: Path
    ca: Path
    crl: Path
    server_cert: Path
    server_key: Path

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.pem", self.folder / f"{name}.key"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA + server certificate + client certificates: ``good`` (CN MODALITY1), ``other`` (CN OTHER),
    ``revoked`` (listed in the CRL), ``expired``, ``selfsigned``, ``foreign`` (another CA), ``wrongkey``
    (good's certificate with another key) and ``corrupt`` (a damaged PEM)."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    ca.save(folder, "ca")
    issue_certificate(ca, "localhost", server=True, dns_names=["localhost"], ip_addresses=["127.0.0.1"]).save(folder, "server")
    good = issue_certificate(ca, "MODALITY1")
    good.save(folder, "good")
    issue_certificate(ca, "OTHER").save(folder, "other")
    revoked = issue_certificate(ca, "REVOKED")
    revoked.save(folder, "revoked")
    now = dt.datetime.now(dt.UTC)
    issue_certificate(ca, "MODALITY1", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)).save(folder, "expired")
    issue_certificate(None, "MODALITY1").save(folder, "selfsigned")
    foreign_ca = make_ca("some other CA")
    foreign_ca.save(folder, "foreign-ca")
    issue_certificate(foreign_ca, "MODALITY1").save(folder, "foreign")
    write_pem(folder / "wrongkey.pem", good.certificate)
    write_key(folder / "wrongkey.key", new_key())
    text = (folder / "good.pem").read_text()
    lines = text.splitlines()
    lines[5] = lines[5][:10] + ("A" if lines[5][10] != "A" else "B") + lines[5][11:]  # one base64 character flipped
    (folder / "corrupt.pem").write_text("\n".join(lines) + "\n")
    (folder / "corrupt.key").write_bytes((folder / "good.key").read_bytes())
    write_pem(folder / "crl.pem", make_crl(ca, [revoked.certificate]))
    return Pki(folder, folder / "ca.pem", folder / "crl.pem", folder / "server.pem", folder / "server.key")


class ServerThread:
    """A :class:`Server` on an event loop in a daemon thread; ``port`` / ``tls_port`` once started."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.server.stop(grace=1.0)

    def start(self) -> ServerThread:
        self.thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls_port(self) -> int:
        port = self.server.tls_port
        assert port is not None
        return port


def server_folder(tmp: Path, *, ae_title: str = "SECPACS", tls: dict[str, Any] | None = None,
                  open_mode: bool | None = False, entries: Sequence[RemoteAE] = (), artim: float = 5) -> Path:
    """A server folder: settings (``tls`` is the ``[addins.tls]`` section) and AE registry ``entries``."""
    import tomli_w

    folder = tmp / "srv"
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {"ae_title": ae_title, "port": 0, "data_dir": "data", "timeouts": {"artim": artim, "acse": 10}}
    if open_mode is not None:
        settings["open_mode"] = open_mode
    if tls is not None:
        settings["addins"] = {"tls": {"enabled": True, "port": 0, **tls}}
    (folder / "server.toml").write_text(tomli_w.dumps(settings))
    registry = FileAeRegistry(folder / "ae-titles.toml")
    for entry in entries:
        registry.add(entry, replace=True)
    return folder


@contextmanager
def running_server(folder: Path) -> Iterator[ServerThread]:
    from pacskit.addins.audit import AuditAddIn
    from pacskit.addins.query import QueryAddIn
    from pacskit.addins.retrieve import RetrieveAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.tls import TlsAddIn
    from pacskit.addins.verification import VerificationAddIn

    settings = load_settings(folder)
    server = Server(settings, addin_classes=[VerificationAddIn, StorageAddIn, QueryAddIn, RetrieveAddIn, TlsAddIn, AuditAddIn])
    thread = ServerThread(server).start()
    try:
        yield thread
    finally:
        thread.stop()
