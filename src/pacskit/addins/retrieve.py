"""Retrieve add-in: the C-MOVE and C-GET SCP of the PACS (PS3.4 C.4.2, C.4.3), Patient Root and Study Root.

The identifier is checked and resolved to stored instances by :mod:`pacskit.store.query.retrieve` (unique
keys only; no wildcard matching), a page at a time. Each instance is then sent with one C-STORE
sub-operation:

* **C-MOVE**: on a new association to the Move Destination, which must be in the AE registry
  (``pacskit ae add``; unknown -> 0xA801). The sub-operations carry the Move Originator AE title and
  Message ID. Presentation contexts are proposed from what is stored: for every (SOP class, stored
  transfer syntax) a context with exactly that syntax, and per SOP class a fallback context with
  Explicit and Implicit VR Little Endian. A destination that refuses transiently (connection refused,
  timed out, association rejected-transient) is retried ``connect_attempts`` times with a doubling
  delay starting at ``retry_backoff`` seconds; then the C-MOVE fails with 0xA702.
* **C-GET**: on the C-GET association itself, only for SOP classes for which the requestor
  negotiated the SCP role (SCP/SCU role selection). The storage contexts are the Storage add-in's,
  which agrees to that role; with the Storage add-in disabled there are none and every sub-operation
  fails.

Each instance is sent as stored (streamed from its file in PDU-sized pieces) when the peer accepted
its transfer syntax; otherwise it is converted to an uncompressed syntax the peer accepted
(:mod:`pacskit.dicom.transcode`: between uncompressed syntaxes, or decompressed with pydicom's pixel
data handlers and pylibjpeg). Conversion decodes the instance in memory and is refused above
``max_convert_size``; that sub-operation then fails, the retrieve goes on.

Pending responses carry the remaining / completed / failed / warning counts, at most once per
``pending_interval`` seconds (counts above 65,535 cannot be encoded in US and are omitted). C-CANCEL
stops after the sub-operation in progress. ``retrieve_timeout`` bounds a whole retrieve (checked
between sub-operations; each C-STORE is bounded by the DIMSE timeout).

Final statuses (PS3.4 C.4.2.1.5, C.4.3.1.4); Failure, Warning and Cancel responses carry the Failed SOP
Instance UID List in their identifier when a sub-operation failed:

========  ==================================================================================
0x0000    every sub-operation succeeded (or nothing matched)
0xB000    some sub-operations failed or gave a warning
0xA702    every sub-operation failed, the destination could not be reached, or the retrieve
          timed out / the destination association broke before anything succeeded
0xA801    C-MOVE destination unknown (not in the AE registry)
0xA900    identifier does not match the SOP class (level, keys; see pacskit.store.query.retrieve)
0xC000    identifier cannot be parsed or carries an invalid UID
0xFE00    cancelled (C-CANCEL); counts include the remaining sub-operations
========  ==================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacskit.services import AddIn, AddInOptions, Handler, Request, Response, SupportedContext
from pacskit.dicom.part10 import WHOLE_FILE_LIMIT, Part10Info, parse_part10_header, read_part10
from pacskit.net import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    NetError,
    NetTimeout,
    NoAcceptableContext,
    RequestedContext,
)
from pacskit.dicom.status import PENDING_STATUSES, Status, status_category
from pacskit.store.query.retrieve import InvalidIdentifier, RetrieveItem, RetrieveSelection, parse_identifier
from pacskit.dicom.transcode import (
    DEFAULT_MAX_SIZE,
    NATIVE_SYNTAXES,
    CannotConvert,
    can_convert,
    encodable_syntaxes,
    transcode,
)

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

_MODEL: dict[str, Literal["PATIENT", "STUDY"]] = {
    PATIENT_ROOT_MOVE: "PATIENT",
    PATIENT_ROOT_GET: "PATIENT",
    STUDY_ROOT_MOVE: "STUDY",
    STUDY_ROOT_GET: "STUDY",
}
_FALLBACK = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128
_US_MAX = 0xFFFF
_REJECTED_TRANSIENT = 2


class RetrieveOptions(AddInOptions):
    timeout: float | None = Field(
        None, gt=0,
        description="seconds between two responses before the server gives up (default: no limit; "
        "use retrieve_timeout to bound a retrieve)",
    )
    retrieve_timeout: float = Field(3600.0, gt=0, description="seconds a whole C-MOVE/C-GET may take")
    pending_interval: float = Field(1.0, ge=0, description="least seconds between two Pending responses")
    connect_attempts: int = Field(3, ge=1, description="tries to associate with a C-MOVE destination")
    retry_backoff: float = Field(1.0, ge=0, description="seconds before the 2nd try; doubled for each next one")
    max_convert_size: int = Field(
        DEFAULT_MAX_SIZE, ge=0,
        description="largest file (bytes) converted in memory to another transfer syntax",
    )
    page_size: int = Field(500, ge=1, le=10000, description="instances read from the index per query")
    patient_level_in_study_root: bool = Field(
        True,
        description="accept QueryRetrieveLevel PATIENT on the Study Root SOP classes (not standard; "
        "Orthanc sends it for Patient-level moves)",
    )


class _DestinationUnavailable(Exception):
    pass


@dataclass(slots=True)
class _Tally:
    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.completed - self.failed - self.warning)

    def fail(self, uid: str, reason: str) -> None:
        self.failed += 1
        self.failed_uids.append(uid)
        self.reasons[reason] += 1

    def elements(self, *, remaining: bool, pending: bool = False) -> dict[str, Any]:
        """The count elements of a response. Counts are US: a Pending response of a retrieve of more
        than 65,535 instances carries none (they could not all be right); a final one omits those
        that do not fit."""
        if pending and self.total > _US_MAX:
            return {}

        def us(n: int) -> int | None:
            return n if n <= _US_MAX else None

        out: dict[str, Any] = {
            "NumberOfCompletedSuboperations": us(self.completed),
            "NumberOfFailedSuboperations": us(self.failed),
            "NumberOfWarningSuboperations": us(self.warning),
        }
        if remaining:
            out["NumberOfRemainingSuboperations"] = us(self.remaining)
        return out


def propose_contexts(stored: Sequence[tuple[str, str]]) -> list[RequestedContext]:
    """Contexts for a C-MOVE sub-association: (SOP class, stored syntax) exactly, then per SOP class a
    fallback with the uncompressed Little Endian syntaxes; at most 128 (the most specific first). When
    room is left, per SOP class one more with the lossless compressed syntaxes pacskit can encode into
    (:func:`~pacskit.dicom.transcode.encodable_syntaxes`: RLE, JPEG 2000, JPEG-LS Lossless), for a
    peer that takes only those."""
    contexts: list[RequestedContext] = []
    seen: set[tuple[str, str]] = set()
    for sop_class, ts in sorted(stored):
        if ts and (sop_class, ts) not in seen:
            seen.add((sop_class, ts))
            contexts.append(RequestedContext(sop_class, (ts,)))
    for sop_class in sorted({c for c, _ in stored}):
        contexts.append(RequestedContext(sop_class, _FALLBACK))
    if len(contexts) > _MAX_CONTEXTS:
        exact = contexts[: len(seen)]
        fallback = contexts[len(seen):]
        keep_exact = max(0, _MAX_CONTEXTS - len(fallback))
        contexts = (exact[:keep_exact] + fallback)[:_MAX_CONTEXTS]
    encodable = encodable_syntaxes()
    classes = sorted({c for c, _ in stored})
    if encodable and len(contexts) + len(classes) <= _MAX_CONTEXTS:
        contexts.extend(RequestedContext(sop_class, encodable) for sop_class in classes)
    return contexts


class RetrieveAddIn(AddIn):
    name = "retrieve"
    description = "Query/Retrieve C-MOVE and C-GET SCP (Patient Root, Study Root)"
    Options = RetrieveOptions
    options: RetrieveOptions

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(uid) for uid in _MODEL]

    def handlers(self) -> Mapping[str, Handler]:
        return {"C-MOVE": self.on_move, "C-GET": self.on_get}

    # ------------------------------------------------------------------ handlers

    async def on_move(self, request: Request) -> AsyncIterator[Response]:
        started = time.monotonic()
        destination = str(request.command.get("MoveDestination") or "").strip()
        peer = request.assoc.remote_ae_title
        if not destination or self.base.ae_titles.get(destination) is None:
            self.base.log.warning("C-MOVE from %s refused: destination %r is not registered", peer, destination)
            yield Response(Status.MOVE_DESTINATION_UNKNOWN, elements={"ErrorComment": f"move destination {destination[:16]!r} unknown"})
            return
        selection = await self._select(request)
        if isinstance(selection, Response):  # refused, or nothing to send
            yield selection
            return
        originator = (peer, request.message_id)
        deadline = started + self.options.retrieve_timeout
        try:
            sub = await self._connect(destination, propose_contexts(selection.sop_classes), deadline, request)
        except _DestinationUnavailable as exc:
            self.base.log.error("C-MOVE from %s: destination %s unavailable: %s", peer, destination, exc)
            tally = _Tally(selection.count)
            async for item in self._items(selection):
                tally.fail(item.sop_instance_uid, "destination unavailable")
            yield self._final(tally, cancelled=False, comment=f"cannot associate with {destination}")
            return
        try:
            async for response in self._run(request, selection, sub, originator, deadline):
                if response.status not in PENDING_STATUSES:
                    # Like other archives, end the sub-association before the final response, so a
                    # requestor that is its own destination has everything when it sees the status.
                    await self._close(sub)
                    self.base.log.info(
                        "C-MOVE from %s to %s: 0x%04X in %.1f s", peer, destination, response.status,
                        time.monotonic() - started,
                    )
                yield response
        finally:
            await self._close(sub)

    @staticmethod
    async def _close(sub: Any) -> None:
        with contextlib.suppress(NetError, OSError):
            if sub.is_established and not (sub.is_released or sub.is_aborted):
                await sub.release()
            elif not (sub.is_released or sub.is_aborted):
                sub.abort()

    async def on_get(self, request: Request) -> AsyncIterator[Response]:
        started = time.monotonic()
        selection = await self._select(request)
        if isinstance(selection, Response):  # refused, or nothing to send
            yield selection
            return
        deadline = started + self.options.retrieve_timeout
        async for response in self._run(request, selection, request.assoc, None, deadline):
            if response.status not in PENDING_STATUSES:
                self.base.log.info("C-GET from %s: 0x%04X in %.1f s", request.assoc.remote_ae_title, response.status,
                                   time.monotonic() - started)
            yield response

    # ------------------------------------------------------------------ steps

    async def _select(self, request: Request) -> RetrieveSelection | Response:
        """The instances to send, or the final response when there is nothing to send."""
        store = self.base.store
        if store is None:
            return Response(Status.OUT_OF_RESOURCES_SUBOPS, elements={"ErrorComment": "no data store configured"})
        try:
            identifier = request.dataset
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for bad bytes
            self.base.log.warning("%s from %s: unreadable identifier: %s", request.service, request.assoc.remote_ae_title, exc)
            return Response(Status.UNABLE_TO_PROCESS, elements={"ErrorComment": "identifier cannot be decoded"})
        if identifier is None:
            return Response(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, elements={"ErrorComment": "no identifier"})
        try:
            keys = parse_identifier(identifier, _MODEL[request.context.abstract_syntax],
                                    patient_level_in_study_root=self.options.patient_level_in_study_root)
        except InvalidIdentifier as exc:
            self.base.log.warning("%s from %s refused (0x%04X): %s", request.service, request.assoc.remote_ae_title, exc.status, exc)
            elements: dict[str, Any] = {"ErrorComment": str(exc)[:64]}
            if exc.tag is not None:
                elements["OffendingElement"] = [exc.tag]
            return Response(exc.status, elements=elements)
        except Exception as exc:  # noqa: BLE001 - a value pydicom cannot decode
            self.base.log.warning("%s from %s: bad identifier: %s", request.service, request.assoc.remote_ae_title, exc)
            return Response(Status.UNABLE_TO_PROCESS, elements={"ErrorComment": "identifier cannot be decoded"})
        selection = await asyncio.to_thread(RetrieveSelection, store.index, keys, page_size=self.options.page_size)
        self.base.log.info(
            "%s from %s: %s level, %d instances", request.service, request.assoc.remote_ae_title, keys.level, selection.count
        )
        if selection.count == 0:  # nothing matched: a final Success with zero counts
            return Response(Status.SUCCESS, elements=_Tally(0).elements(remaining=False))
        return selection

    async def _connect(self, destination: str, contexts: list[RequestedContext], deadline: float, request: Request) -> Any:
        delay = self.options.retry_backoff
        attempts = self.options.connect_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await self.base.dicom_request.associate(destination, contexts)
            except AssociationRejected as exc:
                if exc.result != _REJECTED_TRANSIENT:
                    raise _DestinationUnavailable(str(exc)) from exc
                error: Exception = exc
            except (ConnectionFailed, NetTimeout, AssociationAborted) as exc:
                error = exc
            if attempt == attempts or time.monotonic() + delay > deadline or request.cancelled.is_set():
                raise _DestinationUnavailable(f"{error} (after {attempt} attempts)")
            self.base.log.info("C-MOVE destination %s: %s; retrying in %.2f s", destination, error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.cancelled.wait(), delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _items(self, selection: RetrieveSelection, after: int = 0) -> AsyncIterator[RetrieveItem]:
        """The selection, a page at a time from a worker thread, the next page read while this one is sent."""
        page = await asyncio.to_thread(selection.page, after)
        while page:
            following = asyncio.ensure_future(asyncio.to_thread(selection.page, page[-1].pk))
            try:
                for item in page:
                    yield item
            except BaseException:
                following.cancel()  # the read finishes in its thread; its result is dropped
                raise
            page = await following

    async def _run(
        self,
        request: Request,
        selection: RetrieveSelection,
        assoc: Any,
        originator: tuple[str, int] | None,
        deadline: float,
    ) -> AsyncIterator[Response]:
        tally = _Tally(selection.count)
        interval = self.options.pending_interval
        last_pending = time.monotonic()
        broken: str | None = None
        cancelled = False
        plans: dict[tuple[str, str], str | None] = {}
        loop = asyncio.get_running_loop()
        ready: dict[int, tuple[Part10Info, bytes]] = {}
        items = self._items(selection)
        ahead = _lookahead(items)
        async for item, following in ahead:
            if following is not None and broken is None:
                # runs when the loop is idle, i.e. while this item's C-STORE waits for its answer
                loop.call_soon(self._preread, following, ready)
            if broken is not None:
                tally.fail(item.sop_instance_uid, broken)
                continue
            if request.cancelled.is_set():
                cancelled = True
                break
            if time.monotonic() > deadline:
                broken = f"retrieve timed out after {self.options.retrieve_timeout:g} s"
                self.base.log.error("%s from %s: %s", request.service, request.assoc.remote_ae_title, broken)
                tally.fail(item.sop_instance_uid, broken)
                continue
            try:
                status = await self._send(assoc, item, originator, plans, ready.pop(item.pk, None))
            except (AssociationAborted, NetTimeout) as exc:
                broken = f"association to {assoc.remote_ae_title} lost"
                self.base.log.error("%s from %s: %s: %s", request.service, request.assoc.remote_ae_title, broken, exc)
                tally.fail(item.sop_instance_uid, broken)
                if assoc is request.assoc:
                    await ahead.aclose()
                    await items.aclose()
                    return  # the C-GET association itself is gone: nobody to answer
                assoc.abort()
                continue
            except _SubFailure as exc:
                self.base.log.warning("%s sub-operation %s not sent: %s", request.service, item.sop_instance_uid, exc)
                tally.fail(item.sop_instance_uid, exc.reason)
                continue
            category = status_category(status)
            if category == "Success":
                tally.completed += 1
            elif category == "Warning":
                tally.warning += 1
            else:
                tally.fail(item.sop_instance_uid, f"C-STORE status 0x{status:04X}")
            now = time.monotonic()
            if tally.remaining and now - last_pending >= interval:
                last_pending = now
                yield Response(Status.PENDING, elements=tally.elements(remaining=True, pending=True))
        await ahead.aclose()
        await items.aclose()
        if not cancelled:
            # Rows deleted while we sent are neither sent nor failed: the counts describe what was done.
            tally.total = tally.completed + tally.failed + tally.warning
        yield self._final(tally, cancelled=cancelled)

    def _final(self, tally: _Tally, *, cancelled: bool, comment: str | None = None) -> Response:
        if cancelled:
            status = Status.CANCEL
        elif tally.failed == 0 and tally.warning == 0:
            status = Status.SUCCESS
        elif tally.completed == 0 and tally.warning == 0:
            status = Status.OUT_OF_RESOURCES_SUBOPS
        else:
            status = Status.SUBOPS_COMPLETE_WITH_FAILURES
        elements = tally.elements(remaining=cancelled)
        if tally.failed:
            reason, count = tally.reasons.most_common(1)[0]
            elements["ErrorComment"] = (comment or f"{tally.failed} failed, e.g. {count}: {reason}")[:64]
        dataset = None
        if tally.failed_uids and status != Status.SUCCESS:
            dataset = Dataset()
            dataset.FailedSOPInstanceUIDList = tally.failed_uids
        return Response(status, dataset=dataset, elements=elements)

    # ------------------------------------------------------------------ one sub-operation

    def _preread(self, item: RetrieveItem, ready: dict[int, tuple[Part10Info, bytes]]) -> None:
        """Read a small stored file ahead (a loop callback: it runs while a C-STORE waits for its
        answer); anything unusual is left for the send itself to meet and report."""
        store = self.base.store
        if store is None or item.size > WHOLE_FILE_LIMIT:
            return
        try:
            path = store.blobs.path(item.blob_key)
            if path is None:
                return
            info, data = read_part10(path, whole_below=WHOLE_FILE_LIMIT)
        except Exception:  # noqa: BLE001 - the send reads it again and reports what is wrong
            return
        if data is not None and info.sop_instance_uid == item.sop_instance_uid:
            ready[item.pk] = (info, data)

    async def _send(self, assoc: Any, item: RetrieveItem, originator: tuple[str, int] | None,
                    plans: dict[tuple[str, str], str | None],
                    preread: tuple[Part10Info, bytes] | None = None) -> int:
        """One C-STORE sub-operation; returns the peer's status. Raises :class:`_SubFailure` when the
        instance cannot be sent (no suitable context, cannot convert, file missing).

        ``plans`` caches, per (SOP class, stored syntax), the syntax to send in: the stored one, an
        uncompressed one to convert to, or None (nothing the peer accepted will do)."""
        key = (item.sop_class_uid, item.transfer_syntax_uid)
        if key not in plans:
            plans[key] = self._plan(assoc, *key)
        target = plans[key]
        if target is None:
            raise _SubFailure(
                f"{assoc.remote_ae_title} accepted no usable context for {item.sop_class_uid} "
                f"in {item.transfer_syntax_uid} (nor an uncompressed syntax)",
                "no acceptable presentation context",
            )
        if preread is None and target == item.transfer_syntax_uid and item.size <= WHOLE_FILE_LIMIT:
            store = self.base.store
            if store is not None and store.blobs.path(item.blob_key) is None:
                # a store without paths (S3): a small instance read whole, in a thread (one GET),
                # and sent from memory, instead of a temp file written and read back
                whole = await asyncio.to_thread(self._read_whole, item)
                return await self._store(assoc, f"blob {item.blob_key}", originator, whole)
        async with self._local_file(item) as path:
            if target == item.transfer_syntax_uid:
                return await self._store(assoc, path, originator, preread)
            fd, converted = tempfile.mkstemp(prefix="tx-", suffix=".dcm", dir=self._temp_dir())
            os.close(fd)
            try:
                try:
                    await asyncio.to_thread(transcode, path, converted, target, max_size=self.options.max_convert_size)
                except CannotConvert as exc:
                    raise _SubFailure(str(exc), "cannot convert transfer syntax") from exc
                return await self._store(assoc, converted, originator)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(converted)

    @staticmethod
    def _plan(assoc: Any, sop_class: str, stored: str) -> str | None:
        accepted = {pc.transfer_syntax for pc in assoc.accepted_contexts if pc.abstract_syntax == sop_class and pc.as_scu}
        if stored in accepted:
            return stored
        native = next((ts for ts in NATIVE_SYNTAXES if ts in accepted and can_convert(stored, ts)), None)
        if native is not None:
            return native
        # a peer that takes only a lossless compressed syntax: encoded on the fly (never a lossy one)
        return next((ts for ts in encodable_syntaxes() if ts in accepted and can_convert(stored, ts)), None)

    @staticmethod
    async def _store(assoc: Any, path: str, originator: tuple[str, int] | None,
                     preread: tuple[Part10Info, bytes] | None = None) -> int:
        try:
            rsp = await assoc.store(path, move_originator=originator, preread=preread)
        except NoAcceptableContext as exc:
            raise _SubFailure(str(exc), "no acceptable presentation context") from exc
        except FileNotFoundError as exc:
            raise _SubFailure(f"stored file {path} is missing", "stored file missing") from exc
        except ValueError as exc:  # read_part10_header: not a Part 10 file
            raise _SubFailure(str(exc), "stored file unreadable") from exc
        return int(rsp.status)

    def _temp_dir(self) -> str:
        store = self.base.store
        return str(getattr(store, "temp_dir", None) or tempfile.gettempdir())

    def _read_whole(self, item: RetrieveItem) -> tuple[Part10Info, bytes]:
        """A small stored instance of a blob store without paths, read whole: its File Meta and its
        dataset bytes, as :func:`read_part10` gives them for a file. Raises :class:`_SubFailure`."""
        from pacskit.store import BlobNotFound, InvalidBlobKey

        store = self.base.store
        assert store is not None
        try:
            with store.blobs.open(item.blob_key) as src:
                data = src.read()
        except (BlobNotFound, InvalidBlobKey) as exc:
            raise _SubFailure(f"stored file of {item.sop_instance_uid}: {exc}", "stored file missing") from exc
        try:
            info = parse_part10_header(data, f"blob {item.blob_key}")
        except ValueError as exc:
            raise _SubFailure(str(exc), "stored file unreadable") from exc
        return info, data[info.dataset_offset:]

    @contextlib.asynccontextmanager
    async def _local_file(self, item: RetrieveItem) -> AsyncIterator[str]:
        """The stored file's path; blob stores without paths are copied to a temp file (streamed, in a
        thread: the object store's GETs must not hold up the event loop)."""
        from pacskit.store import BlobNotFound, InvalidBlobKey

        store = self.base.store
        assert store is not None
        try:
            path = store.blobs.path(item.blob_key)
            if path is not None:
                yield path  # a missing file shows when it is opened (FileNotFoundError in _store)
                return
            fd, tmp = tempfile.mkstemp(prefix="rt-", suffix=".dcm", dir=self._temp_dir())
            try:
                def copy() -> None:
                    with os.fdopen(fd, "wb") as out, store.blobs.open(item.blob_key) as src:
                        shutil.copyfileobj(src, out, 1 << 20)

                await asyncio.to_thread(copy)
                yield tmp
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except (BlobNotFound, InvalidBlobKey) as exc:
            raise _SubFailure(f"stored file of {item.sop_instance_uid}: {exc}", "stored file missing") from exc


async def _lookahead(items: AsyncIterator[RetrieveItem]) -> AsyncIterator[tuple[RetrieveItem, RetrieveItem | None]]:
    """Each item with the one after it (``None`` for the last)."""
    current = await anext(items, None)
    while current is not None:
        following = await anext(items, None)
        yield current, following
        current = following


class _SubFailure(Exception):
    """A sub-operation that could not be attempted; ``reason`` is the short form for the Error Comment."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
