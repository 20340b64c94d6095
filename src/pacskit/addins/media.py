"""Media Creation Management add-in: the SCP of PS3.4 Annex S (SOP class 1.2.840.10008.5.1.1.33).

An SCU (a modality, a workstation, ``pacskit media create``) asks for interchange media (CD, DVD, a
USB image) holding instances the archive has:

1. **N-CREATE** a Media Creation Request with the Referenced SOP Sequence (each item a stored
   instance and its Requested Media Application Profile) and the optional label, File-set ID/UID,
   Allow Media Splitting...; the request is written to the queue folder (``<data_dir>/media/queue``)
   and is ``IDLE``;
2. **N-ACTION** type 1 (Initiate Media Creation) with Number of Copies and Request Priority queues it
   (``PENDING``); the builder takes requests by priority, builds the file-set and its image
   (:mod:`pacskit.media`) and hands it to the burner (``burner``: ``folder`` by default, ``optical``,
   or a third-party robot; docs/media-burners.md);
3. **N-GET** answers Execution Status (IDLE, PENDING, CREATING, DONE, FAILURE), Execution Status
   Info, Total Number of Pieces of Media Created, Failed SOP Sequence and Referenced Storage Media
   Sequence, with the request's attributes;
4. **N-ACTION** type 2 (Cancel Media Creation) stops and deletes a request not yet completed.

Statuses (PS3.4 S.3.2, PS3.7 C):

========  ==================================================================================
0x0000    success
0x0001    warning (N-CREATE): Requested optional Attributes are not supported — Include Non-DICOM
          Objects other than NO, FOR_PATIENT, FOR_PHYSICIAN (the viewer is what the media get)
0x0106    invalid attribute value (N-CREATE): a Requested Media Application Profile this SCP does not
          write, different profiles in one request, Allow Media Splitting not YES/NO, an item without
          valid Referenced SOP Class / Instance UIDs (Attribute Identifier List names the attribute)
0x0111    duplicate SOP instance (N-CREATE of a request UID that exists)
0x0117    invalid SOP instance UID
0x0120    missing attribute (N-CREATE without Referenced SOP Sequence)
0x0121    missing attribute value (empty Referenced SOP Sequence)
0x0213    resource limitation: more than ``max_references`` instances in one request
0x0112    no such SOP instance (N-ACTION, N-GET of an unknown request)
0x0115    invalid argument value (N-ACTION): Number of Copies outside 1..``max_copies``, Request
          Priority not HIGH/MED/LOW
0x0123    no such action (Action Type ID other than 1 and 2)
0xA510    an Initiate Media Creation action has already been received for this SOP Instance
0xC201    cancel: media creation request already completed (DONE or FAILURE)
0xC202    cancel: already in progress and cannot be interrupted (a disc is being written)
0x0110    processing failure: no data store
========  ==================================================================================

The instances are taken from the local archive when the request runs; those it lacks are first asked
of the AEs of ``retrieve_from`` (C-FIND by SOP Instance UID, then C-MOVE to this server or C-GET:
``retrieve_with``, through :mod:`pacskit.addins.fetching`). One still missing
fails the request (Execution Status FAILURE, Execution Status Info ``NO_SUCH_INSTANCE``, the instance
in the Failed SOP Sequence with Failure Reason 0x0112). Requests survive restarts; one that a crash
interrupted is built again (docs/media.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacskit.media.burners import make_burner
from pacskit.media.label import barcode_problem
from pacskit.media.profiles import DEFAULT_PROFILE, PROFILES, UnknownProfile, get_profile
from pacskit.media.queue import (
    MediaQueue,
    MediaRequest,
    PRIORITIES,
    QueueError,
    Reference,
    archive_executor,
)
from pacskit.services import AddIn, AddInOptions, BaseServices, Handler, Permission, Request, Response, SupportedContext

MEDIA_CREATION_MANAGEMENT = "1.2.840.10008.5.1.1.33"
ACTION_INITIATE = 1
ACTION_CANCEL = 2

_TAG_REFERENCED_SOP_SEQUENCE = 0x00081199
_TAG_PROFILE = 0x2200000C
_TAG_SPLITTING = 0x22000007
_TAG_COPIES = 0x20000010
_TAG_PRIORITY = 0x22000020


class MediaCreationOptions(AddInOptions):
    timeout: float | None = Field(60.0, gt=0, description="seconds a handler may take (a cancel waits for the build to stop)")
    queue_dir: str = Field("media/queue", description="the request queue, relative to the data folder")
    output_dir: str = Field("media/out", description="where the folder burner puts the media, relative to the data folder")
    burner: str = Field("folder", description="folder, optical, a pacskit.burners entry point, or module:Class")
    burner_options: dict[str, Any] = Field(default_factory=dict, description="options of the burner")
    format: str = Field("iso", description="iso, zip or folder (the optical burner takes iso only)")
    default_profile: str = Field(DEFAULT_PROFILE, description="profile of items without Requested Media Application Profile")
    max_references: int = Field(100000, ge=1, description="most instances in one request")
    max_copies: int = Field(100, ge=1, description="most copies of one request")
    poll_interval: float = Field(5.0, gt=0, description="seconds between looks at the queue for requests other worker processes recorded")
    retrieve_from: list[str] = Field(
        default_factory=list, description="AE titles (registry) asked, in order, for referenced instances the "
        "archive lacks: C-FIND at IMAGE level, then C-GET or C-MOVE to this server (retrieve_with)")
    retrieve_with: Literal["C-GET", "C-MOVE"] = Field(
        "C-MOVE", description="how missing instances are retrieved: C-MOVE to this server (the remote must know "
        "its AE title) or C-GET on the association (no registration at the remote needed)")
    retrieve_timeout: float = Field(600.0, gt=0, description="seconds the retrieval of one request may take")


class _Refused(Exception):
    def __init__(self, status: int, comment: str, tag: int | None = None) -> None:
        super().__init__(comment)
        self.status, self.comment, self.tag = status, comment, tag


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _valid_uid(uid: str) -> bool:
    from pacskit.store import is_valid_uid

    return bool(is_valid_uid(uid))


class MediaCreationAddIn(AddIn):
    name = "media"
    description = "Media Creation Management SCP (N-CREATE, N-ACTION, N-GET): DICOM CDs, DVDs and USB images"
    Options = MediaCreationOptions
    permissions = (Permission("media", MEDIA_CREATION_MANAGEMENT),)
    options: MediaCreationOptions

    def __init__(self, options: AddInOptions, base: BaseServices) -> None:
        super().__init__(options, base)
        self.queue: MediaQueue | None = None
        self._task: asyncio.Task[None] | None = None
        opts = self.options
        if opts.format not in ("iso", "zip", "folder"):
            raise ValueError(f"[addins.media] format must be iso, zip or folder, not {opts.format!r}")
        get_profile(opts.default_profile)
        burner_options = dict(opts.burner_options)
        if opts.burner == "folder":
            burner_options.setdefault("path", str(self._path(opts.output_dir)))
            burner_options.setdefault("format", opts.format)
        self.burner = make_burner(opts.burner, burner_options)
        if opts.format not in getattr(self.burner, "formats", (opts.format,)):
            raise ValueError(f"[addins.media] the {opts.burner} burner does not take the {opts.format} format")

    def _path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else Path(self.base.data_dir) / p

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(MEDIA_CREATION_MANAGEMENT)]

    def handlers(self) -> Mapping[str, Handler]:
        return {"N-CREATE": self.on_create, "N-ACTION": self.on_action, "N-GET": self.on_get}

    async def start(self) -> None:
        if self.base.store is None:
            self.base.log.warning("no data store: every media creation request will be refused")
            return
        fetch = self._fetch if self.options.retrieve_from else None
        executor = archive_executor(self.base.store, self.burner, self.options.format, self.base.log, fetch)
        self._loop = asyncio.get_running_loop()
        self.queue = MediaQueue(self._path(self.options.queue_dir), executor, log=self.base.log,
                                poll_interval=self.options.poll_interval)
        self._task = asyncio.create_task(self.queue.run(), name="media-creation-builder")

    async def stop(self) -> None:
        if self.queue is not None:
            self.queue.stop()  # a build in progress stops at its next check and is queued again
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------------ retrieval of missing instances

    def _fetch(self, refs: list[Reference]) -> None:
        """Runs in the builder's thread: the retrieval on the server's loop, waited for."""
        future = asyncio.run_coroutine_threadsafe(self._retrieve(refs), self._loop)
        future.result(self.options.retrieve_timeout)

    async def _retrieve(self, refs: list[Reference]) -> None:
        """Ask each ``retrieve_from`` AE in turn for the instances still missing: C-FIND (Study Root,
        IMAGE level, by SOP Instance UID: the peer must accept a query without the upper keys, as
        Orthanc and dcm4chee do) for their study and series, then one C-GET or C-MOVE per series into
        the archive (:func:`pacskit.addins.fetching.fetch`)."""
        from pacskit.addins.fetching import STUDY_ROOT_FIND, fetch
        from pacskit.net import RequestedContext

        wanted = {r.sop_instance_uid for r in refs}
        for title in self.options.retrieve_from:
            if not wanted:
                return
            try:
                located: dict[tuple[str, str], list[str]] = {}
                async with await self.base.dicom_request.associate(title, [RequestedContext(STUDY_ROOT_FIND)]) as assoc:
                    for uid in sorted(wanted):
                        query = Dataset()
                        query.QueryRetrieveLevel = "IMAGE"
                        query.SOPInstanceUID = uid
                        query.StudyInstanceUID = ""
                        query.SeriesInstanceUID = ""
                        async for status, ident in assoc.find(STUDY_ROOT_FIND, query):
                            if status in (0xFF00, 0xFF01) and ident is not None and ident.get("StudyInstanceUID"):
                                key = (str(ident.StudyInstanceUID), str(ident.get("SeriesInstanceUID", "")))
                                located.setdefault(key, []).append(uid)
                for (study, series), uids in located.items():
                    ident = Dataset()
                    ident.QueryRetrieveLevel = "IMAGE"
                    ident.StudyInstanceUID = study
                    ident.SeriesInstanceUID = series
                    ident.SOPInstanceUID = uids
                    result = await fetch(self.base, title, ident, via=self.options.retrieve_with)
                    self.base.log.info("retrieved %d instances of series %s from %s by %s (status 0x%04X)", len(uids),
                                       series, title, self.options.retrieve_with, result.status)
                    if result.status == 0x0000:
                        wanted.difference_update(uids)
            except Exception as exc:  # noqa: BLE001 - the next AE may have them
                self.base.log.warning("retrieving from %s failed: %s", title, exc)

    # ------------------------------------------------------------------ helpers

    def _refused(self, request: Request, exc: _Refused) -> Response:
        self.base.log.warning("%s %s from %s refused (0x%04X): %s", request.service, request.sop_instance_uid or "-",
                              request.assoc.remote_ae_title, exc.status, exc.comment)
        elements: dict[str, Any] = {"ErrorComment": exc.comment[:64]}
        if exc.tag is not None:
            elements["AttributeIdentifierList"] = [exc.tag]
        return Response(exc.status, elements=elements)

    async def _in_thread(self, request: Request, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(request.assoc.executor, fn, *args)

    # ------------------------------------------------------------------ N-CREATE

    def _parse_create(self, ds: Dataset | None, uid: str, calling_ae: str) -> tuple[MediaRequest, list[Reference], bool]:
        if ds is None or "ReferencedSOPSequence" not in ds:
            raise _Refused(0x0120, "Referenced SOP Sequence is missing", _TAG_REFERENCED_SOP_SEQUENCE)
        items = ds.ReferencedSOPSequence
        if not items:
            raise _Refused(0x0121, "Referenced SOP Sequence is empty", _TAG_REFERENCED_SOP_SEQUENCE)
        if len(items) > self.options.max_references:
            raise _Refused(0x0213, f"more than {self.options.max_references} instances in one request")
        refs: list[Reference] = []
        profiles: set[str] = set()
        for n, item in enumerate(items, 1):
            cls, inst = _text(item, "ReferencedSOPClassUID"), _text(item, "ReferencedSOPInstanceUID")
            if not _valid_uid(cls) or not _valid_uid(inst):
                raise _Refused(0x0106, f"item {n}: invalid Referenced SOP Class/Instance UID",
                               _TAG_REFERENCED_SOP_SEQUENCE)
            profile = _text(item, "RequestedMediaApplicationProfile") or self.options.default_profile
            try:
                profiles.add(get_profile(profile).id)
            except UnknownProfile:
                raise _Refused(0x0106, f"profile {profile[:24]} not supported", _TAG_PROFILE) from None
            refs.append(Reference(cls, inst))
        if len(profiles) > 1:
            raise _Refused(0x0106, "one Requested Media Application Profile per request", _TAG_PROFILE)
        splitting = _text(ds, "AllowMediaSplitting").upper() or "YES"
        if splitting not in ("YES", "NO"):
            raise _Refused(0x0106, "Allow Media Splitting must be YES or NO", _TAG_SPLITTING)
        fileset_uid = _text(ds, "StorageMediaFileSetUID")
        if fileset_uid and not _valid_uid(fileset_uid):
            raise _Refused(0x0106, "invalid Storage Media File-Set UID", 0x00880140)
        barcode, symbology = _text(ds, "BarcodeValue"), _text(ds, "BarcodeSymbology")
        if barcode or symbology:
            problem = barcode_problem(barcode, symbology)
            if problem:  # refused now, not found out after the instances were gathered
                raise _Refused(0x0106, problem[:64], 0x22000006 if "symbology" in problem else 0x22000005)
        non_dicom = _text(ds, "IncludeNonDICOMObjects").upper() or "NO"
        display_app = _text(ds, "IncludeDisplayApplication").upper() or "NO"
        req = MediaRequest(
            uid=uid, profile=profiles.pop(), label=_text(ds, "LabelText"),
            label_from_instances=_text(ds, "LabelUsingInformationExtractedFromInstances").upper() == "YES",
            fileset_id=_text(ds, "StorageMediaFileSetID"), fileset_uid=fileset_uid,
            allow_split=splitting == "YES", allow_lossy=_text(ds, "AllowLossyCompression").upper() == "YES",
            include_non_dicom=non_dicom, include_display_application=display_app,
            preserve_instances=_text(ds, "PreserveCompositeInstancesAfterMediaCreation"),
            disposition=_text(ds, "MediaDisposition"), barcode_value=_text(ds, "BarcodeValue"),
            barcode_symbology=_text(ds, "BarcodeSymbology"), label_style=_text(ds, "LabelStyleSelection"),
            calling_ae=calling_ae,
        )
        # the web viewer is the display application and the non-DICOM rendering the media can carry
        unsupported = non_dicom not in ("NO", "FOR_PATIENT", "FOR_PHYSICIAN")
        return req, refs, unsupported

    async def on_create(self, request: Request) -> Response:
        if self.queue is None:
            return Response(0x0110, elements={"ErrorComment": "no data store configured"})
        uid = request.sop_instance_uid or generate_uid()
        try:
            if not _valid_uid(uid):
                raise _Refused(0x0117, "invalid SOP Instance UID")
            ds = await self._in_thread(request, lambda: request.dataset)
            req, refs, unsupported = self._parse_create(ds, uid, request.assoc.remote_ae_title)
            try:
                await self._in_thread(request, self.queue.create, req, refs)
            except QueueError as exc:
                raise _Refused(0x0111, str(exc)[:64]) from None
        except _Refused as exc:
            return self._refused(request, exc)
        self.base.log.info("media creation request %s from %s: %d instances, %s", uid, request.assoc.remote_ae_title,
                           len(refs), req.profile)
        if unsupported:
            return Response(0x0001, elements={"AffectedSOPInstanceUID": uid,
                                              "ErrorComment": f"Include Non-DICOM Objects {req.include_non_dicom[:20]} not supported"})
        return Response(0x0000, elements={"AffectedSOPInstanceUID": uid})

    # ------------------------------------------------------------------ N-ACTION

    async def on_action(self, request: Request) -> Response:
        if self.queue is None:
            return Response(0x0110, elements={"ErrorComment": "no data store configured"})
        uid = request.sop_instance_uid
        action = int(request.command.get("ActionTypeID", 0) or 0)
        try:
            if action == ACTION_INITIATE:
                ds = await self._in_thread(request, lambda: request.dataset)
                copies, priority = self._initiate_arguments(ds)
                await self._in_thread(request, lambda: self.queue.initiate(uid, copies=copies, priority=priority))
                self.base.log.info("media creation request %s initiated by %s", uid, request.assoc.remote_ae_title)
            elif action == ACTION_CANCEL:
                wait = max(1.0, (self.options.timeout or 60.0) - 5.0)
                await self._in_thread(request, lambda: self.queue.cancel(uid, wait=wait))
                self.base.log.info("media creation request %s cancelled by %s", uid, request.assoc.remote_ae_title)
            else:
                raise _Refused(0x0123, f"no action type {action}")
        except QueueError as exc:
            status = {QueueError.NOT_FOUND: 0x0112, QueueError.ALREADY_INITIATED: 0xA510,
                      QueueError.ALREADY_COMPLETED: 0xC201, QueueError.IN_PROGRESS: 0xC202}[exc.reason]
            return self._refused(request, _Refused(status, str(exc)))
        except _Refused as exc:
            return self._refused(request, exc)
        return Response(0x0000, elements={"ActionTypeID": action})

    def _initiate_arguments(self, ds: Dataset | None) -> tuple[int | None, str | None]:
        copies: int | None = None
        priority: str | None = None
        if ds is None:
            return None, None
        if ds.get("NumberOfCopies") not in (None, ""):
            try:
                copies = int(ds.NumberOfCopies)
            except (TypeError, ValueError):
                copies = -1
            if not 1 <= copies <= self.options.max_copies:
                raise _Refused(0x0115, f"Number of Copies must be 1..{self.options.max_copies}", _TAG_COPIES)
        text = _text(ds, "RequestPriority").upper()
        if text:
            if text not in PRIORITIES:
                raise _Refused(0x0115, "Request Priority must be HIGH, MED or LOW", _TAG_PRIORITY)
            priority = text
        return copies, priority

    # ------------------------------------------------------------------ N-GET

    async def on_get(self, request: Request) -> Response:
        if self.queue is None:
            return Response(0x0110, elements={"ErrorComment": "no data store configured"})
        uid = request.sop_instance_uid
        req = await self._in_thread(request, self.queue.get, uid)
        if req is None:
            return self._refused(request, _Refused(0x0112, f"no media creation request {uid}"[:64]))
        ds = status_dataset(req)
        wanted = request.command.get("AttributeIdentifierList")
        if wanted:
            tags = [int(t) for t in (wanted if isinstance(wanted, (list, tuple)) else [wanted])]
            keep = Dataset()
            for tag in tags:
                if tag in ds:
                    keep[tag] = ds[tag]
            ds = keep
        return Response(0x0000, dataset=ds, elements={"AffectedSOPInstanceUID": uid})

    # ------------------------------------------------------------------ management

    def admin_router(self) -> Any | None:
        """``/requests`` (GET: every request with its state) and ``/requests/{uid}``."""
        if self.queue is None:
            return None
        from fastapi import APIRouter, HTTPException

        queue = self.queue
        router = APIRouter(tags=["media"])

        @router.get("/requests")
        def list_requests() -> list[dict[str, Any]]:
            return [r.to_json() for r in queue.requests()]

        @router.get("/requests/{uid}")
        def get_request(uid: str) -> dict[str, Any]:
            req = queue.get(uid)
            if req is None:
                raise HTTPException(status_code=404, detail="no such media creation request")
            return req.to_json()

        return router


def status_dataset(req: MediaRequest) -> Dataset:
    """The N-GET attribute list of a request (PS3.4 S.3.2.4, PS3.3 C.22.1)."""
    ds = Dataset()
    ds.SOPClassUID = MEDIA_CREATION_MANAGEMENT
    ds.SOPInstanceUID = req.uid
    ds.ExecutionStatus = req.state
    ds.ExecutionStatusInfo = req.info
    ds.TotalNumberOfPiecesOfMediaCreated = req.media_count
    ds.NumberOfCopies = req.copies
    ds.RequestPriority = req.priority
    ds.AllowMediaSplitting = "YES" if req.allow_split else "NO"
    ds.AllowLossyCompression = "YES" if req.allow_lossy else "NO"
    ds.IncludeNonDICOMObjects = req.include_non_dicom
    ds.IncludeDisplayApplication = req.include_display_application
    ds.LabelUsingInformationExtractedFromInstances = "YES" if req.label_from_instances else "NO"
    if req.label:
        ds.LabelText = req.label
    if req.fileset_id:
        ds.StorageMediaFileSetID = req.fileset_id[:16]
    if req.fileset_uid:
        ds.StorageMediaFileSetUID = req.fileset_uid
    failed = []
    for cls, inst, reason in req.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        item.FailureReason = int(reason)
        failed.append(item)
    ds.FailedSOPSequence = DicomSequence(failed)
    media = []
    for fid, fuid in req.volumes:
        item = Dataset()
        item.StorageMediaFileSetID = fid[:16]
        if fuid:
            item.StorageMediaFileSetUID = fuid
        media.append(item)
    ds.ReferencedStorageMediaSequence = DicomSequence(media)
    return ds


__all__ = ["MEDIA_CREATION_MANAGEMENT", "MediaCreationAddIn", "MediaCreationOptions", "PROFILES", "status_dataset"]
