"""MPPS add-in: the Modality Performed Procedure Step SOP class SCP (PS3.4 F.7), N-CREATE and N-SET.

A modality N-CREATEs the step when it starts (IN PROGRESS) and N-SETs it when done (COMPLETED or
DISCONTINUED); the steps are kept in the server's database (:mod:`pacskit.store.workflow.mpps`) and linked to
the worklist entries their Scheduled Step Attributes Sequence names, whose Scheduled Procedure Step
Status follows (STARTED, COMPLETED, DISCONTINUED) in the same transaction.

Statuses (PS3.4 F.7.2.1.2, F.7.2.2.2; PS3.7 C):

========  ==================================================================================
0x0000    stored
0x0106    invalid attribute value: an N-CREATE status other than IN PROGRESS, an unknown state, an
          N-SET of an attribute N-SET may not change (Attribute Identifier List names it)
0x0110    processing failure; with Error ID 0xA710 and Error Comment "Performed Procedure Step Object
          may no longer be updated" when the step is already COMPLETED or DISCONTINUED
0x0111    duplicate SOP instance (N-CREATE of a UID already stored)
0x0112    no such SOP instance (N-SET)
0x0117    invalid SOP instance UID
0x0120    missing attribute (a Type 1 attribute of N-CREATE, or a final-state attribute: End Date,
          End Time, Performed Series Sequence)
0x0121    missing attribute value (same attributes, present but empty)
========  ==================================================================================

Forwarding (``forward_to``): each accepted N-CREATE and N-SET is sent on, in order, to every AE title
listed (looked up in the AE registry) through ``base.dicom_request``, with ``forward_attempts`` tries
``forward_retry_delay`` seconds apart; the modality's answer never waits for it. The queue is durable:
each message is written (``mpps_forwards``, :class:`~pacskit.store.workflow.mpps.MppsForwardQueue`) in
the transaction that stores the step, so a stop or a crash only delays it (sent after the next start;
a message the destination took just before a crash may be sent twice). A destination's messages go
out one at a time in the order accepted, by one process of the archive (an archive-wide exclusive
lock per destination: workers and cluster nodes never interleave); the others look for work every
``poll_interval`` seconds and take over if that process ends. A message every attempt failed for is
kept as ``failed`` (``GET /addins/mpps/forwards?state=failed``) and logged; the next one follows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacskit.services import AddIn, AddInOptions, Handler, Permission, Request, Response, SupportedContext
from pacskit.net import CommandField, RequestedContext
from pacskit.store.workflow.mpps import MPPS_SOP_CLASS, MppsForwardQueue, MppsRefused, MppsStore, QueuedForward
from pacskit.dicom.status import Status

_STOP_DRAIN_SECONDS = 5.0


class MppsOptions(AddInOptions):
    require_type1: bool = Field(
        True, description="refuse an N-CREATE without the Type 1 attributes of PS3.4 Table F.7.2-1 (0x0120/0x0121)"
    )
    forward_to: list[str] = Field(
        default_factory=list, description="AE titles (from the AE registry) every accepted N-CREATE / N-SET is sent on to"
    )
    forward_attempts: int = Field(3, ge=1, le=100, description="tries per forwarded message")
    forward_retry_delay: float = Field(5.0, ge=0, description="seconds between tries")
    poll_interval: float = Field(2.0, gt=0, description="seconds between looks at the queue for messages "
                                 "other processes of the archive (workers, cluster nodes) accepted")


class MppsAddIn(AddIn):
    name = "mpps"
    description = "Modality Performed Procedure Step SCP (N-CREATE, N-SET), linked to the worklist"
    Options = MppsOptions
    permissions = (Permission("mpps", MPPS_SOP_CLASS),)
    options: MppsOptions

    def __init__(self, options: AddInOptions, base: Any) -> None:
        super().__init__(options, base)
        self.mpps: MppsStore | None = None
        self.queue: MppsForwardQueue | None = None
        self._wake: dict[str, asyncio.Event] = {}  # per destination: a message was queued by this process
        self._sending = 0  # messages this process is sending now; _sent_all is set when none
        self._sent_all = asyncio.Event()
        self._forwarders: list[asyncio.Task[None]] = []
        #: (destination, service, SOP instance UID, status or None if not sent) of the last 1000 forwarded messages
        self.forwarded: collections.deque[tuple[str, str, str, int | None]] = collections.deque(maxlen=1000)

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(MPPS_SOP_CLASS)]

    def handlers(self) -> Mapping[str, Handler]:
        return {"N-CREATE": self.on_create, "N-SET": self.on_set}

    async def start(self) -> None:
        if self.base.store is None:
            if self.options.forward_to:
                self.base.log.error("MPPS forwarding needs a data store (its queue is in the index): not forwarding")
            return
        self.mpps = MppsStore(self.base.store.index, require_type1=self.options.require_type1)
        self.queue = MppsForwardQueue(self.base.store.index)
        for title in self.options.forward_to:
            self._wake[title] = asyncio.Event()
            self._forwarders.append(asyncio.create_task(self._forward_loop(title), name=f"mpps-forward-{title}"))
        stale = {d: n for (d, state), n in (await asyncio.to_thread(self.queue.counts)).items()
                 if state == "queued" and d not in self.options.forward_to}
        for title, count in stale.items():
            self.base.log.warning("MPPS forwarding: %d messages queued for %s, no longer in forward_to: kept, not sent",
                                  count, title)

    async def stop(self) -> None:
        """Stop sending: what is still queued stays in the database and goes out after the next start."""
        if self._sending:
            with contextlib.suppress(TimeoutError):  # let the messages being sent finish, briefly
                await asyncio.wait_for(self._sent_all.wait(), _STOP_DRAIN_SECONDS)
        for task in self._forwarders:
            task.cancel()
        for task in self._forwarders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.queue is not None and self._forwarders:
            left = {d: n for (d, state), n in (await asyncio.to_thread(self.queue.counts)).items() if state == "queued"}
            for title, count in left.items():
                self.base.log.info("MPPS forwarding to %s: %d messages queued, sent after the next start", title, count)


    # ------------------------------------------------------------------ N-CREATE / N-SET

    def _refused(self, request: Request, exc: MppsRefused) -> Response:
        self.base.log.warning("%s %s from %s refused (0x%04X): %s", request.service, request.sop_instance_uid,
                              request.assoc.remote_ae_title, exc.status, exc.comment)
        elements: dict[str, Any] = {"ErrorComment": exc.comment[:64]}
        if exc.tag is not None:
            elements["AttributeIdentifierList"] = [exc.tag]
        if exc.error_id is not None:
            elements["ErrorID"] = exc.error_id
        return Response(exc.status, elements=elements)

    async def on_create(self, request: Request) -> Response:
        if self.mpps is None:
            return Response(Status.PROCESSING_FAILURE, elements={"ErrorComment": "no data store configured"})
        uid = request.sop_instance_uid or generate_uid()
        loop = asyncio.get_running_loop()
        try:
            ds = await loop.run_in_executor(request.assoc.executor, lambda: request.dataset)
            if ds is None:
                raise MppsRefused(Status.MISSING_ATTRIBUTE, "N-CREATE without an attribute list")
            step = await loop.run_in_executor(request.assoc.executor, lambda: self.mpps.create(  # type: ignore[union-attr]
                uid, ds, calling_ae=request.assoc.remote_ae_title, forward_to=self._forward_to()))
        except MppsRefused as exc:
            return self._refused(request, exc)
        self.base.log.info("MPPS %s IN PROGRESS from %s (worklist steps %s)", uid, request.assoc.remote_ae_title,
                           step.worklist_ids or "none")
        self._queued()
        return Response(Status.SUCCESS, elements={"AffectedSOPInstanceUID": uid})

    async def on_set(self, request: Request) -> Response:
        if self.mpps is None:
            return Response(Status.PROCESSING_FAILURE, elements={"ErrorComment": "no data store configured"})
        uid = request.sop_instance_uid
        loop = asyncio.get_running_loop()
        try:
            ds = await loop.run_in_executor(request.assoc.executor, lambda: request.dataset)
            if ds is None:
                raise MppsRefused(Status.MISSING_ATTRIBUTE, "N-SET without a modification list")
            step = await loop.run_in_executor(request.assoc.executor, lambda: self.mpps.update(  # type: ignore[union-attr]
                uid, ds, forward_to=self._forward_to()))
        except MppsRefused as exc:
            return self._refused(request, exc)
        self.base.log.info("MPPS %s %s from %s", uid, step.status, request.assoc.remote_ae_title)
        self._queued()
        return Response(Status.SUCCESS)

    # ------------------------------------------------------------------ forwarding

    def _forward_to(self) -> list[str]:
        return list(self._wake) if self.queue is not None else []

    def _queued(self) -> None:
        for event in self._wake.values():
            event.set()

    async def _forward_loop(self, title: str) -> None:
        """Send ``title``'s queued messages while this process holds its archive-wide lock; look again
        when this process queues one, or every ``poll_interval`` seconds (another process's)."""
        assert self.queue is not None
        wake = self._wake[title]
        name = "mpps-forward-" + hashlib.sha256(title.encode()).hexdigest()[:16]  # lock names are plain words
        while True:
            wake.clear()
            hold = contextlib.ExitStack()
            try:
                if await asyncio.to_thread(hold.enter_context, self.base.exclusive(name)):
                    while (message := await asyncio.to_thread(self.queue.next, title)) is not None:
                        self._sending += 1
                        self._sent_all.clear()
                        try:
                            await self._forward_one(message)
                        finally:
                            self._sending -= 1
                            if not self._sending:
                                self._sent_all.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database unreachable, say: try again at the next look
                self.base.log.exception("MPPS forwarding to %s failed; trying again in %.0f s", title,
                                        self.options.poll_interval)
            finally:
                await asyncio.shield(asyncio.to_thread(hold.close))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.options.poll_interval)

    async def _forward_one(self, message: QueuedForward) -> None:
        """Send one queued message, with what is left of its attempts; it leaves the queue once the
        destination answered (whatever the status), or stays ``failed`` after the last attempt."""
        assert self.queue is not None
        title, service, uid = message.destination, message.service, message.sop_instance_uid
        ds = Dataset.from_json(message.dataset)
        status = None
        if message.attempts >= self.options.forward_attempts:  # a row left queued under a larger setting
            await asyncio.to_thread(self.queue.attempted, message.pk, "no attempts left", give_up=True)
        for attempt in range(message.attempts + 1, self.options.forward_attempts + 1):
            status, error = await self._send(title, service, uid, ds, attempt)
            if status is not None:
                await asyncio.to_thread(self.queue.delivered, message.pk)
                break
            last = attempt >= self.options.forward_attempts
            await asyncio.to_thread(self.queue.attempted, message.pk, error, give_up=last)
            if not last:
                await asyncio.sleep(self.options.forward_retry_delay)
        if status is None:
            self.base.log.error("MPPS %s %s not forwarded to %s after %d attempts (kept as failed)", service, uid,
                                title, self.options.forward_attempts)
        self.forwarded.append((title, service, uid, status))

    async def _send(self, title: str, service: str, uid: str, ds: Dataset, attempt: int) -> tuple[int | None, str]:
        """One attempt: (the destination's status, ""), or (None, why) when it could not be reached (logged)."""
        try:
            async with await self.base.dicom_request.associate(title, [RequestedContext(MPPS_SOP_CLASS)]) as assoc:
                if service == "N-CREATE":
                    rsp, _ = await assoc.n_request(CommandField.N_CREATE_RQ, MPPS_SOP_CLASS, ds, AffectedSOPInstanceUID=uid)
                else:
                    rsp, _ = await assoc.n_request(CommandField.N_SET_RQ, MPPS_SOP_CLASS, ds, RequestedSOPInstanceUID=uid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.base.log.warning("MPPS %s %s to %s failed (attempt %d/%d): %s", service, uid, title, attempt,
                                  self.options.forward_attempts, exc)
            return None, f"{type(exc).__name__}: {exc}"
        if rsp.status != Status.SUCCESS:
            self.base.log.warning("MPPS %s %s forwarded to %s: status 0x%04X", service, uid, title, rsp.status)
        return int(rsp.status), ""

    # ------------------------------------------------------------------ management

    def admin_router(self) -> Any | None:
        """``/performed`` (GET: the MPPS instances, ``?status=`` to filter) and ``/performed/{uid}``."""
        if self.mpps is None:
            return None
        return mpps_router(self.mpps, self.queue)


def mpps_router(mpps: MppsStore, queue: MppsForwardQueue | None = None) -> Any:
    """The read-only MPPS endpoints over ``mpps`` (a FastAPI ``APIRouter``), and with ``queue``
    ``GET /forwards?state=queued|failed``: the forwarding queue, oldest first."""
    from fastapi import APIRouter, HTTPException, Query

    router = APIRouter(tags=["mpps"])

    if queue is not None:
        @router.get("/forwards")
        def list_forwards(state: str = Query("queued", pattern="^(queued|failed)$"),
                          limit: int = Query(100, ge=1, le=10000)) -> list[dict[str, Any]]:
            return [m.to_json() for m in queue.listing(state, limit)]

    @router.get("/performed")
    def list_performed(status: str | None = None, limit: int = Query(100, ge=1, le=10000),
                       offset: int = Query(0, ge=0)) -> list[dict[str, Any]]:
        return [p.to_json() for p in mpps.steps(status=status, limit=limit, offset=offset)]

    @router.get("/performed/{sop_instance_uid}")
    def get_performed(sop_instance_uid: str) -> dict[str, Any]:
        step = mpps.get(sop_instance_uid)
        if step is None:
            raise HTTPException(status_code=404, detail="no such MPPS instance")
        return step.to_json()

    return router
