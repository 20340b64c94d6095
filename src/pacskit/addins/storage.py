"""Storage add-in: the C-STORE SCP of the PACS (PS3.4 Annex B).

Every storage SOP class pydicom knows (200+, including retired ones peers still send), or any
abstract syntax with ``accept_any_sop_class``; every common transfer syntax, stored exactly as received.
The handler runs in the server's thread pool, or on the event loop's thread while its association is
the only one of the process, or while the ingest waits only on this machine
(:meth:`~pacskit.store.DataStore.ingest_is_brief`), and no add-in's ``admit_instance`` is asked
(:class:`~pacskit.services.InlineHandler`: no thread hand-offs in the round trip): the data store
validates the header, hashes, makes the blob durable and commits the index row *before* Success is
returned.

Statuses (PS3.4 B.2.3, PS3.7 C):

========  ==================================================================================
0x0000    stored (or a duplicate kept as first received, with ``duplicate_policy = "keep-first"``)
0x0111    duplicate SOP Instance refused (``duplicate_policy = "reject"``)
0xA700    out of resources (disk full, the storage file system below its free-space watermark
          ``min_free_bytes`` / ``min_free_percent``, dataset above the size cap, deflated dataset
          inflating beyond 256 MiB)
0xA900    dataset does not match the command (SOP Class / Instance UID differ)
0xC000    cannot understand: the dataset does not parse to its last byte in the negotiated transfer
          syntax (cut short, e.g. inside Pixel Data; Implicit VR bytes on an Explicit VR context;
          an item or sequence left open), unparseable header, missing or invalid UIDs, nesting
          too deep. Nothing is kept; the association goes on.
========  ==================================================================================

**Free-space watermark**: with ``min_free_bytes`` and/or ``min_free_percent``, a C-STORE that would
leave less than that free on the file system of the stored files is refused with 0xA700 and an Error
Comment saying how much is free, one warning line in the log per refusal; the received file is
deleted, nothing is indexed. The free space is read (``statvfs``) at most every
``free_space_check_interval`` seconds; a refusal always reads it again. Pair it with the retention
add-in's ``min_free_*`` (which deletes the oldest studies) set above it, so the archive makes room
before it refuses.

Before anything is stored, the enabled add-ins' :meth:`~pacskit.services.AddIn.admit_instance` are
asked (the routing add-in's ``drop`` rules): the first answer is the C-STORE's, nothing is stored.

UIDs that break PS3.5 9.1 harmlessly (a component with a leading zero, a letter, 65 to 128
characters), as legacy modalities send, are stored with a warning in the log, as Orthanc and DCMTK do;
``strict_uids = true`` refuses them with 0xC000. Unsafe values (empty, anything but digits, dots and
letters, over 128 characters) are always refused (docs/store.md).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pacskit.services import (AddIn, AddInOptions, BaseServices, Handler, IncomingInstance, InlineHandler, Request, Response,
                              SupportedContext)
from pacskit.dicom.uids import ALL_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from pacskit.dicom.status import Status

if TYPE_CHECKING:
    from pacskit.store import PendingIngest


class StorageOptions(AddInOptions):
    duplicate_policy: Literal["reject", "keep-first", "overwrite"] = Field(
        "keep-first", description="what to do when a SOP Instance UID is already stored"
    )
    accept_any_sop_class: bool = Field(False, description="accept C-STORE of SOP classes not in the storage list")
    strict_uids: bool = Field(
        False,
        description="refuse (0xC000) UIDs that break PS3.5 9.1 (a leading zero, a letter, over 64 characters); "
        "by default they are stored with a warning, as Orthanc and DCMTK do",
    )
    min_free_bytes: int | None = Field(
        None, ge=0, description="refuse (0xA700) a C-STORE that would leave less free on the storage file system")
    min_free_percent: float | None = Field(None, ge=0, lt=100, description="the same, in percent of its size")
    free_space_check_interval: float = Field(1.0, ge=0, description="seconds the last free-space reading is reused")
    transfer_syntaxes: list[str] = Field(
        default_factory=lambda: list(ALL_TRANSFER_SYNTAXES),
        description="accepted transfer syntaxes, most preferred first",
    )


class StorageAddIn(AddIn):
    name = "storage"
    description = "Storage SCP (C-STORE): keeps instances as received, indexed"
    Options = StorageOptions
    options: StorageOptions

    def __init__(self, options: AddInOptions, base: BaseServices) -> None:
        super().__init__(options, base)
        self._free_lock = threading.Lock()
        #: (monotonic time read, free bytes less what was stored since, total bytes)
        self._free_reading: tuple[float, int, int] | None = None

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        syntaxes = tuple(self.options.transfer_syntaxes)
        uids = ("*",) if self.options.accept_any_sop_class else STORAGE_SOP_CLASSES
        # scp_role: a C-GET requestor asks to be Storage SCP on these contexts; the Retrieve add-in
        # needs that, and agreeing costs nothing when nobody asks.
        return [SupportedContext(uid, syntaxes, scu_role=True, scp_role=True) for uid in uids]

    def handlers(self) -> Mapping[str, Handler]:
        # On the event loop's thread (no hand-off to a pool thread and back) while the association
        # is the only one, or while the store's ingest waits only on this machine (DataStore.ingest_is_brief);
        # never while an add-in's admit_instance, which may wait for the loop, is asked.
        return {"C-STORE": InlineHandler(self.on_store, when=self._inline_ok, brief=self._ingest_is_brief)}

    def _inline_ok(self, request: Request) -> bool:
        store = self.base.store
        return not self.base.admission.deciders and (store is None or not store.ingest_would_queue())

    def _ingest_is_brief(self, request: Request) -> bool:
        store = self.base.store
        received = request.received
        return store is not None and store.ingest_is_brief(received.size if received is not None and received.size else None,
                                                           self.options.duplicate_policy)

    def on_store(self, request: Request) -> Response | Coroutine[Any, Any, Response]:
        from pacskit.store import InstanceMismatch, InstanceTooLarge, InvalidInstance

        store = self.base.store
        received = request.received
        if store is None or received is None or received.path is None:
            return Response(Status.OUT_OF_RESOURCES, elements={"ErrorComment": "no data store configured"})
        refusal = self._below_watermark(received)
        if refusal is not None:
            self.base.log.warning("C-STORE %s from %s refused (0xA700): %s", request.sop_instance_uid,
                                  request.assoc.remote_ae_title, refusal)
            return Response(Status.OUT_OF_RESOURCES, elements={"ErrorComment": refusal[:64]})
        if self.base.admission.deciders:
            decided = self.base.admission.check(IncomingInstance(
                request.assoc.remote_ae_title, request.sop_class_uid, request.sop_instance_uid, received.path,
                received.transfer_syntax, received.size))
            if decided is not None:
                name, response = decided
                self.base.log.info("C-STORE %s from %s answered 0x%04X by %s, not stored", request.sop_instance_uid,
                                   request.assoc.remote_ae_title, response.status, name)
                return response
        try:
            pending = store.start_ingest(  # takes the file over, whatever the outcome
                received,
                expected_sop_instance_uid=request.sop_instance_uid,
                expected_sop_class_uid=request.sop_class_uid,
                duplicate_policy=self.options.duplicate_policy,
                strict_uids=self.options.strict_uids,
            )
        except InvalidInstance as exc:
            status = (Status.DATASET_DOES_NOT_MATCH_SOP_CLASS if isinstance(exc, InstanceMismatch)
                      else Status.OUT_OF_RESOURCES if isinstance(exc, InstanceTooLarge) else Status.CANNOT_UNDERSTAND)
            self.base.log.warning(
                "C-STORE %s from %s refused (0x%04X): %s",
                request.sop_instance_uid,
                request.assoc.remote_ae_title,
                status,
                getattr(exc, "detail", None) or exc,  # UnparseableDataset: where and what, in bytes
            )
            # Error Comment is an LO (64 characters): say the essential first; the log has the details.
            comment = "dataset UID differs from the C-STORE command" if status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS else str(exc)
            elements: dict[str, object] = {"ErrorComment": comment[:64]}
            if exc.tag is not None:
                elements["OffendingElement"] = [exc.tag]
            return Response(status, elements=elements)
        except OSError as exc:
            return self._not_stored(request, exc)
        if pending.flushing is not None and _on_event_loop():
            # A large blob's flush is on the blob store's threads: the answer waits for it, the
            # event loop (running this call inline) does not, and serves the other associations.
            return self._answer_once_flushed(request, pending)
        return self._answer(request, pending)

    def _answer(self, request: Request, pending: PendingIngest) -> Response:
        """The response to a C-STORE whose ingest is begun; waits for the blob's flush if needed."""
        from pacskit.store import IngestStatus

        try:
            result = pending.result()
        except OSError as exc:
            return self._not_stored(request, exc)
        if result.status == IngestStatus.DUPLICATE_REJECTED:
            return Response(Status.DUPLICATE_SOP_INSTANCE, elements={"ErrorComment": "duplicate SOP Instance UID refused"})
        return Response(Status.SUCCESS)

    async def _answer_once_flushed(self, request: Request, pending: PendingIngest) -> Response:
        flushing = pending.flushing
        assert flushing is not None
        try:
            await asyncio.shield(asyncio.wrap_future(flushing))  # a cancel must not cancel a queued flush
        except asyncio.CancelledError:
            # The handler's timeout, or the association gone: the ingest is settled (or undone, if
            # its flush fails) when the flush ends, on the thread that ends it; nobody is answered.
            flushing.add_done_callback(lambda _: self._settle_unanswered(request, pending))
            raise
        except OSError:
            pass  # result() raises it again
        store = self.base.store
        if store is not None and store.ingest_would_queue():  # result() commits: not behind a lock, on the loop
            return await asyncio.to_thread(self._answer, request, pending)
        return self._answer(request, pending)

    def _settle_unanswered(self, request: Request, pending: PendingIngest) -> None:
        try:
            pending.result()
        except Exception as exc:
            self.base.log.error("C-STORE %s (not answered): its ingest failed: %s", request.sop_instance_uid, exc)

    def _not_stored(self, request: Request, exc: OSError) -> Response:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self.base.log.error("C-STORE %s refused: disk full", request.sop_instance_uid)
            return Response(Status.OUT_OF_RESOURCES, elements={"ErrorComment": "out of resources: disk full"})
        raise exc

    # ------------------------------------------------------------------ free-space watermark

    def _watermark(self, total: int) -> int | None:
        opts = self.options
        wanted = [v for v in (opts.min_free_bytes,
                              int(total * opts.min_free_percent / 100) if opts.min_free_percent is not None else None)
                  if v is not None]
        return max(wanted) if wanted else None

    def _below_watermark(self, received: Any) -> str | None:
        """Why a C-STORE of the ``received`` file must be refused, or ``None`` (nothing is looked at
        while no watermark is set: this is on every C-STORE's path)."""
        opts = self.options
        if opts.min_free_bytes is None and opts.min_free_percent is None:
            return None
        incoming = received.size or _size(received.path)
        now = time.monotonic()
        with self._free_lock:
            reading = self._free_reading
            if reading is None or now - reading[0] > opts.free_space_check_interval:
                usage = shutil.disk_usage(self.base.settings.storage_path)
                reading = (now, usage.free, usage.total)
            _, free, total = reading
            # what is stored meanwhile counts against the reading until it is read again
            self._free_reading = (reading[0], free - incoming, total)
        watermark = self._watermark(total)
        assert watermark is not None
        if free - incoming >= watermark:
            return None
        self._free_reading = None  # read again next time: space may have been freed
        return f"out of resources: {max(free, 0) // 2**20} MiB free, watermark {watermark // 2**20} MiB"


def _on_event_loop() -> bool:
    """This call runs on an event loop's thread (an inline handler), not in the thread pool."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
