"""Fetching from a remote AE into the data store: what the Q/R gateway and the prefetch add-ins share.

* :func:`store_handler`: the C-STORE handler for the sub-operations of a C-GET: each instance goes
  through :meth:`pacskit.store.DataStore.ingest` (durable and indexed before Success is answered, so
  a crash leaves complete instances or none; an instance already held is kept as it is).
* :func:`find_remote`: a C-FIND on a remote AE, its answers as datasets.
* :func:`fetch`: a C-GET of an identifier (or a C-MOVE to this server's own AE title, which the remote
  must know: the instances then arrive through the Storage add-in) into the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset

from pacskit.dicom.status import PENDING_STATUSES, Status
from pacskit.net import CommandField, RequestedContext, Services
from pacskit.services import BaseServices, Request

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
_FAILED_SOP_INSTANCE_UID_LIST = 0x00080058


class RemoteFailed(Exception):
    """The remote answered a failure status (``status``, with its ``comment``)."""

    def __init__(self, title: str, status: int, comment: str = "") -> None:
        super().__init__(f"{title} answered 0x{status:04X}" + (f": {comment}" if comment else ""))
        self.status = status
        self.comment = comment


@dataclass(slots=True)
class FetchResult:
    status: int = Status.SUCCESS
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    comment: str = ""


def store_handler(base: BaseServices, title: str) -> Callable[[Request], Awaitable[int]]:
    """The C-STORE handler of a C-GET from ``title``: each instance into ``base.store``."""
    from pacskit.store import InvalidInstance

    store = base.store
    assert store is not None
    log = base.log

    def on_store(request: Request) -> int:
        received = request.received
        if received is None or received.path is None:
            return Status.UNABLE_TO_PROCESS
        try:
            store.ingest(received, source_ae=title, expected_sop_instance_uid=request.sop_instance_uid,
                         expected_sop_class_uid=request.sop_class_uid, duplicate_policy="keep-first")
        except InvalidInstance as exc:
            log.warning("instance %s from %s refused: %s", request.sop_instance_uid, title, exc)
            return Status.CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("instance %s from %s not stored: %s", request.sop_instance_uid, title, exc)
            return Status.OUT_OF_RESOURCES
        return Status.SUCCESS

    async def handle(request: Request) -> int:
        return await asyncio.to_thread(on_store, request)

    return handle


async def find_remote(base: BaseServices, title: str, identifier: Dataset,
                      sop_class: str = STUDY_ROOT_FIND) -> list[Dataset]:
    """The answers of ``title`` to a C-FIND; raises :class:`RemoteFailed` on a failure status and
    :class:`~pacskit.net.NetError` / ``OSError`` when it cannot be reached."""
    answers: list[Dataset] = []
    async with await base.dicom_request.associate(title, [RequestedContext(sop_class)]) as assoc:
        async for status, ds in assoc.find(sop_class, identifier):
            if status in PENDING_STATUSES:
                if ds is not None:
                    answers.append(ds)
            elif status != Status.SUCCESS:
                raise RemoteFailed(title, status)
    return answers


async def fetch(base: BaseServices, title: str, identifier: Dataset, *, via: Literal["C-GET", "C-MOVE"] = "C-GET",
                get_class: str = STUDY_ROOT_GET, move_class: str = STUDY_ROOT_MOVE,
                on_response: Callable[[Any], None] | None = None) -> FetchResult:
    """Retrieve ``identifier`` from ``title`` into the store; ``on_response`` sees every response
    command set (Pending ones included). Raises :class:`~pacskit.net.NetError` / ``OSError`` when the
    remote cannot be reached; a failure status is in the result."""
    from pacskit.client.query import get_contexts

    if via == "C-GET":
        services = Services()
        services.register("C-STORE", store_handler(base, title))
        contexts = [RequestedContext(get_class), *get_contexts()]
        sop_class, command, extra = get_class, CommandField.C_GET_RQ, {}
    else:
        services, contexts = None, [RequestedContext(move_class)]
        sop_class, command = move_class, CommandField.C_MOVE_RQ
        extra = {"MoveDestination": base.settings.ae_title}
    result = FetchResult()
    async with await base.dicom_request.associate(title, contexts, services=services) as assoc:
        ctx = assoc.find_context(sop_class)
        async for rsp, received in assoc.request(command, sop_class, identifier, context=ctx, Priority=0, **extra):
            if on_response is not None:
                on_response(rsp)
            if rsp.status in PENDING_STATUSES:
                if received is not None:
                    received.discard()
                continue
            result.status = rsp.status
            result.completed = int(rsp.get("NumberOfCompletedSuboperations", 0) or 0)
            result.failed = int(rsp.get("NumberOfFailedSuboperations", 0) or 0)
            result.warning = int(rsp.get("NumberOfWarningSuboperations", 0) or 0)
            result.comment = str(rsp.get("ErrorComment", "") or "")
            if received is not None:
                with contextlib.suppress(Exception):
                    value = received.decode().get("FailedSOPInstanceUIDList")
                    result.failed_uids = [str(v) for v in (value if isinstance(value, (list, tuple)) or
                                                            type(value).__name__ == "MultiValue" else [value]) if v]
            result.failed_uids = result.failed_uids or rsp.foreign_uids(_FAILED_SOP_INSTANCE_UID_LIST)
    return result


__all__ = ["FetchResult", "RemoteFailed", "fetch", "find_remote", "store_handler"]
