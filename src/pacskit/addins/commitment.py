"""Storage Commitment add-in: the Push Model SCP (PS3.4 Annex J), SOP class 1.2.840.10008.1.20.1.

A requester (a modality, another archive) asks with N-ACTION (Action Type 1) whether the archive takes
responsibility for a list of instances. The request is checked and written to the database, then
answered at once; the commitment itself is decided afterwards and sent as an N-EVENT-REPORT:

1. **N-ACTION** on the well-known instance 1.2.840.10008.1.20.1.1. Statuses:

   ========  =======================================================================================
   0x0000    accepted: the request is in the database (it survives a restart) and will be reported
   0x0112    Requested SOP Instance is not the well-known instance 1.2.840.10008.1.20.1.1
   0x0117    Requested SOP Instance UID is not a valid UID
   0x0123    Action Type ID is not 1 (Request Storage Commitment)
   0x0115    bad Action Information: no dataset, Transaction UID missing or invalid, Referenced SOP
             Sequence missing or empty, an item without valid Referenced SOP Class / Instance UIDs
   0x0213    more than ``max_references`` instances in one request
   0x0124    the requester is registered in the AE registry without the ``commit`` service
   0x0110    no data store, or the database failed (nothing was recorded)
   ========  =======================================================================================

2. **The check**, ``delay`` seconds later: every referenced instance must be in the index *and* its
   file present with the size and SHA-256 the index recorded at reception
   (:meth:`pacskit.store.DataStore.verify_instances`, the test ``pacskit check`` runs) — a row alone
   commits nothing. Failure Reasons (PS3.4 J.3.3.1.1): 0x0112 no such object instance (not in the
   index), 0x0119 class / instance conflict (stored under another SOP class), 0x0122 referenced SOP
   class not supported (not stored, and not a storage SOP class), 0x0110 processing failure (the file
   is missing, unreadable or its bytes changed). The result is stored with the request, so a report
   sent again after a failure or a restart says the same.

3. **The report**, N-EVENT-REPORT with Event Type 1 (all committed) or 2 (failures exist),
   Referenced SOP Sequence / Failed SOP Sequence: on the association the request came on when
   ``report_on_same_association`` is set and that association is still open (the SCP sends the
   request back on it: :meth:`pacskit.net.Association.n_request` with the request's context);
   otherwise — or when that fails — on a new association to the requester's AE title as registered
   in the AE registry (``pacskit ae add``), proposing the SCP role (PS3.4 J.3.3). A report the
   requester does not take (refused, unreachable, a failure status) is tried up to ``report_attempts``
   times, waiting ``retry_backoff`` seconds before the second try and twice as long before each next
   one (as the Retrieve add-in's ``connect_attempts`` / ``retry_backoff``); then the request is
   marked ``failed`` (kept in the database, logged).

Requests still pending when the server stops are resumed at start-up, at once (``delay`` is not
applied again) and on a new association. With ``workers > 1`` one worker resumes them: the first
to start takes the archive-wide ``commitment-resume`` lock (:meth:`BaseServices.exclusive
<pacskit.services.BaseServices.exclusive>`) and keeps it until it stops (across reloads); a worker
that replaces a dead one takes it over and resumes what is still pending.

On a cluster (``[cluster]``, docs/deployment.md) each request is claimed by the node that received it,
in the transaction that records it (``pacskit.store.cluster.claim``); a node starting resumes only its
own and unclaimed requests, and every lease period each node adopts the pending requests of nodes
whose lease ran out: one report per request, whichever node survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from pydicom.dataset import Dataset

from pacskit.services import AddIn, AddInOptions, BaseServices, Handler, Permission, Request, Response, SupportedContext
from pacskit.client.commitment import (
    ACTION_REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentFailure,
    SopReference,
    event_information,
)
from pacskit.net import Association, CommandField, NetError, PresentationContext, RequestedContext
from pacskit.dicom.status import DimseRefusal, Status

#: the kind of this add-in's items in the cluster claims (pacskit.store.cluster)
CLAIM_KIND = "commitment"


class CommitmentOptions(AddInOptions):
    report_on_same_association: bool = Field(
        True, description="send the report on the requester's association while it is still open"
    )
    delay: float = Field(
        0.0, ge=0, description="seconds between the N-ACTION and the check of the store (e.g. to let "
        "C-STOREs still in flight arrive)"
    )
    report_attempts: int = Field(5, ge=1, description="tries to deliver a report on a new association")
    retry_backoff: float = Field(
        10.0, ge=0, description="seconds before the 2nd try on a new association; doubled for each next one"
    )
    max_references: int = Field(10000, ge=1, description="most instances accepted in one request")


class _Refused(DimseRefusal):
    """A commitment request refused before it is queued (``tag`` unused)."""


@dataclass(slots=True)
class _Report:
    """A checked request, ready to be sent."""

    pk: int
    transaction_uid: str
    requester_ae: str
    attempts: int
    committed: list[SopReference]
    failed: list[CommitmentFailure]


class StorageCommitmentAddIn(AddIn):
    name = "commitment"
    description = "Storage Commitment Push Model SCP (N-ACTION, N-EVENT-REPORT)"
    Options = CommitmentOptions
    permissions = (Permission("commit", STORAGE_COMMITMENT_PUSH_MODEL),)
    options: CommitmentOptions

    def __init__(self, options: AddInOptions, base: BaseServices) -> None:
        super().__init__(options, base)
        self._tasks: set[asyncio.Task[None]] = set()
        self._storage_classes: frozenset[str] = frozenset()
        self._node: str | None = None  # this node's name on a cluster (pacskit.store.cluster claims)
        self._adopter: asyncio.Task[None] | None = None
        self._holds_resume = False  # counted in control.shared["commitment-resume"] (see _resumer)

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(STORAGE_COMMITMENT_PUSH_MODEL)]

    def handlers(self) -> Mapping[str, Handler]:
        return {"N-ACTION": self.on_action}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from pacskit.dicom.uids import STORAGE_SOP_CLASSES

        self._storage_classes = frozenset(STORAGE_SOP_CLASSES)
        if self.base.store is None:
            self.base.log.warning("no data store: every storage commitment request will be refused")
            return
        pending = await asyncio.to_thread(self._pending)
        settings = self.base.settings
        self._node = settings.cluster_node_name if getattr(settings, "cluster_enabled", False) else None
        if self._node is not None:
            # a cluster: resume only what no live node works on (ours from a previous run included);
            # the rest belongs to the node that received it, and is adopted if that node dies
            pending = await asyncio.to_thread(self._adopt, pending, True)
            self._adopter = asyncio.get_running_loop().create_task(self._adopt_orphans(settings.cluster.lease_seconds))
        elif pending and not await asyncio.to_thread(self._resumer):
            self.base.log.info("%d pending storage commitment reports: another worker resumes them", len(pending))
            pending = []
        if pending:
            self.base.log.info("resuming %d pending storage commitment reports", len(pending))
        for pk in pending:
            self._spawn(pk, None, None, delay=0.0)

    def _resumer(self) -> bool:
        """Whether this process resumes the pending requests: the one worker of the folder (or of the
        PostgreSQL database) holding the ``commitment-resume`` lock, taken for the process's life
        (kept in ``control.shared``, so a reloaded add-in keeps it; released when the process ends)."""
        held = self.base.control.shared.get("commitment-resume")
        if held is not None:  # a reload: the new instance starts before the old one stops
            held[1] += 1
            self._holds_resume = True
            return True
        hold = contextlib.ExitStack()
        if not hold.enter_context(self.base.exclusive("commitment-resume")):
            hold.close()
            return False
        self.base.control.shared["commitment-resume"] = [hold, 1]
        self._holds_resume = True
        return True

    def _release_resumer(self) -> None:
        held = self.base.control.shared.get("commitment-resume")
        if held is None or not self._holds_resume:
            return
        self._holds_resume = False
        held[1] -= 1
        if held[1] == 0:  # the server stops (not a reload): another worker may take it over
            del self.base.control.shared["commitment-resume"]
            held[0].close()

    def _adopt(self, pending: list[int], own: bool) -> list[int]:
        from pacskit.store.cluster import adopt

        store = self.base.store
        assert store is not None and self._node is not None
        return adopt(store.index.engine, CLAIM_KIND, pending, self._node, own=own)

    async def _adopt_orphans(self, period: float) -> None:
        """A cluster node: every lease period, take over the pending requests of nodes that died (and
        forget the claims of requests that are done)."""
        from pacskit.store.cluster import forget_claims

        store = self.base.store
        assert store is not None
        while True:
            await asyncio.sleep(period)
            try:
                pending = await asyncio.to_thread(self._pending)
                adopted = await asyncio.to_thread(self._adopt, pending, False)
                await asyncio.to_thread(forget_claims, store.index.engine, CLAIM_KIND,
                                        "SELECT pk FROM storage_commitment_requests WHERE state = 'pending'")
            except Exception as exc:
                self.base.log.error("storage commitment: cannot adopt the requests of dead nodes: %s", exc)
                continue
            if adopted:
                self.base.log.warning("adopted %d pending storage commitment reports of a dead node", len(adopted))
            for pk in adopted:
                self._spawn(pk, None, None, delay=0.0)

    async def stop(self) -> None:
        adopter = getattr(self, "_adopter", None)
        if adopter is not None:
            adopter.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)  # what is still pending is resumed at the next start
        await asyncio.to_thread(self._release_resumer)

    def _spawn(self, pk: int, assoc: Association | None, context: PresentationContext | None, *, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(pk, assoc, context, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ N-ACTION

    async def on_action(self, request: Request) -> Response:
        peer = request.assoc.remote_ae_title
        try:
            # decoding a long Referenced SOP Sequence takes a while: not on the event loop
            transaction, references = await asyncio.to_thread(self._parse, request)
            registered = self.base.ae_titles.get(peer)
            if registered is not None and not registered.may("commit"):
                raise _Refused(Status.REFUSED_NOT_AUTHORIZED, f"{peer} may not request storage commitment")
            if self.base.store is None:
                raise _Refused(Status.PROCESSING_FAILURE, "no data store configured")
        except _Refused as refused:
            self.base.log.warning(
                "storage commitment request from %s refused (0x%04X): %s", peer, refused.status, refused.comment
            )
            return Response(refused.status, elements={"ErrorComment": refused.comment[:64]})
        try:
            pk = await asyncio.to_thread(self._save, transaction, peer, references)
        except Exception:
            self.base.log.exception("storage commitment request %s from %s could not be recorded", transaction, peer)
            return Response(Status.PROCESSING_FAILURE, elements={"ErrorComment": "the request could not be recorded"})
        self.base.log.info(
            "storage commitment request %s from %s: %d instances", transaction, peer, len(references)
        )
        # The task's first step (the check) runs in a thread, so this response is on the wire before
        # the report can be: the engine sends it as soon as the handler returns.
        self._spawn(pk, request.assoc, request.context, delay=self.options.delay)
        return Response(Status.SUCCESS, elements={"ActionTypeID": ACTION_REQUEST_STORAGE_COMMITMENT})

    def _parse(self, request: Request) -> tuple[str, list[SopReference]]:
        from pacskit.store import is_valid_uid
        from pacskit.store.index.extract import is_usable_uid

        instance = request.sop_instance_uid
        if not is_valid_uid(instance):
            raise _Refused(Status.INVALID_OBJECT_INSTANCE, "Requested SOP Instance UID is not a valid UID")
        if instance != STORAGE_COMMITMENT_INSTANCE:
            raise _Refused(Status.NO_SUCH_SOP_INSTANCE, f"not the well-known instance {STORAGE_COMMITMENT_INSTANCE}")
        action = request.command.get("ActionTypeID")
        if action != ACTION_REQUEST_STORAGE_COMMITMENT:
            raise _Refused(Status.NO_SUCH_ACTION_TYPE, f"no such action type {action!r}: only 1 (Request Storage Commitment)")
        if request.received is None:
            raise _Refused(Status.INVALID_ARGUMENT_VALUE, "no Action Information (dataset) in the request")
        try:
            ds = request.dataset
            assert ds is not None
            transaction = ds.get("TransactionUID", None)
            items = ds.get("ReferencedSOPSequence", None)
        except Exception as exc:
            raise _Refused(Status.INVALID_ARGUMENT_VALUE, f"Action Information cannot be decoded: {type(exc).__name__}") from None
        if transaction is None or str(transaction) == "":
            raise _Refused(Status.INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) missing")
        transaction = str(transaction)
        if not is_valid_uid(transaction):
            raise _Refused(Status.INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) is not a valid UID")
        if not items:
            raise _Refused(Status.INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) missing or empty")
        if len(items) > self.options.max_references:
            raise _Refused(Status.RESOURCE_LIMITATION, f"more than {self.options.max_references} instances in one request")
        references: list[SopReference] = []
        for n, item in enumerate(items, 1):
            try:
                sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
                sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "")
            except Exception:
                sop_class = sop_instance = ""
            # as leniently as the Storage add-in stores them: what we keep, we can commit
            if not (is_usable_uid(sop_class) and is_usable_uid(sop_instance)):
                raise _Refused(Status.INVALID_ARGUMENT_VALUE, f"Referenced SOP Sequence item {n}: missing or invalid UIDs")
            references.append(SopReference(sop_class, sop_instance))
        return transaction, references

    # ------------------------------------------------------------------ database (run in threads)

    def _save(self, transaction: str, requester: str, references: list[SopReference]) -> int:
        from sqlalchemy import insert

        from pacskit.store import CommitmentItem, CommitmentRequest
        from pacskit.store.workflow.commitment_models import STATE_PENDING

        store = self.base.store
        assert store is not None

        def work(s: Any) -> int:
            row = CommitmentRequest(
                transaction_uid=transaction,
                requester_ae=requester,
                state=STATE_PENDING,
                received_at=dt.datetime.now(dt.UTC),
                attempts=0,
            )
            s.add(row)
            s.flush()
            s.execute(insert(CommitmentItem), [  # one executemany, not an ORM object per instance
                {"request_fk": row.pk, "sop_class_uid": r.sop_class_uid, "sop_instance_uid": r.sop_instance_uid}
                for r in references
            ])
            if self._node is not None:  # a cluster: this node reports it (others adopt it if we die)
                from pacskit.store.cluster import claim

                claim(s, CLAIM_KIND, int(row.pk), self._node)
            return int(row.pk)

        return store.index.run_write(work)

    def _pending(self) -> list[int]:
        from sqlalchemy import select

        from pacskit.store import CommitmentRequest
        from pacskit.store.workflow.commitment_models import STATE_PENDING

        store = self.base.store
        assert store is not None
        with store.index.reading() as s:
            return list(s.scalars(
                select(CommitmentRequest.pk).where(CommitmentRequest.state == STATE_PENDING).order_by(CommitmentRequest.pk)
            ))

    def _check(self, pk: int) -> _Report | None:
        """Load a pending request; check the store the first time (and record the result)."""
        from sqlalchemy import select, update
        from sqlalchemy.orm import selectinload

        from pacskit.store import CommitmentItem, CommitmentRequest
        from pacskit.store.workflow.commitment_models import STATE_PENDING

        store = self.base.store
        assert store is not None
        with store.index.reading() as s:
            row = s.scalars(
                select(CommitmentRequest).where(CommitmentRequest.pk == pk).options(selectinload(CommitmentRequest.items))
            ).one_or_none()
            if row is None or row.state != STATE_PENDING:
                return None
            items = [(item.pk, item.sop_class_uid, item.sop_instance_uid, item.failure_reason) for item in row.items]
            transaction, requester, attempts, checked = row.transaction_uid, row.requester_ae, row.attempts, row.checked_at
        reasons: dict[int, int] = {}
        if checked is None:
            found = store.verify_instances(uid for _, _, uid, _ in items)
            for item_pk, sop_class, uid, _ in items:
                reasons[item_pk] = self._reason(sop_class, found.get(uid))
                copy = found.get(uid)
                if copy is not None and copy.problem is not None:
                    self.base.log.warning("storage commitment %s: %s not committed: %s", transaction, uid, copy.problem.detail)

            def record(s: Any) -> None:
                now = dt.datetime.now(dt.UTC)
                s.execute(update(CommitmentRequest).where(CommitmentRequest.pk == pk).values(checked_at=now))
                if reasons:  # one executemany (ORM bulk UPDATE by primary key)
                    s.execute(update(CommitmentItem), [{"pk": k, "failure_reason": v} for k, v in reasons.items()])

            store.index.run_write(record)
        else:
            reasons = {item_pk: int(reason if reason is not None else Status.PROCESSING_FAILURE) for item_pk, _, _, reason in items}
        committed: list[SopReference] = []
        failed: list[CommitmentFailure] = []
        for item_pk, sop_class, uid, _ in items:
            ref = SopReference(sop_class, uid)
            if reasons[item_pk] == 0:
                committed.append(ref)
            else:
                failed.append(CommitmentFailure(ref, reasons[item_pk]))
        return _Report(pk, transaction, requester, attempts, committed, failed)

    def _reason(self, sop_class: str, copy: Any) -> int:
        if copy is None:
            return Status.NO_SUCH_SOP_INSTANCE if sop_class in self._storage_classes else Status.SOP_CLASS_NOT_SUPPORTED
        if copy.sop_class_uid != sop_class:
            return Status.CLASS_INSTANCE_CONFLICT
        return 0 if copy.ok else Status.PROCESSING_FAILURE

    def _record(self, pk: int, *, state: str | None = None, error: str | None = None, attempted: bool = False) -> None:
        from pacskit.store import CommitmentRequest
        from pacskit.store.workflow.commitment_models import ERROR_TEXT, STATE_REPORTED

        store = self.base.store
        assert store is not None

        def work(s: Any) -> None:
            row = s.get(CommitmentRequest, pk)
            if row is None:
                return
            if attempted:
                row.attempts += 1
            if error is not None:
                row.last_error = error[:ERROR_TEXT]
            if state is not None:
                row.state = state
                if state == STATE_REPORTED:
                    row.reported_at = dt.datetime.now(dt.UTC)
                    row.last_error = None

        store.index.run_write(work)

    # ------------------------------------------------------------------ the report

    async def _deliver(self, pk: int, assoc: Association | None, context: PresentationContext | None, delay: float) -> None:
        from pacskit.store.workflow.commitment_models import STATE_FAILED, STATE_REPORTED

        log = self.base.log
        try:
            if delay:
                await asyncio.sleep(delay)
            report = await self._checked(pk)
            if report is None:
                return
            event_type, info = event_information(
                report.transaction_uid, report.committed, report.failed, retrieve_ae_title=self.base.settings.ae_title
            )
            summary = f"{len(report.committed)} committed, {len(report.failed)} failed"
            if assoc is not None and context is not None and self.options.report_on_same_association and assoc.is_open:
                error = await self._send(assoc, context, event_type, info)
                if error is None:
                    await asyncio.to_thread(self._record, pk, state=STATE_REPORTED)
                    log.info("storage commitment %s reported to %s on its association (%s)",
                             report.transaction_uid, report.requester_ae, summary)
                    return
                log.warning("storage commitment %s: report on the requester's association failed (%s); "
                            "trying a new association", report.transaction_uid, error)
            attempts = report.attempts
            while attempts < self.options.report_attempts:
                if attempts > 0:
                    await asyncio.sleep(self.options.retry_backoff * 2 ** (attempts - 1))
                attempts += 1
                error = await self._send_new(report.requester_ae, event_type, info)
                if error is None:
                    await asyncio.to_thread(self._record, pk, state=STATE_REPORTED, attempted=True)
                    log.info("storage commitment %s reported to %s on a new association (%s)",
                             report.transaction_uid, report.requester_ae, summary)
                    return
                final = attempts >= self.options.report_attempts
                await asyncio.to_thread(self._record, pk, error=error, attempted=True,
                                        state=STATE_FAILED if final else None)
                if final:
                    log.error("storage commitment %s: report to %s failed %d times, given up: %s",
                              report.transaction_uid, report.requester_ae, attempts, error)
                else:
                    log.warning("storage commitment %s: report to %s failed (try %d of %d): %s",
                                report.transaction_uid, report.requester_ae, attempts, self.options.report_attempts, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("storage commitment request %d: report failed; retried at the next start", pk)

    async def _checked(self, pk: int) -> _Report | None:
        """:meth:`_check` in a thread; a failure (the database or the disk) is retried like a report,
        and after ``report_attempts`` failures the request is left pending for the next start."""
        for attempt in range(1, self.options.report_attempts + 1):
            try:
                return await asyncio.to_thread(self._check, pk)
            except Exception:
                self.base.log.exception("storage commitment request %d: checking the store failed (try %d of %d)",
                                        pk, attempt, self.options.report_attempts)
                if attempt < self.options.report_attempts:
                    await asyncio.sleep(self.options.retry_backoff * 2 ** (attempt - 1))
        return None

    async def _send(self, assoc: Association, context: PresentationContext, event_type: int, info: Dataset) -> str | None:
        """Send the report on ``assoc``; ``None`` when the requester answered Success, else why not."""
        try:
            rsp, _ = await assoc.n_request(
                CommandField.N_EVENT_REPORT_RQ,
                STORAGE_COMMITMENT_PUSH_MODEL,
                info,
                context=context,
                AffectedSOPInstanceUID=STORAGE_COMMITMENT_INSTANCE,
                EventTypeID=event_type,
            )
        except NetError as exc:
            return f"{type(exc).__name__}: {exc}"
        if rsp.status != Status.SUCCESS:
            comment = rsp.get("ErrorComment") or ""
            return f"N-EVENT-REPORT answered 0x{rsp.status:04X} {comment}".strip()
        return None

    async def _send_new(self, requester: str, event_type: int, info: Dataset) -> str | None:
        from pacskit.services.dicom_request import UnknownAE

        # The reporting SCP proposes the SCP role for the SOP class (PS3.4 J.3.3); a peer that
        # ignores role selection still takes the report on the accepted context.
        contexts = [RequestedContext(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)]
        try:
            async with await self.base.dicom_request.associate(requester, contexts) as assoc:
                context = next(
                    (pc for pc in assoc.accepted_contexts if pc.abstract_syntax == STORAGE_COMMITMENT_PUSH_MODEL), None
                )
                if context is None:
                    return f"{requester} did not accept the Storage Commitment SOP class"
                return await self._send(assoc, context, event_type, info)
        except UnknownAE:
            return f"{requester} is not in the AE registry (pacskit ae add {requester} --host H --port P)"
        except NetError as exc:
            return f"{type(exc).__name__}: {exc}"
