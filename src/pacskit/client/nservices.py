"""N-service plumbing (PS3.7 10.1): N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE.

The building block of the storage commitment, MPPS, media creation and print SCUs: one association
with the SOP classes they need, typed results, and a hook for the N-EVENT-REPORTs the SCP sends back
on the same association (storage commitment results often arrive that way)::

    async with NServiceScu("SCP@127.0.0.1:11112", [STORAGE_COMMITMENT]) as scu:
        result = await scu.n_action(STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, request_ds)

Statuses are returned, not raised: a Failure status is a normal answer (``result.ok`` tells).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacskit.client._scu import Scu
from pacskit.net import Association, Command, CommandField, Request, RequestedContext, Response, Services
from pacskit.dicom.status import status_category

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["EventReport", "NResult", "NServiceScu"]


@dataclass(slots=True)
class NResult:
    """The answer to one N-request: status, the dataset (attribute list) if any, the command set."""

    status: int
    dataset: Dataset | None
    command: Command

    @property
    def ok(self) -> bool:
        return status_category(self.status) in ("Success", "Warning")

    @property
    def affected_sop_instance_uid(self) -> str:
        """N-CREATE: the instance the SCP created (when it chose the UID)."""
        return str(self.command.get("AffectedSOPInstanceUID", "") or "")

    @property
    def error_comment(self) -> str:
        return str(self.command.get("ErrorComment", "") or "")


@dataclass(slots=True)
class EventReport:
    """An N-EVENT-REPORT the peer sent us."""

    sop_class_uid: str
    sop_instance_uid: str
    event_type_id: int
    dataset: Dataset | None


#: Handler for incoming N-EVENT-REPORTs: returns the status to answer (``None`` = Success).
EventReportHandler = Callable[[EventReport], "int | None"]


class NServiceScu(Scu):
    """One association for DIMSE-N requests on ``sop_classes``; use as ``async with``.

    ``on_event_report`` answers N-EVENT-REPORTs the peer sends on this association (it runs on the
    event loop: keep it short).
    """

    def __init__(
        self,
        remote: Any,
        sop_classes: Sequence[str],
        *,
        on_event_report: EventReportHandler | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(remote, **kwargs)
        self.sop_classes = list(sop_classes)
        self.on_event_report = on_event_report
        self.assoc: Association | None = None

    async def __aenter__(self) -> NServiceScu:
        services = Services()
        if self.on_event_report is not None:
            services.register("N-EVENT-REPORT", self._event_report)
        # Propose the SCU role and, for N-EVENT-REPORTs coming back, our willingness to receive them
        # on the same context (the default roles cover it: PS3.4 J.3.3 for storage commitment).
        self.assoc = await self.associate([RequestedContext(uid) for uid in self.sop_classes], services=services)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            await assoc.__aexit__(exc_type, exc, tb)

    async def _event_report(self, request: Request) -> Response:
        assert self.on_event_report is not None
        report = EventReport(
            request.sop_class_uid, request.sop_instance_uid, int(request.command.get("EventTypeID", 0) or 0), request.dataset
        )
        status = self.on_event_report(report)
        return Response(0 if status is None else int(status), elements={"EventTypeID": report.event_type_id})

    def _assoc(self) -> Association:
        if self.assoc is None:
            raise RuntimeError("use NServiceScu as 'async with NServiceScu(...) as scu:'")
        return self.assoc

    async def _call(self, field: CommandField, sop_class: str, dataset: Dataset | None, **elements: Any) -> NResult:
        rsp, ds = await self._assoc().n_request(field, sop_class, dataset, **elements)
        return NResult(rsp.status, ds, rsp)

    async def n_action(self, sop_class: str, instance_uid: str, action_type: int, dataset: Dataset | None = None) -> NResult:
        return await self._call(CommandField.N_ACTION_RQ, sop_class, dataset, RequestedSOPInstanceUID=instance_uid, ActionTypeID=action_type)

    async def n_create(self, sop_class: str, dataset: Dataset | None = None, instance_uid: str | None = None) -> NResult:
        extra = {"AffectedSOPInstanceUID": instance_uid} if instance_uid else {}
        return await self._call(CommandField.N_CREATE_RQ, sop_class, dataset, **extra)

    async def n_set(self, sop_class: str, instance_uid: str, dataset: Dataset) -> NResult:
        return await self._call(CommandField.N_SET_RQ, sop_class, dataset, RequestedSOPInstanceUID=instance_uid)

    async def n_get(self, sop_class: str, instance_uid: str, attributes: Sequence[int] = ()) -> NResult:
        extra = {"AttributeIdentifierList": list(attributes)} if attributes else {}
        return await self._call(CommandField.N_GET_RQ, sop_class, None, RequestedSOPInstanceUID=instance_uid, **extra)

    async def n_delete(self, sop_class: str, instance_uid: str) -> NResult:
        return await self._call(CommandField.N_DELETE_RQ, sop_class, None, RequestedSOPInstanceUID=instance_uid)

    async def n_event_report(self, sop_class: str, instance_uid: str, event_type: int, dataset: Dataset | None = None) -> NResult:
        return await self._call(CommandField.N_EVENT_REPORT_RQ, sop_class, dataset, AffectedSOPInstanceUID=instance_uid, EventTypeID=event_type)
