"""Compression add-in: stored instances are compressed losslessly right after they were received.

Off by default. ``[addins.compression]``: ``enabled = true``, ``syntax = "j2k"`` (JPEG 2000 lossless;
``rle``: RLE Lossless; ``jpeg-ls``: needs pyjpegls). Each instance received uncompressed (the C-STORE
answered Success) is queued and re-encoded in a worker thread by :mod:`pacskit.store.compression`:
the new encoding is kept only if its pixels decode byte for byte to the original's, the file is
replaced crash-safely and the index records the new transfer syntax. The modality is never kept
waiting (it got its answer already); a crash before an instance was compressed leaves it stored
uncompressed (``pacskit compress`` does it later). C-MOVE / C-GET convert back to an uncompressed
syntax for peers that do not accept the stored one.

Admin API: ``GET /addins/compression/status`` (compressed, skipped, waiting, bytes saved).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from pydantic import Field

from pacskit.dicom.status import Status
from pacskit.net import events as ev
from pacskit.services import AddIn, AddInOptions
from pacskit.store.compression import SYNTAXES, CompressionError, _encoder_ready, compress

log = logging.getLogger("pacskit.addin.compression")


class CompressionOptions(AddInOptions):
    enabled: bool = False
    syntax: Literal["rle", "j2k", "jpeg-ls"] = Field("j2k", description="the lossless syntax stored instances get")
    batch: int = Field(32, ge=1, le=1000, description="instances compressed per worker pass")


class CompressionAddIn(AddIn):
    name = "compression"
    description = "Lossless compression of received instances (RLE, JPEG 2000, JPEG-LS), pixels verified"
    Options = CompressionOptions
    options: CompressionOptions

    async def start(self) -> None:
        self.compressed = 0
        self.skipped = 0
        self.saved = 0
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        if self.base.store is None:
            log.error("compression: the server has no store")
            return
        try:
            _encoder_ready(SYNTAXES[self.options.syntax])
        except CompressionError as exc:
            raise ValueError(f"[addins.compression] {exc}") from None
        self.base.events.subscribe(ev.OPERATION_COMPLETED, self._on_operation)
        self._task = asyncio.create_task(self._worker(), name="compression")

    async def stop(self) -> None:
        if self._task is None:
            return
        self.base.events.unsubscribe(ev.OPERATION_COMPLETED, self._on_operation)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _on_operation(self, event: Any) -> None:
        detail = event.detail
        if detail.get("service") != "C-STORE" or detail.get("status") != Status.SUCCESS:
            return
        if str(detail.get("transfer_syntax", "")) not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
            return  # received compressed: stored as received
        uid = str(detail["command"].get("AffectedSOPInstanceUID", ""))
        if uid:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, uid)

    async def _worker(self) -> None:
        store = self.base.store
        assert store is not None
        while True:
            uids = [await self._queue.get()]
            while len(uids) < self.options.batch and not self._queue.empty():
                uids.append(self._queue.get_nowait())
            try:
                report = await asyncio.to_thread(compress, store, "instance", uids, self.options.syntax)
            except Exception:
                log.exception("compression of %d instances failed; they stay as stored", len(uids))
                continue
            self.compressed += report.compressed
            self.skipped += len(report.skipped)
            self.saved += report.bytes_before - report.bytes_after
            for uid, why in report.skipped:
                log.info("compression: %s left as it is: %s", uid, why)

    def admin_router(self) -> Any | None:
        from fastapi import APIRouter

        router = APIRouter()

        @router.get("/status")
        async def status() -> dict[str, Any]:
            return {"syntax": self.options.syntax, "compressed": self.compressed, "skipped": self.skipped,
                    "waiting": self._queue.qsize(), "bytes_saved": self.saved}

        return router
