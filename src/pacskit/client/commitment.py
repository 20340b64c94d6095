"""StorageCommitmentScu: ask a peer to commit to keeping instances (Storage Commitment Push Model, PS3.4 J).

The SCU sends one N-ACTION (Action Type 1, *Request Storage Commitment*) with a Transaction UID and the
instances (Referenced SOP Sequence); the SCP answers it at once and later reports what it committed
in an N-EVENT-REPORT (Event Type 1: all committed; 2: failures exist, each with a Failure Reason). The
report comes either on the same association, while we keep it open, or on an association the SCP opens
to *us* — then the SCP must know our AE title at ``receive_port`` (Orthanc always does it that way)::

    scu = StorageCommitmentScu("PACS@127.0.0.1:11112", calling_ae="MODALITY", receive_port=11113)
    result = await scu.commit(["img1.dcm", "img2.dcm"])  # files, SopReference or (class, instance)
    result.ok, result.committed, result.failed  # failed: CommitmentFailure(reference, reason)

``commit`` keeps the N-ACTION association open until the report arrives (on either path) or
``report_timeout`` passes, unless ``release_after_request`` is set: then it releases at once and the
report must come on a new association (``receive_port`` is required). While ``commit`` runs, a small
Storage Commitment SCP (pacskit's :class:`~pacskit.net.Acceptor`) listens on ``receive_port``, like the
temporary Storage SCP of a move-to-self (:mod:`pacskit.client.query`).

The module also holds the protocol pieces both sides share (the add-in
:mod:`pacskit.addins.commitment` uses them): SOP class and instance UIDs, failure reasons, and the
Action / Event Information datasets.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from pacskit.client._scu import run_sync
from pacskit.client.nservices import EventReport, NServiceScu
from pacskit.net import Acceptor, Request, Response, Services, SupportedContext
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.dicom.status import Status

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom is imported where datasets are built or read, not with this module: ``import pacskit.client``
# must not pull it in (storing files only moves bytes).

__all__ = [
    "ACTION_REQUEST_STORAGE_COMMITMENT",
    "EVENT_ALL_COMMITTED",
    "EVENT_FAILURES_EXIST",
    "FAILURE_REASONS",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_COMMITMENT_INSTANCE",
    "CommitmentFailure",
    "CommitmentResult",
    "SopReference",
    "StorageCommitmentScu",
    "action_information",
    "event_information",
    "parse_event_information",
    "references_from_files",
]

log = logging.getLogger("pacskit.client")

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
#: the well-known SOP Instance every N-ACTION and N-EVENT-REPORT of the Push Model addresses
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
ACTION_REQUEST_STORAGE_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

#: Failure Reason (0008,1197) values of the Failed SOP Sequence (PS3.3 C.14.1.1, PS3.4 J.3.3.1.1)
FAILURE_REASONS: dict[int, str] = {
    Status.PROCESSING_FAILURE: "processing failure",
    Status.NO_SUCH_SOP_INSTANCE: "no such object instance",
    Status.CLASS_INSTANCE_CONFLICT: "class / instance conflict",
    Status.SOP_CLASS_NOT_SUPPORTED: "referenced SOP class not supported",
    Status.DUPLICATE_TRANSACTION_UID: "duplicate transaction UID",
    Status.RESOURCE_LIMITATION: "resource limitation",
}


@dataclass(frozen=True, slots=True)
class SopReference:
    """One instance of a commitment request: its SOP Class and SOP Instance UIDs."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class CommitmentFailure:
    """An instance the SCP did not commit, with its Failure Reason."""

    reference: SopReference
    reason: int

    @property
    def description(self) -> str:
        return FAILURE_REASONS.get(self.reason, "unknown reason")

    def __str__(self) -> str:
        return f"{self.reference.sop_instance_uid}: 0x{self.reason:04X} {self.description}"


@dataclass(slots=True)
class CommitmentResult:
    """What became of one commitment request.

    ``action_status`` is the N-ACTION status (a failure there means nothing was requested);
    ``reported`` tells whether the N-EVENT-REPORT arrived within the timeout, ``same_association``
    how it came. ``missing`` lists requested instances the report named neither committed nor failed.
    """

    transaction_uid: str
    requested: list[SopReference]
    action_status: int = 0xFFFF
    action_comment: str = ""
    reported: bool = False
    event_type_id: int | None = None
    same_association: bool | None = None
    committed: list[SopReference] = field(default_factory=list)
    failed: list[CommitmentFailure] = field(default_factory=list)

    @property
    def missing(self) -> list[SopReference]:
        named = set(self.committed) | {f.reference for f in self.failed}
        return [r for r in self.requested if r not in named]

    @property
    def ok(self) -> bool:
        """Requested, reported, and every instance committed."""
        return self.action_status == 0 and self.reported and not self.failed and not self.missing


ReferenceSpec = Union[SopReference, tuple[str, str], str, os.PathLike[str]]


def references_from_files(paths: Iterable[str | os.PathLike[str]]) -> list[SopReference]:
    """The SOP Class / Instance UIDs of Part 10 files (only their meta header is read). Raises
    ``ValueError`` naming a file that is not DICOM Part 10."""
    from pacskit.dicom.part10 import read_part10_header

    out: list[SopReference] = []
    for path in paths:
        try:
            info = read_part10_header(path)
        except Exception as exc:
            raise ValueError(f"{path}: not a DICOM Part 10 file ({exc})") from None
        if not info.sop_class_uid or not info.sop_instance_uid:
            raise ValueError(f"{path}: the file meta has no SOP Class / Instance UID")
        out.append(SopReference(info.sop_class_uid, info.sop_instance_uid))
    return out


def _as_reference(spec: ReferenceSpec) -> SopReference:
    if isinstance(spec, SopReference):
        return spec
    if isinstance(spec, tuple):
        return SopReference(str(spec[0]), str(spec[1]))
    return references_from_files([spec])[0]


def action_information(transaction_uid: str, references: Sequence[SopReference]) -> Dataset:
    """The N-ACTION Action Information of a commitment request (PS3.4 Table J.3-1)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = DicomSequence([_item(r) for r in references])
    return ds


def event_information(
    transaction_uid: str,
    committed: Sequence[SopReference],
    failed: Sequence[CommitmentFailure],
    *,
    retrieve_ae_title: str | None = None,
) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of a report (PS3.4 Table J.3-2): Referenced SOP
    Sequence when something was committed, Failed SOP Sequence (with Failure Reason) when something
    was not; Event Type 1 without failures, 2 with."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if retrieve_ae_title:
        ds.RetrieveAETitle = retrieve_ae_title
    if committed:
        ds.ReferencedSOPSequence = DicomSequence([_item(r) for r in committed])
    if failed:
        items = []
        for f in failed:
            item = _item(f.reference)
            item.FailureReason = f.reason
            items.append(item)
        ds.FailedSOPSequence = DicomSequence(items)
    return (EVENT_FAILURES_EXIST if failed else EVENT_ALL_COMMITTED), ds


def parse_event_information(ds: Dataset | None) -> tuple[str, list[SopReference], list[CommitmentFailure]]:
    """(Transaction UID, committed, failed) of a report's Event Information."""
    if ds is None:
        return "", [], []
    committed = [_reference(item) for item in ds.get("ReferencedSOPSequence", None) or []]
    failed = [
        CommitmentFailure(_reference(item), int(item.get("FailureReason", Status.PROCESSING_FAILURE) or Status.PROCESSING_FAILURE))
        for item in ds.get("FailedSOPSequence", None) or []
    ]
    return str(ds.get("TransactionUID", "") or ""), committed, failed


def _item(ref: SopReference) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def _reference(item: Dataset) -> SopReference:
    return SopReference(str(item.get("ReferencedSOPClassUID", "") or ""), str(item.get("ReferencedSOPInstanceUID", "") or ""))


class StorageCommitmentScu(NServiceScu):
    """Storage Commitment Push Model SCU for one remote AE (see the module docs).

    ``receive_port`` / ``receive_host`` (default: all interfaces): where reports on a new association
    are accepted while :meth:`commit` runs (``None``: only on the same association).
    ``report_timeout``: seconds to wait for the report after the N-ACTION was answered.
    ``release_after_request``: release the N-ACTION association at once instead of waiting on it.
    """

    def __init__(
        self,
        remote: Any,
        *,
        receive_port: int | None = None,
        receive_host: str = "",
        report_timeout: float = 60.0,
        release_after_request: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(remote, [STORAGE_COMMITMENT_PUSH_MODEL], on_event_report=self._on_same_association, **kwargs)
        self.receive_port = receive_port
        self.receive_host = receive_host
        self.report_timeout = report_timeout
        self.release_after_request = release_after_request
        self._waiting: dict[str, tuple[CommitmentResult, asyncio.Future[None]]] = {}

    # ------------------------------------------------------------------ reports

    def _take_report(self, report: EventReport, same_association: bool) -> int:
        transaction, committed, failed = parse_event_information(report.dataset)
        waiting = self._waiting.get(transaction)
        if waiting is None:
            log.warning("storage commitment report for unknown transaction %r ignored", transaction)
            return Status.PROCESSING_FAILURE
        result, done = waiting
        if done.done():
            return Status.SUCCESS  # a repeated report: already taken
        result.reported = True
        result.event_type_id = report.event_type_id
        result.same_association = same_association
        result.committed = committed
        result.failed = failed
        done.set_result(None)
        return Status.SUCCESS

    def _on_same_association(self, report: EventReport) -> int:
        return self._take_report(report, True)

    async def _on_new_association(self, request: Request) -> Response:
        if request.sop_class_uid != STORAGE_COMMITMENT_PUSH_MODEL:
            return Response(Status.NO_SUCH_SOP_CLASS)
        report = EventReport(
            request.sop_class_uid, request.sop_instance_uid, int(request.command.get("EventTypeID", 0) or 0), request.dataset
        )
        status = self._take_report(report, False)
        return Response(status, elements={"EventTypeID": report.event_type_id})

    def _receiver(self) -> Acceptor:
        services = Services()
        services.register("N-EVENT-REPORT", self._on_new_association, [STORAGE_COMMITMENT_PUSH_MODEL])
        services.register("C-ECHO", lambda request: Status.SUCCESS, [VERIFICATION_SOP_CLASS])
        return Acceptor(
            self.calling_ae,
            # scp_role: the reporting SCP proposes the SCP role on its association (PS3.4 J.3.3)
            [SupportedContext(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=True), SupportedContext(VERIFICATION_SOP_CLASS)],
            services,
            config=self.config,
            bus=self.bus,
        )

    # ------------------------------------------------------------------ request

    async def commit(self, instances: Iterable[ReferenceSpec], *, transaction_uid: str | None = None) -> CommitmentResult:
        """Request storage commitment of ``instances`` (files, :class:`SopReference` or ``(class,
        instance)`` tuples) and wait for the report. A Failure status of the N-ACTION is returned in
        ``action_status``, not raised; network errors raise :class:`~pacskit.net.NetError`.

        Opens (and releases) its own association: call it outside ``async with scu``, one call at a
        time per object (another object for concurrent requests)."""
        references = [_as_reference(spec) for spec in instances]
        if not references:
            raise ValueError("nothing to commit: no instances given")
        if self.release_after_request and self.receive_port is None:
            raise ValueError("release_after_request needs receive_port= (the report then comes on a new association)")
        from pydicom.uid import generate_uid

        transaction = transaction_uid or generate_uid(prefix=None)
        result = CommitmentResult(transaction, references)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = (result, done)
        receiver: Acceptor | None = None
        try:
            if self.receive_port is not None:
                receiver = self._receiver()
                await receiver.start(self.receive_host, self.receive_port)
            async with self:
                answer = await self.n_action(
                    STORAGE_COMMITMENT_PUSH_MODEL,
                    STORAGE_COMMITMENT_INSTANCE,
                    ACTION_REQUEST_STORAGE_COMMITMENT,
                    action_information(transaction, references),
                )
                result.action_status, result.action_comment = answer.status, answer.error_comment
                if answer.status != Status.SUCCESS:
                    return result
                if not self.release_after_request:
                    await self._wait(done)
            if self.release_after_request:
                await self._wait(done)
            return result
        finally:
            self._waiting.pop(transaction, None)
            if receiver is not None:
                await receiver.close(grace=2.0)

    async def _wait(self, done: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(done), self.report_timeout)
        except TimeoutError:
            pass

    def commit_sync(self, instances: Iterable[ReferenceSpec], *, transaction_uid: str | None = None) -> CommitmentResult:
        """:meth:`commit` for plain scripts."""
        return run_sync(self.commit(instances, transaction_uid=transaction_uid))


def files_under(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files given, and the files in folders given (recursive, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        else:
            out.append(p)
    return out
