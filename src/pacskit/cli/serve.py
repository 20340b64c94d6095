"""``pacskit serve``: the engine's Verification and Storage services on a data folder.

Received instances are kept exactly as received (Part 10, file meta built from the association),
fsync'ed and atomically renamed into ``<data-dir>/files/xx/<uuid>.dcm`` before the C-STORE is answered
Success. Names never come from UIDs or patient data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from pathlib import Path

from pynetdicom import AllStoragePresentationContexts

from pacskit.net import (
    ALL_TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    Acceptor,
    NetConfig,
    Request,
    Response,
    Services,
    SupportedContext,
)

log = logging.getLogger("pacskit.serve")

STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderStore:
    """Keeps received Part 10 files under ``root/files``; temp files live in ``root/tmp`` (same FS)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.files = root / "files"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.files.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.glob("rx-*.part"):  # left by a crash: never acknowledged, safe to drop
            stale.unlink(missing_ok=True)

    def keep(self, request: Request) -> str:
        """Move the received file into place durably; runs in the handler thread pool."""
        assert request.received is not None and request.received.path is not None
        name = uuid.uuid4().hex
        folder = self.files / name[:2]
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            _fsync_dir(str(self.files))
        dest = str(folder / f"{name}.dcm")
        request.received.move_to(dest)
        _fsync_dir(str(folder))
        return dest


def build_acceptor(ae: str, data_dir: str, max_associations: int = 100) -> Acceptor:
    store = FolderStore(Path(data_dir))
    services = Services()
    services.register("C-ECHO", lambda request: 0x0000, owner="verification")

    def on_store(request: Request) -> Response:
        try:
            path = store.keep(request)
        except OSError as exc:
            log.error("cannot keep %s: %s", request.sop_instance_uid, exc)
            return Response(0xA700, elements={"ErrorComment": f"cannot store: {exc.strerror}"})
        log.debug("stored %s from %s as %s", request.sop_instance_uid, request.assoc.remote_ae_title, path)
        return Response(0x0000)

    services.register("C-STORE", on_store, owner="storage")
    contexts = [SupportedContext(VERIFICATION_SOP_CLASS)] + [
        SupportedContext(uid, ALL_TRANSFER_SYNTAXES) for uid in STORAGE_SOP_CLASSES
    ]
    config = NetConfig(temp_dir=str(store.tmp), fsync_received=True, max_associations=max_associations)
    return Acceptor(ae, contexts, services, config=config)


def run_server(*, ae: str, host: str, port: int, data_dir: str, max_associations: int = 100) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""

    async def run() -> int:
        acceptor = build_acceptor(ae, data_dir, max_associations)
        try:
            await acceptor.start(host, port)
        except OSError as exc:
            print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", flush=True)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"pacskit {ae} listening on {host}:{acceptor.port}, data in {Path(data_dir).resolve()}", flush=True)
        await stop.wait()
        log.info("shutting down: letting running operations finish")
        await acceptor.close(grace=10.0)
        return 0

    return asyncio.run(run())
