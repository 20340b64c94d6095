"""Q/R gateway add-in: answer C-FIND, C-MOVE and C-GET for studies held by remote PACS.

Off by default. It serves the Patient Root and Study Root Q/R SOP classes itself, so it replaces the
``query`` and ``retrieve`` add-ins (disable them; two add-ins on one context is a start-up error).
What pacskit holds itself is answered by the same local code (``local``, the default), with the
options of those add-ins under ``[addins.gateway.query]`` and ``[addins.gateway.retrieve]``::

    [addins.query]
    enabled = false
    [addins.retrieve]
    enabled = false
    [addins.gateway]
    enabled = true
    remotes = ["ORTHANC"]        # AE titles of the registry (pacskit ae add), asked in this order
    local = true                 # merge pacskit's own answers, serve what it holds
    move_mode = "fetch"          # "fetch" | "direct" | "auto"
    fetch_with = "C-GET"         # "C-GET" | "C-MOVE" (the remote must know pacskit's AE title)

**C-FIND** is forwarded unchanged to every remote at once (one association each) while the local
query runs; answers are relayed as they come, Pending 0xFF01 kept as 0xFF01. With ``local``, one
answer per entity: the key of the level (Patient ID, Study / Series / SOP Instance UID) seen first
wins, the local one first. The Retrieve AE Title of a relayed answer is replaced by pacskit's, so the
requestor retrieves through the gateway (``keep_retrieve_ae = true`` leaves the remote's). A remote
that fails (its failure status, or it cannot be reached: 0xC000) ends the C-FIND with that status and
an Error Comment naming the remote after the other answers were sent; ``remote_failure = "ignore"``
logs it and ends with Success. An identifier pacskit's own query refuses (its hierarchy rules, its
``max_results``) is still forwarded: the refusal is the answer only when no remote answered Success. A C-CANCEL from the requestor is forwarded to every remote, the local
query stops, and the answer is Cancel (0xFE00).

**C-MOVE**, by ``move_mode``:

* ``fetch`` (default): the instances are fetched from each remote into pacskit's store (C-GET, or a
  C-MOVE to pacskit's own AE title with ``fetch_with = "C-MOVE"``), then sent to the destination by
  the local retrieve, from the store. With ``reuse_cached`` (the default), a study or series (one UID)
  the store already holds as many instances of as the remote counts (one C-FIND for its Number of
  Study / Series Related Instances) is not fetched again. The destination need only be in pacskit's registry; what was
  fetched stays in the store (a cache: the next retrieve of the study sends the same files). Each
  fetched instance is stored with the store's usual durability (acknowledged to the remote only once
  durable and indexed), so a crash or kill -9 during a move leaves complete instances or none; the
  requestor retries the move and gets the study.
* ``direct``: each remote is told to move to the destination itself (C-MOVE with the same Move
  Destination): nothing passes through pacskit, but every remote must know the destination's AE title.
  With ``local``, instances held by pacskit are sent afterwards by the local retrieve.
* ``auto``: ``direct`` for the destinations listed for that remote in ``direct_destinations``
  (``{ORTHANC = ["WS1", "WS2"]}``), ``fetch`` for the others and from a remote that answers 0xA801
  (the destination is unknown to it). A remote cannot be asked whether it knows an AE title, and
  some answer an unknown destination with another status (Orthanc 1.10: 0xC000), hence the list.

Why ``fetch`` is the default: the destination needs to be known to pacskit only (the registry
already says who may receive what), the study is cached for the next retrieve, C-GET works
through the same path, and the counts the requestor sees are pacskit's own. ``direct`` saves the
copy through pacskit when the remote serves the destination anyway.

Pending responses during a fetch carry the sub-operations still expected (the remote's remaining and
completed counts) and zero completed: nothing has reached the destination yet. The final counts are
the local retrieve's (or the remotes' in ``direct`` mode, summed), plus the sub-operations a remote
failed to deliver to pacskit, whose SOP Instance UIDs join the Failed SOP Instance UID List; the
status follows from the counts (0x0000, 0xB000, 0xA702). A remote that cannot be reached fails the
move with 0xA702 when nothing else could be sent, and a failure status of a remote (0xA900, 0xC000…)
is relayed as it is when nothing was sent. A C-CANCEL is forwarded to the remote being fetched from
and the answer is Cancel (0xFE00) with the counts so far.

**C-GET**: fetched as for C-MOVE, then sent on the requestor's association by the local retrieve.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from pydicom.dataset import Dataset

from pacskit.addins.fetching import RemoteFailed, find_remote, store_handler
from pacskit.addins.query import QueryAddIn, QueryOptions
from pacskit.addins.retrieve import (
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    RetrieveAddIn,
    RetrieveOptions,
)
from pacskit.dicom.codec import decode_dataset
from pacskit.dicom.status import PENDING_STATUSES, Status, status_category
from pacskit.net import CommandField, NetError, RequestedContext, Services
from pacskit.store.query import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from pacskit.services import AddIn, AddInOptions, Handler, Request, Response, SupportedContext

_FIND_TO_GET = {PATIENT_ROOT_FIND: PATIENT_ROOT_GET, STUDY_ROOT_FIND: STUDY_ROOT_GET}
_MOVE_TO_GET = {PATIENT_ROOT_MOVE: PATIENT_ROOT_GET, STUDY_ROOT_MOVE: STUDY_ROOT_GET}
_GET_TO_MOVE = {v: k for k, v in _MOVE_TO_GET.items()}
_LEVEL_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}
_FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
_US_MAX = 0xFFFF
#: seconds the remotes get to answer a forwarded C-CANCEL before their associations are dropped
_CANCEL_GRACE = 30.0


class GatewayOptions(AddInOptions):
    enabled: bool = False  # replaces the query and retrieve add-ins: only when asked for
    timeout: float | None = Field(None, gt=0, description="seconds between two responses (default: no limit)")
    remotes: list[str] = Field(default_factory=list, description="AE titles of the registry, asked in this order")
    local: bool = Field(True, description="merge pacskit's own C-FIND answers and serve what it holds")
    move_mode: Literal["fetch", "direct", "auto"] = Field(
        "fetch", description="fetch through pacskit, have the remote move directly, or direct unless it answers 0xA801")
    fetch_with: Literal["C-GET", "C-MOVE"] = Field(
        "C-GET", description="how pacskit fetches from a remote (C-MOVE: the remote must know pacskit's AE title)")
    remote_failure: Literal["fail", "ignore"] = Field(
        "fail", description="a remote's C-FIND failure ends the query with its status, or is only logged")
    direct_destinations: dict[str, list[str]] = Field(
        default_factory=dict,
        description="move_mode auto: remote AE title -> the destinations it knows (it is told to move to them directly)")
    reuse_cached: bool = Field(
        True, description="fetch nothing when the store holds as many instances of the study/series as the remote")
    keep_retrieve_ae: bool = Field(False, description="relay the remote's Retrieve AE Title instead of pacskit's")
    query: QueryOptions = Field(default_factory=lambda: QueryOptions.model_validate({}), description="options of the local C-FIND")
    retrieve: RetrieveOptions = Field(default_factory=lambda: RetrieveOptions.model_validate({}), description="options of the local retrieve")


@dataclass(slots=True)
class _Fetched:
    """What a fetch from the remotes did: sub-operations the remotes failed, a refusal to relay."""

    failed_uids: list[str] = field(default_factory=list)
    failed: int = 0
    warning: int = 0
    refusal: Response | None = None
    cancelled: bool = False
    unknown_destination: bool = False
    completed: int = 0


class GatewayAddIn(AddIn):
    name = "gateway"
    description = "Q/R gateway: C-FIND/C-MOVE/C-GET for studies held by remote PACS"
    Options = GatewayOptions
    options: GatewayOptions

    def __init__(self, options: AddInOptions, base: Any) -> None:
        super().__init__(options, base)
        self._querier = QueryAddIn(self.options.query, base)
        self._retriever = RetrieveAddIn(self.options.retrieve, base)

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(uid) for uid in (*_FIND_TO_GET, *_MOVE_TO_GET, *_GET_TO_MOVE)]

    def handlers(self) -> Mapping[str, Handler]:
        return {"C-FIND": self.on_find, "C-MOVE": self.on_move, "C-GET": self.on_get}

    def extended_negotiation(self, sop_class_uid: str, info: bytes) -> bytes | None:
        if sop_class_uid in _FIND_TO_GET:
            return self._querier.extended_negotiation(sop_class_uid, info)
        return None

    async def start(self) -> None:
        for title in self.options.remotes:
            if self.base.ae_titles.get(title) is None:
                self.base.log.error("gateway: remote %s is not in the AE registry (pacskit ae add)", title)

    # ------------------------------------------------------------------ C-FIND

    async def on_find(self, request: Request) -> AsyncIterator[Response]:
        log = self.base.log
        peer = request.assoc.remote_ae_title
        try:
            identifier = request.dataset
        except Exception as exc:  # noqa: BLE001 - bytes pydicom cannot decode
            log.warning("gateway C-FIND from %s: undecodable identifier: %s", peer, exc)
            yield Response(Status.UNABLE_TO_PROCESS, elements={"ErrorComment": "cannot decode identifier"})
            return
        if identifier is None:
            yield Response(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, elements={"ErrorComment": "no identifier"})
            return
        level = str(identifier.get("QueryRetrieveLevel", "") or "").upper()
        key = _LEVEL_KEY.get(level)
        wants_retrieve_ae = "RetrieveAETitle" in identifier
        answers: asyncio.Queue[tuple[str, int, Dataset | None, str]] = asyncio.Queue()
        remote_tasks = [asyncio.create_task(self._remote_find(title, request, identifier, answers),
                                            name=f"gateway-find-{title}") for title in self.options.remotes]
        seen: set[str] = set()
        failure: Response | None = None
        local_failure: Response | None = None
        remote_success = False
        unsupported = False
        sent = 0
        try:
            if self.options.local and self.base.store is not None:
                async for response in self._local_find(request):
                    if response.status in PENDING_STATUSES:
                        assert isinstance(response.dataset, bytes)
                        if key is not None:
                            local_answer = decode_dataset(response.dataset, request.context.transfer_syntax)
                            seen.add(str(local_answer.get(key, "") or ""))
                        sent += 1
                        yield response
                    elif response.status not in (Status.SUCCESS, Status.CANCEL):
                        # refused locally (pacskit's own hierarchy or limits); the remotes may answer it
                        local_failure = response
                        log.info("gateway C-FIND from %s: the local query refused it (0x%04X)", peer, response.status)
                        break
                    if request.cancelled.is_set():
                        break
            running = len(remote_tasks)
            remote_success = False
            while running:
                if request.cancelled.is_set():  # the remotes end their own C-FINDs (forwarded C-CANCEL)
                    await asyncio.wait(remote_tasks, timeout=_CANCEL_GRACE)
                    break
                getter = asyncio.ensure_future(answers.get())
                cancel_wait = asyncio.ensure_future(request.cancelled.wait())
                await asyncio.wait({getter, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
                cancel_wait.cancel()
                if not getter.done():
                    getter.cancel()
                    continue
                title, status, ds, comment = getter.result()
                if status in PENDING_STATUSES and ds is not None:
                    unique = str(ds.get(key, "") or "") if key is not None else ""
                    if unique and unique in seen:
                        continue
                    if unique:
                        seen.add(unique)
                    if wants_retrieve_ae and not self.options.keep_retrieve_ae:
                        ds.RetrieveAETitle = self.base.settings.ae_title
                    unsupported = unsupported or status == Status.PENDING_WARNING
                    sent += 1
                    yield Response(status, ds)
                    continue
                if status in PENDING_STATUSES:
                    continue
                running -= 1  # the remote's final status
                remote_success = remote_success or status == Status.SUCCESS
                if status not in (Status.SUCCESS, Status.CANCEL):
                    log.warning("gateway C-FIND from %s: remote %s answered 0x%04X %s", peer, title, status, comment)
                    if self.options.remote_failure == "fail" and failure is None:
                        failure = Response(status, elements={"ErrorComment": f"{title}: {comment}"[:64]})
        finally:
            for task in remote_tasks:
                if not task.done():
                    task.cancel()
            for task in remote_tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if local_failure is not None and not remote_success and failure is None:
            failure = local_failure  # no remote answered it either: pacskit's own refusal
        if request.cancelled.is_set():
            log.info("gateway C-FIND from %s cancelled after %d answers", peer, sent)
            yield Response(Status.CANCEL)
        elif failure is not None:
            yield failure
        else:
            log.debug("gateway C-FIND %s level from %s: %d answers", level, peer, sent)
            yield Response(Status.SUCCESS)

    async def _local_find(self, request: Request) -> AsyncIterator[Response]:
        """The local query add-in's answers, its generator pulled in the thread pool a batch at a time."""
        generator: Generator[Response, None, None] = self._querier.on_find(request)  # type: ignore[assignment]

        def batch() -> list[Response]:
            out: list[Response] = []
            for response in generator:
                out.append(response)
                if len(out) >= 256 or response.status not in PENDING_STATUSES:
                    break
            return out

        try:
            while True:
                responses = await asyncio.to_thread(batch)
                for response in responses:
                    yield response
                if not responses or responses[-1].status not in PENDING_STATUSES or request.cancelled.is_set():
                    return
        finally:
            await asyncio.to_thread(generator.close)

    async def _remote_find(self, title: str, request: Request, identifier: Dataset,
                           answers: asyncio.Queue[tuple[str, int, Dataset | None, str]]) -> None:
        """Forward the C-FIND to ``title``; every answer and the final status go to ``answers``."""
        sop_class = request.sop_class_uid
        try:
            async with await self.base.dicom_request.associate(title, [RequestedContext(sop_class)]) as assoc:
                ctx = assoc.find_context(sop_class)
                async with _forward_cancel(assoc, ctx, request.cancelled):
                    async for rsp, received in assoc.request(CommandField.C_FIND_RQ, sop_class, identifier,
                                                             context=ctx, Priority=request.command.get("Priority", 0) or 0):
                        ds = received.decode() if received is not None else None
                        answers.put_nowait((title, rsp.status, ds, str(rsp.get("ErrorComment", "") or "")))
        except (NetError, OSError, LookupError) as exc:
            self.base.log.error("gateway: C-FIND to %s failed: %s", title, exc)
            answers.put_nowait((title, Status.UNABLE_TO_PROCESS, None, f"unreachable: {exc}"))

    # ------------------------------------------------------------------ C-MOVE / C-GET

    async def on_move(self, request: Request) -> AsyncIterator[Response]:
        started = time.monotonic()
        peer = request.assoc.remote_ae_title
        destination = str(request.command.get("MoveDestination") or "").strip()
        identifier = await self._identifier(request)
        if isinstance(identifier, Response):
            yield identifier
            return
        direct = _Counts()
        refusal: Response | None = None
        fetch_from: list[str] = []
        for title in self.options.remotes:
            mode = self.options.move_mode
            if mode == "fetch" or (mode == "auto" and destination not in self.options.direct_destinations.get(title, ())):
                fetch_from.append(title)
                continue
            outcome = _Fetched()
            async for response in self._remote_retrieve(title, request, identifier, destination, outcome, direct):
                yield response
            if outcome.unknown_destination and self.options.move_mode == "auto":
                self.base.log.info("gateway: %s does not know %s; fetching through pacskit", title, destination)
                fetch_from.append(title)
                continue
            if outcome.cancelled:
                yield direct.final(cancelled=True)
                return
            if outcome.refusal is not None:
                self.base.log.warning("gateway C-MOVE: %s refused: 0x%04X", title, outcome.refusal.status)
                refusal = refusal or outcome.refusal
        fetched = _Fetched()
        async for response in self._fetch(fetch_from, request, identifier, fetched):
            yield response
        if fetched.cancelled:
            yield direct.final(cancelled=True, extra=fetched)
            return
        fetched.refusal = fetched.refusal or refusal
        if not fetch_from and not self.options.local:
            yield refusal if refusal is not None and direct.attempted == 0 else direct.final(cancelled=False)
            return
        async for response in self._local_retrieve(self._retriever.on_move(request), direct, fetched):
            yield response
        self.base.log.info("gateway C-MOVE from %s to %s done in %.1f s", peer, destination, time.monotonic() - started)

    async def on_get(self, request: Request) -> AsyncIterator[Response]:
        identifier = await self._identifier(request)
        if isinstance(identifier, Response):
            yield identifier
            return
        fetched = _Fetched()
        async for response in self._fetch(list(self.options.remotes), request, identifier, fetched):
            yield response
        if fetched.cancelled:
            yield _Counts().final(cancelled=True, extra=fetched)
            return
        async for response in self._local_retrieve(self._retriever.on_get(request), _Counts(), fetched):
            yield response

    async def _identifier(self, request: Request) -> Dataset | Response:
        try:
            identifier = request.dataset
        except Exception as exc:  # noqa: BLE001 - bytes pydicom cannot decode
            self.base.log.warning("gateway %s from %s: undecodable identifier: %s", request.service,
                                  request.assoc.remote_ae_title, exc)
            return Response(Status.UNABLE_TO_PROCESS, elements={"ErrorComment": "identifier cannot be decoded"})
        if identifier is None:
            return Response(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, elements={"ErrorComment": "no identifier"})
        return identifier

    async def _local_retrieve(self, responses: AsyncIterator[Response], before: _Counts,
                              fetched: _Fetched) -> AsyncIterator[Response]:
        """The local retrieve's responses with the direct moves' counts and the fetch failures added."""
        async for response in responses:
            counts = _Counts.of(response)
            if response.status in PENDING_STATUSES:
                yield Response(response.status, elements=(before + counts).elements(pending=True))
                continue
            if response.status in (Status.MOVE_DESTINATION_UNKNOWN, Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                                   Status.UNABLE_TO_PROCESS) and before.attempted == 0 and fetched.failed == 0:
                yield response  # refused before anything was attempted: relayed as it is
                return
            if (fetched.refusal is not None and counts.total == 0 and before.attempted == 0
                    and fetched.failed == 0 and response.status != Status.CANCEL):
                yield fetched.refusal  # nothing here, and the remote refused: its status, relayed
                return
            failed_uids = [*_failed_uids(response), *fetched.failed_uids]
            total = before + counts
            total.failed += fetched.failed
            total.warning += fetched.warning
            total.failed_uids = [*before.failed_uids, *failed_uids]
            cancelled = response.status == Status.CANCEL
            comment = response.elements.get("ErrorComment")
            if fetched.refusal is not None and total.failed and not comment:
                comment = fetched.refusal.elements.get("ErrorComment")
            yield total.final(cancelled=cancelled, comment=comment)
            return

    async def _fetch(self, titles: list[str], request: Request, identifier: Dataset,
                     fetched: _Fetched) -> AsyncIterator[Response]:
        """Fetch the identifier's instances from each of ``titles`` into the store."""
        if not titles:
            return
        if self.base.store is None:
            fetched.refusal = Response(Status.OUT_OF_RESOURCES_SUBOPS, elements={"ErrorComment": "no data store"})
            return
        for title in titles:
            if self.options.reuse_cached and await self._held_whole(title, request, identifier):
                self.base.log.info("gateway %s: what %s holds of it is here already; not fetched", request.service, title)
                continue
            counts = _Counts()
            destination = self.base.settings.ae_title if self.options.fetch_with == "C-MOVE" else None
            async for response in self._remote_retrieve(title, request, identifier, destination, fetched, counts):
                if response.status in PENDING_STATUSES:
                    # nothing has reached the requestor's destination yet: all of it is still to come
                    expected = counts.remaining + counts.completed + counts.warning
                    yield Response(Status.PENDING, elements=_Counts(remaining=expected).elements(pending=True))
            fetched.failed += counts.failed
            fetched.completed += counts.completed + counts.warning
            fetched.failed_uids.extend(counts.failed_uids)
            if fetched.cancelled:
                return

    async def _held_whole(self, title: str, request: Request, identifier: Dataset) -> bool:
        """The store already holds every instance ``title`` has of the study / series the identifier
        names (one UID at STUDY or SERIES level): the remote's Number of Study / Series Related
        Instances (one C-FIND) against the index's count. Anything else (several UIDs, IMAGE or
        PATIENT level, a remote that does not return the count, an error): ``False``, fetch."""
        from sqlalchemy import select

        from pacskit.store import Series, Study

        level = str(identifier.get("QueryRetrieveLevel", "") or "").upper()
        if level == "STUDY":
            key, count_key, count_column, column = ("StudyInstanceUID", "NumberOfStudyRelatedInstances",
                                                    Study.num_instances, Study.study_instance_uid)
        elif level == "SERIES":
            key, count_key, count_column, column = ("SeriesInstanceUID", "NumberOfSeriesRelatedInstances",
                                                    Series.num_instances, Series.series_instance_uid)
        else:
            return False
        uid = str(identifier.get(key, "") or "")
        if not uid or "\\" in uid or "*" in uid or "?" in uid:
            return False
        store = self.base.store
        assert store is not None

        def held() -> int:
            with store.index.reading() as s:
                return int(s.scalar(select(count_column).where(column == uid)) or 0)

        have = await asyncio.to_thread(held)
        if not have:
            return False
        query = Dataset()
        query.QueryRetrieveLevel = level
        if level == "SERIES":
            query.StudyInstanceUID = identifier.get("StudyInstanceUID", "")
        setattr(query, key, uid)
        setattr(query, count_key, "")
        if level == "SERIES" and not query.StudyInstanceUID:
            return False  # a hierarchical Study Root query at SERIES level needs the study
        try:  # Study Root whatever the request's model: the one every Q/R SCP answers at these levels
            answers = await find_remote(self.base, title, query, STUDY_ROOT_FIND)
        except (RemoteFailed, NetError, OSError, LookupError):
            return False
        counts = [a.get(count_key) for a in answers]
        if len(counts) != 1 or counts[0] in (None, ""):
            return False
        return have >= int(counts[0])

    async def _remote_retrieve(self, title: str, request: Request, identifier: Dataset, destination: str | None,
                               outcome: _Fetched, counts: _Counts) -> AsyncIterator[Response]:
        """One C-MOVE (to ``destination``) or C-GET (``destination`` None: into the store) to ``title``.

        Pending responses are yielded as the remote sends them (its counts, added to ``counts``' earlier
        totals); the final counts go into ``counts``, a refusal or cancel into ``outcome``."""
        log = self.base.log
        service = "C-GET" if destination is None else "C-MOVE"
        if request.service == "C-GET":
            get_class = request.sop_class_uid
        else:
            get_class = _MOVE_TO_GET[request.sop_class_uid]
        sop_class = get_class if service == "C-GET" else _GET_TO_MOVE[get_class]
        contexts = [RequestedContext(sop_class)]
        services = None
        if service == "C-GET":
            from pacskit.client.query import get_contexts

            contexts += get_contexts()
            services = Services()
            services.register("C-STORE", store_handler(self.base, title))
        base = _Counts(completed=counts.completed, failed=counts.failed, warning=counts.warning)
        try:
            assoc = await self.base.dicom_request.associate(title, contexts, services=services)
        except (NetError, OSError, LookupError) as exc:
            log.error("gateway %s: cannot reach %s: %s", request.service, title, exc)
            outcome.refusal = Response(Status.OUT_OF_RESOURCES_SUBOPS,
                                       elements={"ErrorComment": f"cannot reach {title}"[:64]})
            return
        async with assoc:
            try:
                ctx = assoc.find_context(sop_class)
            except NetError as exc:
                log.error("gateway %s: %s: %s", request.service, title, exc)
                outcome.refusal = Response(Status.OUT_OF_RESOURCES_SUBOPS,
                                           elements={"ErrorComment": f"{title} refused {service}"[:64]})
                return
            elements: dict[str, Any] = {"Priority": request.command.get("Priority", 0) or 0}
            command = CommandField.C_GET_RQ
            if destination is not None:
                elements["MoveDestination"] = destination
                command = CommandField.C_MOVE_RQ
            async with _forward_cancel(assoc, ctx, request.cancelled):
                async for rsp, received in assoc.request(command, sop_class, identifier, context=ctx, **elements):
                    now = _Counts.of_command(rsp)
                    if rsp.status in PENDING_STATUSES:
                        if received is not None:
                            received.discard()
                        counts.remaining = now.remaining
                        counts.completed, counts.failed, counts.warning = (
                            base.completed + now.completed, base.failed + now.failed, base.warning + now.warning)
                        yield Response(Status.PENDING, elements=(base + now).elements(pending=True))
                        continue
                    uids: list[str] = []
                    if received is not None:
                        with contextlib.suppress(Exception):
                            uids = _as_list(received.decode().get("FailedSOPInstanceUIDList"))
                    uids = uids or rsp.foreign_uids(_FAILED_SOP_INSTANCE_UID_LIST)  # Orthanc 1.10: in the command
                    comment = str(rsp.get("ErrorComment", "") or "")
                    counts.remaining = 0
                    counts.completed = base.completed + now.completed
                    counts.failed = base.failed + now.failed
                    counts.warning = base.warning + now.warning
                    counts.failed_uids.extend(uids)
                    counts.attempted_add(now)
                    if rsp.status == Status.CANCEL:
                        outcome.cancelled = True
                    elif rsp.status == Status.MOVE_DESTINATION_UNKNOWN:
                        outcome.unknown_destination = True
                        outcome.refusal = Response(rsp.status, elements={"ErrorComment": f"{title}: {comment}"[:64]})
                    elif status_category(rsp.status) == "Failure" and now.total == 0:
                        # refused before any sub-operation (0xA900, 0xC000, 0xA701…): relayed as it is
                        log.warning("gateway %s: %s answered 0x%04X %s", request.service, title, rsp.status, comment)
                        outcome.refusal = Response(rsp.status, elements={"ErrorComment": f"{title}: {comment}"[:64]})
                    log.info("gateway %s via %s: 0x%04X, %d completed, %d failed, %d warning", service, title,
                             rsp.status, now.completed, now.failed, now.warning)


@dataclass(slots=True)
class _Counts:
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    attempted: int = 0

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.warning

    def attempted_add(self, other: _Counts) -> None:
        self.attempted += other.total

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(self.remaining + other.remaining, self.completed + other.completed,
                       self.failed + other.failed, self.warning + other.warning,
                       [*self.failed_uids, *other.failed_uids], self.attempted + other.attempted)

    @classmethod
    def of(cls, response: Response) -> _Counts:
        e = response.elements
        return cls(int(e.get("NumberOfRemainingSuboperations", 0) or 0), int(e.get("NumberOfCompletedSuboperations", 0) or 0),
                   int(e.get("NumberOfFailedSuboperations", 0) or 0), int(e.get("NumberOfWarningSuboperations", 0) or 0),
                   attempted=int(e.get("NumberOfCompletedSuboperations", 0) or 0)
                   + int(e.get("NumberOfFailedSuboperations", 0) or 0) + int(e.get("NumberOfWarningSuboperations", 0) or 0))

    @classmethod
    def of_command(cls, rsp: Any) -> _Counts:
        return cls(int(rsp.get("NumberOfRemainingSuboperations", 0) or 0), int(rsp.get("NumberOfCompletedSuboperations", 0) or 0),
                   int(rsp.get("NumberOfFailedSuboperations", 0) or 0), int(rsp.get("NumberOfWarningSuboperations", 0) or 0))

    def elements(self, *, pending: bool = False) -> dict[str, Any]:
        values = {"NumberOfRemainingSuboperations": self.remaining, "NumberOfCompletedSuboperations": self.completed,
                  "NumberOfFailedSuboperations": self.failed, "NumberOfWarningSuboperations": self.warning}
        if pending and any(v > _US_MAX for v in values.values()):
            return {}
        out = {k: v for k, v in values.items() if v <= _US_MAX}
        if not pending:
            out.pop("NumberOfRemainingSuboperations", None)
        return out

    def final(self, *, cancelled: bool, comment: Any = None, extra: _Fetched | None = None) -> Response:
        if extra is not None:
            self.failed += extra.failed
            self.failed_uids.extend(extra.failed_uids)
        if cancelled:
            status = Status.CANCEL
        elif self.failed == 0 and self.warning == 0:
            status = Status.SUCCESS
        elif self.completed == 0 and self.warning == 0:
            status = Status.OUT_OF_RESOURCES_SUBOPS
        else:
            status = Status.SUBOPS_COMPLETE_WITH_FAILURES
        elements = self.elements()
        if cancelled:
            elements["NumberOfRemainingSuboperations"] = min(self.remaining, _US_MAX)
        if comment and status != Status.SUCCESS:
            elements["ErrorComment"] = str(comment)[:64]
        dataset = None
        if self.failed_uids and status != Status.SUCCESS:
            dataset = Dataset()
            dataset.FailedSOPInstanceUIDList = self.failed_uids
        return Response(status, dataset=dataset, elements=elements)


def _failed_uids(response: Response) -> list[str]:
    ds = response.dataset
    if isinstance(ds, Dataset):
        return _as_list(ds.get("FailedSOPInstanceUIDList"))
    return []


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


@contextlib.asynccontextmanager
async def _forward_cancel(assoc: Any, ctx: Any, cancelled: asyncio.Event) -> AsyncIterator[None]:
    """While the block runs, a C-CANCEL from our requestor is forwarded once for ``assoc``'s request."""
    async def watch() -> None:
        await cancelled.wait()
        with contextlib.suppress(NetError, OSError):
            await assoc.cancel(assoc.last_message_id, ctx)

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

