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
listed (looked up in the AE registry) through ``base.dicom_request``, from a queue per destination, with
``forward_attempts`` tries ``forward_retry_delay`` seconds apart; the modality's answer never waits for
it. The queue is in memory: messages not yet forwarded when the server stops are logged as lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacskit.services import AddIn, AddInOptions, Handler, Permission, Request, Response, SupportedContext
from pacskit.net import CommandField, RequestedContext
from pacskit.store.workflow.mpps import MPPS_SOP_CLASS, MppsRefused, MppsStore
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


class MppsAddIn(AddIn):
    name = "mpps"
    description = "Modality Performed Procedure Step SCP (N-CREATE, N-SET), linked to the worklist"
    Options = MppsOptions
    permissions = (Permission("mpps", MPPS_SOP_CLASS),)
    options: MppsOptions

    def __init__(self, options: AddInOptions, base: Any) -> None:
        super().__init__(options, base)
        self.mpps: MppsStore | None = None
        self._queues: dict[str, asyncio.Queue[tuple[str, str, Dataset]]] = {}
        self._forwarders: list[asyncio.Task[None]] = []
        #: (destination, service, SOP instance UID, status or None if not sent) of the last 1000 forwarded messages
        self.forwarded: collections.deque[tuple[str, str, str, int | None]] = collections.deque(maxlen=1000)

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(MPPS_SOP_CLASS)]

    def handlers(self) -> Mapping[str, Handler]:
        return {"N-CREATE": self.on_create, "N-SET": self.on_set}

    async def start(self) -> None:
        if self.base.store is not None:
            self.mpps = MppsStore(self.base.store.index, require_type1=self.options.require_type1)
        for title in self.options.forward_to:
            queue: asyncio.Queue[tuple[str, str, Dataset]] = asyncio.Queue()
            self._queues[title] = queue
            self._forwarders.append(asyncio.create_task(self._forward_loop(title, queue), name=f"mpps-forward-{title}"))

    async def stop(self) -> None:
        if self._queues:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues.values())), _STOP_DRAIN_SECONDS)
        for task in self._forwarders:
            task.cancel()
        for task in self._forwarders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for title, queue in self._queues.items():
            if not queue.empty():
                self.base.log.error("MPPS forwarding to %s: %d messages not sent (server stopping)", title, queue.qsize())

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
                uid, ds, calling_ae=request.assoc.remote_ae_title))
        except MppsRefused as exc:
            return self._refused(request, exc)
        self.base.log.info("MPPS %s IN PROGRESS from %s (worklist steps %s)", uid, request.assoc.remote_ae_title,
                           step.worklist_ids or "none")
        self._enqueue("N-CREATE", uid, ds)
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
            step = await loop.run_in_executor(request.assoc.executor, self.mpps.update, uid, ds)
        except MppsRefused as exc:
            return self._refused(request, exc)
        self.base.log.info("MPPS %s %s from %s", uid, step.status, request.assoc.remote_ae_title)
        self._enqueue("N-SET", uid, ds)
        return Response(Status.SUCCESS)

    # ------------------------------------------------------------------ forwarding

    def _enqueue(self, service: str, uid: str, ds: Dataset) -> None:
        for queue in self._queues.values():
            queue.put_nowait((service, uid, ds))

    async def _forward_loop(self, title: str, queue: asyncio.Queue[tuple[str, str, Dataset]]) -> None:
        while True:
            service, uid, ds = await queue.get()
            try:
                status = await self._forward_one(title, service, uid, ds)
                self.forwarded.append((title, service, uid, status))
            finally:
                queue.task_done()

    async def _forward_one(self, title: str, service: str, uid: str, ds: Dataset) -> int | None:
        """Send one message; None when every attempt failed to reach the peer (logged)."""
        for attempt in range(1, self.options.forward_attempts + 1):
            try:
                async with await self.base.dicom_request.associate(title, [RequestedContext(MPPS_SOP_CLASS)]) as assoc:
                    if service == "N-CREATE":
                        rsp, _ = await assoc.n_request(CommandField.N_CREATE_RQ, MPPS_SOP_CLASS, ds,
                                                       AffectedSOPInstanceUID=uid)
                    else:
                        rsp, _ = await assoc.n_request(CommandField.N_SET_RQ, MPPS_SOP_CLASS, ds,
                                                       RequestedSOPInstanceUID=uid)
                status = rsp.status
                if status != Status.SUCCESS:
                    self.base.log.warning("MPPS %s %s forwarded to %s: status 0x%04X", service, uid, title, status)
                return status
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.base.log.warning("MPPS %s %s to %s failed (attempt %d/%d): %s", service, uid, title, attempt,
                                      self.options.forward_attempts, exc)
                if attempt < self.options.forward_attempts:
                    await asyncio.sleep(self.options.forward_retry_delay)
        self.base.log.error("MPPS %s %s not forwarded to %s after %d attempts", service, uid, title,
                            self.options.forward_attempts)
        return None

    # ------------------------------------------------------------------ management

    def admin_router(self) -> Any | None:
        """``/performed`` (GET: the MPPS instances, ``?status=`` to filter) and ``/performed/{uid}``."""
        if self.mpps is None:
            return None
        return mpps_router(self.mpps)


def mpps_router(mpps: MppsStore) -> Any:
    """The read-only MPPS endpoints over ``mpps`` (a FastAPI ``APIRouter``)."""
    from fastapi import APIRouter, HTTPException, Query

    router = APIRouter(tags=["mpps"])

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
