"""QueryRetrieveScu: C-FIND, C-MOVE and C-GET (PS3.4 Annex C, K) through one API.

Information models: ``"patient"`` (Patient Root), ``"study"`` (Study Root) and ``"worklist"``
(Modality Worklist, where ``level`` does not apply). ``find`` returns typed records
(:class:`PatientRecord`, :class:`StudyRecord`, :class:`SeriesRecord`, :class:`InstanceRecord`,
:class:`WorklistRecord`); each keeps the matched identifier as a pydicom Dataset (``record.dataset``).

Retrieval: ``move(keys, destination="OTHER")`` asks the peer to send to another AE it knows;
``move(keys, into=folder)`` (no destination) moves to *us*: a temporary Storage SCP (pacskit's
:class:`~pacskit.net.Acceptor`) listens under our calling AE title on ``receive_port`` for the
duration of the C-MOVE. The peer must know our AE title at that port (C-MOVE destinations are
configured on the peer; there is no way to tell it a port). ``get(keys, into=folder)`` needs no
configuration on the peer: the instances come back on the same association. ``into`` may also be a
callback taking a :class:`ReceivedInstance` and returning a C-STORE status (``None`` = Success).
Received files are named from a hash of their SOP Instance UID, never from the UID itself.

Cancel: ``limit=N`` on ``find`` sends C-CANCEL after N matches; every call takes
``cancel=asyncio.Event()`` that sends C-CANCEL when set.

Events: ``before-associate`` (:class:`AssociationRequest`), ``before-find`` (:class:`FindRequest`,
edit ``.identifier``; also run before C-MOVE and C-GET), ``match`` (each record as it arrives),
``progress`` (:class:`RetrieveProgress`, each C-MOVE / C-GET response), ``received`` (each
:class:`ReceivedInstance` stored by a move-to-us or get).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacskit.client._scu import Scu, run_sync
from pacskit.client.keys import Keys, apply_keys
from pacskit.dicom.uids import COMMON_STORAGE_SOP_CLASSES
from pacskit.dicom.uids import ALL_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
from pacskit.net import (
    Acceptor,
    Association,
    Command,
    CommandField,
    NetError,
    Request,
    RequestedContext,
    Services,
    SupportedContext,
)
from pacskit.dicom.status import PENDING_STATUSES, Status, status_category

if TYPE_CHECKING:
    from pacskit.net import PresentationContext

__all__ = [
    "GET_COMPRESSED",
    "GET_COMPRESSED_CLASSES",
    "GET_UNCOMPRESSED",
    "FindRequest",
    "FindResult",
    "InstanceRecord",
    "PatientRecord",
    "QueryFailed",
    "QueryRetrieveScu",
    "ReceivedInstance",
    "Record",
    "RetrieveProgress",
    "RetrieveResult",
    "SeriesRecord",
    "StudyRecord",
    "WorklistRecord",
    "get_contexts",
]

FIND = {"patient": "1.2.840.10008.5.1.4.1.2.1.1", "study": "1.2.840.10008.5.1.4.1.2.2.1", "worklist": "1.2.840.10008.5.1.4.31"}
MOVE = {"patient": "1.2.840.10008.5.1.4.1.2.1.2", "study": "1.2.840.10008.5.1.4.1.2.2.2"}
GET = {"patient": "1.2.840.10008.5.1.4.1.2.1.3", "study": "1.2.840.10008.5.1.4.1.2.2.3"}
_FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: Return keys added (empty) to every query at that level unless the caller gives them.
DEFAULT_RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "PatientName", "PatientID"),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
WORKLIST_RETURN_KEYS = {
    "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "", "AccessionNumber": "",
    "RequestedProcedureID": "", "RequestedProcedureDescription": "", "StudyInstanceUID": "",
    "ScheduledProcedureStepSequence": {
        "Modality": "", "ScheduledStationAETitle": "", "ScheduledProcedureStepStartDate": "",
        "ScheduledProcedureStepStartTime": "", "ScheduledProcedureStepID": "",
        "ScheduledProcedureStepDescription": "", "ScheduledPerformingPhysicianName": "",
    },
}


class QueryFailed(NetError):
    """The peer ended a C-FIND / C-MOVE / C-GET with a Failure status."""

    def __init__(self, service: str, status: int, comment: str = "") -> None:
        super().__init__(f"{service} failed with status 0x{status:04X}" + (f": {comment}" if comment else ""))
        self.status = status
        self.comment = comment


# ---------------------------------------------------------------------- records


def _s(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _i(ds: Dataset, keyword: str) -> int | None:
    text = _s(ds, keyword).strip()
    try:
        return int(text) if text else None
    except ValueError:
        return None


@dataclass(slots=True)
class Record:
    """One C-FIND match; ``dataset`` is the identifier as the peer sent it."""

    dataset: Dataset
    level: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()

    def as_dict(self) -> dict[str, Any]:
        """The typed fields (not the dataset), for JSON and CSV output."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "dataset"}


@dataclass(slots=True)
class PatientRecord(Record):
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    level: ClassVar[str] = "PATIENT"

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PatientRecord:
        return cls(ds, _s(ds, "PatientID"), _s(ds, "PatientName"), _s(ds, "PatientBirthDate"), _s(ds, "PatientSex"))


@dataclass(slots=True)
class StudyRecord(Record):
    study_instance_uid: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    description: str = ""
    patient_id: str = ""
    patient_name: str = ""
    modalities: str = ""
    level: ClassVar[str] = "STUDY"

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyRecord:
        return cls(
            ds, _s(ds, "StudyInstanceUID"), _s(ds, "StudyDate"), _s(ds, "StudyTime"), _s(ds, "AccessionNumber"),
            _s(ds, "StudyID"), _s(ds, "StudyDescription"), _s(ds, "PatientID"), _s(ds, "PatientName"),
            _s(ds, "ModalitiesInStudy"),
        )


@dataclass(slots=True)
class SeriesRecord(Record):
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    modality: str = ""
    series_number: int | None = None
    description: str = ""
    level: ClassVar[str] = "SERIES"

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SeriesRecord:
        return cls(
            ds, _s(ds, "SeriesInstanceUID"), _s(ds, "StudyInstanceUID"), _s(ds, "Modality"),
            _i(ds, "SeriesNumber"), _s(ds, "SeriesDescription"),
        )


@dataclass(slots=True)
class InstanceRecord(Record):
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    series_instance_uid: str = ""
    instance_number: int | None = None
    level: ClassVar[str] = "IMAGE"

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceRecord:
        return cls(ds, _s(ds, "SOPInstanceUID"), _s(ds, "SOPClassUID"), _s(ds, "SeriesInstanceUID"), _i(ds, "InstanceNumber"))


@dataclass(slots=True)
class WorklistRecord(Record):
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    modality: str = ""
    station_ae_title: str = ""
    start_date: str = ""
    start_time: str = ""
    step_id: str = ""
    step_description: str = ""
    level: ClassVar[str] = "WORKLIST"

    @classmethod
    def from_dataset(cls, ds: Dataset) -> WorklistRecord:
        seq = ds.get("ScheduledProcedureStepSequence")
        sps = seq[0] if seq else Dataset()
        return cls(
            ds, _s(ds, "PatientID"), _s(ds, "PatientName"), _s(ds, "AccessionNumber"), _s(ds, "RequestedProcedureID"),
            _s(ds, "RequestedProcedureDescription"), _s(sps, "Modality"), _s(sps, "ScheduledStationAETitle"),
            _s(sps, "ScheduledProcedureStepStartDate"), _s(sps, "ScheduledProcedureStepStartTime"),
            _s(sps, "ScheduledProcedureStepID"), _s(sps, "ScheduledProcedureStepDescription"),
        )


_RECORD_TYPES: dict[str, Any] = {
    "PATIENT": PatientRecord, "STUDY": StudyRecord, "SERIES": SeriesRecord, "IMAGE": InstanceRecord, "WORKLIST": WorklistRecord,
}


# ---------------------------------------------------------------------- results and events


@dataclass
class FindRequest:
    """``before-find``: the identifier about to be sent (edit it in place or replace it)."""

    service: str
    model: str
    level: str
    identifier: Dataset


@dataclass
class FindResult:
    """All matches of one C-FIND and its final status (0xFE00 when cancelled)."""

    records: list[Record] = field(default_factory=list)
    status: int = 0
    error_comment: str = ""

    @property
    def datasets(self) -> list[Dataset]:
        return [r.dataset for r in self.records]

    @property
    def cancelled(self) -> bool:
        return self.status == Status.CANCEL


@dataclass(slots=True)
class ReceivedInstance:
    """An instance that arrived during a C-MOVE to us or a C-GET. ``path`` is a Part 10 file: a
    temporary one inside a callback (deleted after it returns unless moved), or the final file."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path

    @property
    def dataset(self) -> Dataset:
        """Decoded with pydicom on access (reads the whole file)."""
        from pydicom import dcmread

        return dcmread(self.path)


@dataclass(slots=True)
class RetrieveProgress:
    """``progress``: the sub-operation counts of one C-MOVE / C-GET response."""

    status: int
    remaining: int | None
    completed: int
    failed: int
    warning: int


@dataclass
class RetrieveResult:
    """Outcome of a C-MOVE or C-GET: final status, sub-operation counts, what failed, what we received."""

    status: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error_comment: str = ""
    failed_instances: list[str] = field(default_factory=list)
    received: list[ReceivedInstance] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return status_category(self.status) in ("Success", "Warning") and not self.failed

    @property
    def cancelled(self) -> bool:
        return self.status == Status.CANCEL


#: Gets each instance; returns the C-STORE status to answer (``None`` = Success). A plain function runs
#: in a worker thread, an ``async def`` on the event loop.
ReceiveCallback = Callable[[ReceivedInstance], Any]
Destination = Union[str, "os.PathLike[str]", ReceiveCallback]


def _file_name(sop_instance_uid: str) -> str:
    # Never a path from an untrusted UID: a hash of it (stable, so a repeated retrieve overwrites).
    return hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()[:32] + ".dcm"


class _Receiver:
    """The C-STORE handler for instances coming to us (C-GET sub-operations, C-MOVE to us)."""

    def __init__(self, into: Destination, result: RetrieveResult, scu: QueryRetrieveScu) -> None:
        self.callback: ReceiveCallback | None = None
        self.folder: Path | None = None
        if callable(into):
            self.callback = into
        else:
            self.folder = Path(into)
            self.folder.mkdir(parents=True, exist_ok=True)
        self.result = result
        self.scu = scu

    async def handle(self, request: Request) -> int:
        """Runs on the event loop (events are delivered there); a plain callback runs in a thread."""
        received = request.received
        if received is None or received.path is None:
            return Status.UNABLE_TO_PROCESS
        inst = ReceivedInstance(request.sop_class_uid, request.sop_instance_uid, received.transfer_syntax, Path(received.path))
        status: int | None = 0
        if self.callback is not None:
            if inspect.iscoroutinefunction(self.callback):
                status = await self.callback(inst)
            else:
                status = await asyncio.get_running_loop().run_in_executor(None, self.callback, inst)
        else:
            assert self.folder is not None
            inst.path = Path(received.move_to(self.folder / _file_name(inst.sop_instance_uid)))  # a rename
            self.result.received.append(inst)
        if self.scu.events.wants("received"):
            self.scu.events.notify("received", inst)
        return 0 if status is None else int(status)

    def services(self) -> Services:
        services = Services()
        services.register("C-STORE", self.handle)
        services.register("C-ECHO", lambda request: 0)
        return services

    def config(self, base: Any) -> Any:
        if self.folder is not None:  # receive straight into the folder: the final rename is atomic
            return dataclasses.replace(base, temp_dir=str(self.folder))
        return base


#: The uncompressed syntaxes a C-GET proposes for every storage SOP class, in one context each.
GET_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Compressed transfer syntaxes a C-GET proposes (store as received), most common first: an acceptor
#: picks one transfer syntax per context, so each gets a context of its own.
GET_COMPRESSED = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
)
#: Image storage SOP classes that get the compressed contexts when the caller names no SOP classes.
GET_COMPRESSED_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
)
#: Storage classes that come right after those when the 127 contexts cannot hold every common one.
_GET_LIKELY_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",  # SR
    "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.5.1.4.1.1.88.67",  # SR, KO, dose
    "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.11.2", "1.2.840.10008.5.1.4.1.1.104.1",  # GSPS, CSPS, PDF
    "1.2.840.10008.5.1.4.1.1.20", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.12.1",  # NM, PET, XA
    "1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1",  # RF, enh. CT, MR
    "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.3",  # DX, MG, IO
    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",  # MF SC
    "1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.5.1.4.1.1.13.1.3", "1.2.840.10008.5.1.4.1.1.66",  # MF SC, tomo, raw
    "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.2",  # SEG, RT
    "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.77.1.4",  # RT, VL photo
    "1.2.840.10008.5.1.4.1.1.77.1.1", "1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.840.10008.5.1.4.1.1.9.1.1",  # VL, WSI, ECG
)
_DEFAULT_COMPRESSED_PER_CLASS = 6  # of GET_COMPRESSED, for each of GET_COMPRESSED_CLASSES by default
_MAX_STORAGE_CONTEXTS = 127  # 128 in an A-ASSOCIATE-RQ, one of them for the C-GET itself


def get_contexts(
    sop_classes: list[str] | None = None,
    *,
    require_uncompressed: bool = False,
    transfer_syntaxes: tuple[str, ...] | None = None,
) -> list[RequestedContext]:
    """The storage contexts (we as SCP) a C-GET proposes, at most 127.

    * ``transfer_syntaxes`` given: one context per SOP class with exactly these.
    * ``require_uncompressed``: one context per SOP class with :data:`GET_UNCOMPRESSED`.
    * otherwise (store as received): one uncompressed context per SOP class, then one context per
      (SOP class, compressed syntax) of :data:`GET_COMPRESSED`. An acceptor picks one transfer
      syntax per context, so this is the only way a peer that cannot transcode finds the syntax it
      holds. With ``sop_classes`` given, every compressed syntax is proposed for each, as far as the
      127 contexts go. Without, the first six compressed syntaxes are proposed for the image classes
      of :data:`GET_COMPRESSED_CLASSES` and the uncompressed contexts fill the rest (79) with the common
      storage classes, the likely ones (images, SR, KO, presentation states, PDF, RT, SEG) first: name
      the SOP classes you expect (``sop_classes``) when that is not enough.
    """
    def scp(uid: str, syntaxes: tuple[str, ...]) -> RequestedContext:
        return RequestedContext(uid, syntaxes, scu_role=False, scp_role=True)

    if transfer_syntaxes is not None or require_uncompressed:
        syntaxes = transfer_syntaxes if transfer_syntaxes is not None else GET_UNCOMPRESSED
        return [scp(uid, syntaxes) for uid in (sop_classes or list(COMMON_STORAGE_SOP_CLASSES))[:_MAX_STORAGE_CONTEXTS]]
    if sop_classes:
        classes = list(dict.fromkeys(sop_classes))[:_MAX_STORAGE_CONTEXTS]
        compressed = [(uid, ts) for ts in GET_COMPRESSED for uid in classes]
    else:
        compressed = [(uid, ts) for ts in GET_COMPRESSED[:_DEFAULT_COMPRESSED_PER_CLASS] for uid in GET_COMPRESSED_CLASSES]
        room = _MAX_STORAGE_CONTEXTS - len(compressed)
        classes = list(dict.fromkeys([*GET_COMPRESSED_CLASSES, *_GET_LIKELY_CLASSES, *COMMON_STORAGE_SOP_CLASSES]))[:room]
    contexts = [scp(uid, GET_UNCOMPRESSED) for uid in classes]
    contexts += [scp(uid, (ts,)) for uid, ts in compressed[: _MAX_STORAGE_CONTEXTS - len(contexts)]]
    return contexts


class QueryRetrieveScu(Scu):
    """Query/Retrieve and Modality Worklist SCU for one remote AE.

    ``model``: ``"study"`` (default), ``"patient"`` or ``"worklist"``; ``receive_port`` and
    ``receive_host`` (default: all interfaces, since the peer is usually another machine): where the
    temporary Storage SCP of a move-to-us listens (see the module docs).
    """

    EVENTS = ("before-associate", "before-find", "match", "progress", "received")

    def __init__(self, remote: Any, *, model: str = "study", receive_port: int | None = None, receive_host: str = "", **kwargs: Any) -> None:
        super().__init__(remote, **kwargs)
        if model not in FIND:
            raise ValueError(f"unknown information model {model!r}: patient, study or worklist")
        self.model = model
        self.receive_port = receive_port
        self.receive_host = receive_host

    # ------------------------------------------------------------------ identifiers

    def identifier(self, keys: Keys, level: str | None, service: str = "C-FIND") -> Dataset:
        """The identifier sent for ``keys`` at ``level`` (default return keys added for C-FIND)."""
        ds = Dataset()
        if self.model == "worklist":
            apply_keys(ds, WORKLIST_RETURN_KEYS)
            return apply_keys(ds, keys)
        level = (level or "STUDY").upper()
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}: one of {', '.join(LEVELS)}")
        if self.model == "patient" and level != "PATIENT":
            apply_keys(ds, {"PatientID": ""})
        ds.QueryRetrieveLevel = level
        if service == "C-FIND":
            apply_keys(ds, dict.fromkeys(DEFAULT_RETURN_KEYS[level], ""))
        apply_keys(ds, keys)
        ds.QueryRetrieveLevel = level
        return ds

    async def _prepared(self, service: str, keys: Keys, level: str | None) -> Dataset:
        identifier = self.identifier(keys, level, service)
        request = FindRequest(service, self.model, "WORKLIST" if self.model == "worklist" else str(identifier.QueryRetrieveLevel), identifier)
        await self.events.intervene("before-find", request)
        return request.identifier

    # ------------------------------------------------------------------ C-FIND

    async def iter_find(
        self, keys: Keys = None, *, level: str | None = None, limit: int | None = None, cancel: asyncio.Event | None = None
    ) -> AsyncIterator[Record]:
        """Yield records as they arrive. Raises :class:`QueryFailed` on a Failure status; a cancelled
        query (``limit`` / ``cancel``) just ends.

        To stop early, iterate inside ``async with contextlib.aclosing(scu.iter_find(...)) as it:``:
        closing it sends C-CANCEL, waits for the peer's final answer and releases the association.
        (An abandoned iterator is only finalised when the event loop shuts down, by an abort.)"""
        async with contextlib.aclosing(self._find(keys, level, limit, cancel)) as items:  # closed with us
            async for item in items:
                if isinstance(item, Record):
                    yield item
                elif status_category(item.status) == "Failure":
                    raise QueryFailed("C-FIND", item.status, item.error_comment)

    async def find(self, keys: Keys = None, *, level: str | None = None, limit: int | None = None, cancel: asyncio.Event | None = None) -> FindResult:
        """All matches and the final status (a Failure status is returned, not raised)."""
        result = FindResult()
        async with contextlib.aclosing(self._find(keys, level, limit, cancel)) as items:
            async for item in items:
                if isinstance(item, Record):
                    result.records.append(item)
                else:
                    result.status, result.error_comment = item.status, item.error_comment
        return result

    def find_sync(self, keys: Keys = None, *, level: str | None = None, limit: int | None = None) -> FindResult:
        """:meth:`find` for plain scripts."""
        return run_sync(self.find(keys, level=level, limit=limit))

    async def _find(self, keys: Keys, level: str | None, limit: int | None, cancel: asyncio.Event | None) -> AsyncIterator[Any]:
        sop_class = FIND[self.model]
        identifier = await self._prepared("C-FIND", keys, level)
        record_type = _RECORD_TYPES["WORKLIST" if self.model == "worklist" else str(identifier.QueryRetrieveLevel)]
        async with await self.associate([RequestedContext(sop_class)]) as assoc:
            ctx = assoc.find_context(sop_class)
            matches = 0
            finished = False
            async with _cancel_watch(assoc, ctx, cancel) as watch:
                responses = assoc.request(CommandField.C_FIND_RQ, sop_class, identifier, context=ctx, Priority=0)
                try:
                    async for rsp, received in responses:
                        if rsp.status not in PENDING_STATUSES:
                            finished = True
                            if received is not None:
                                received.discard()
                            yield _Final(rsp.status, str(rsp.get("ErrorComment", "") or ""))
                            return
                        if received is None:
                            continue
                        if watch.sent:
                            received.discard()
                            continue  # answers still in flight after our C-CANCEL
                        record = record_type.from_dataset(received.decode())
                        matches += 1
                        if self.events.wants("match"):
                            self.events.notify("match", record)
                        yield record
                        if limit is not None and matches >= limit:
                            await watch.cancel_now()
                finally:
                    if not finished and assoc.is_established and not (assoc.is_aborted or assoc.is_released):
                        # The caller stopped early (break out of iter_find): cancel, and let the
                        # peer's final answer arrive before the association is released.
                        with contextlib.suppress(NetError):
                            await watch.cancel_now()
                            async for rsp, received in responses:
                                if received is not None:
                                    received.discard()
                    await responses.aclose()

    # ------------------------------------------------------------------ C-MOVE

    async def move(
        self,
        keys: Keys = None,
        *,
        level: str | None = None,
        destination: str | None = None,
        into: Destination | None = None,
        cancel: asyncio.Event | None = None,
    ) -> RetrieveResult:
        """C-MOVE the matches to ``destination`` (an AE the peer knows), or to us when it is omitted:
        then ``into`` (folder or callback) receives them on ``receive_port``."""
        if self.model == "worklist":
            raise ValueError("C-MOVE is not defined for the worklist model")
        sop_class = MOVE[self.model]
        identifier = await self._prepared("C-MOVE", keys, level)
        result = RetrieveResult()
        acceptor: Acceptor | None = None
        if destination is None:
            if into is None:
                raise ValueError("move to ourselves needs into= (a folder or a callback)")
            if self.receive_port is None:
                raise ValueError("move to ourselves needs receive_port= (the port the peer knows for our AE title)")
            receiver = _Receiver(into, result, self)
            acceptor = Acceptor(
                self.calling_ae,
                [SupportedContext("*", ALL_TRANSFER_SYNTAXES), SupportedContext(VERIFICATION_SOP_CLASS)],
                receiver.services(),
                config=receiver.config(self.config),
                bus=self.bus,
            )
            await acceptor.start(self.receive_host, self.receive_port)
            destination = self.calling_ae
        try:
            async with await self.associate([RequestedContext(sop_class)]) as assoc:
                ctx = assoc.find_context(sop_class)
                await self._retrieve(assoc, ctx, CommandField.C_MOVE_RQ, sop_class, identifier, result, cancel, MoveDestination=destination)
        finally:
            if acceptor is not None:
                await acceptor.close(grace=5.0)
        return result

    def move_sync(self, keys: Keys = None, **kwargs: Any) -> RetrieveResult:
        """:meth:`move` for plain scripts."""
        return run_sync(self.move(keys, **kwargs))

    # ------------------------------------------------------------------ C-GET

    async def get(
        self,
        keys: Keys = None,
        *,
        level: str | None = None,
        into: Destination,
        sop_classes: list[str] | None = None,
        transfer_syntaxes: tuple[str, ...] | None = None,
        require_uncompressed: bool = False,
        cancel: asyncio.Event | None = None,
    ) -> RetrieveResult:
        """C-GET the matches into ``into`` (folder or callback); they are stored as received.

        We propose to be Storage SCP (the sub-operations' C-STOREs come to us) for ``sop_classes``
        (default: the common storage SOP classes). By default the compressed transfer syntaxes are
        proposed too, each in a context of its own, so a peer that holds JPEG 2000 and cannot
        transcode still delivers it (see :func:`get_contexts` for what fits into the 127
        contexts). ``require_uncompressed=True`` proposes Explicit and Implicit VR Little Endian
        only: the peer must transcode or fail those sub-operations. ``transfer_syntaxes`` proposes
        exactly these, in one context per SOP class (the acceptor picks one of them)."""
        if self.model == "worklist":
            raise ValueError("C-GET is not defined for the worklist model")
        sop_class = GET[self.model]
        identifier = await self._prepared("C-GET", keys, level)
        result = RetrieveResult()
        receiver = _Receiver(into, result, self)
        contexts = [RequestedContext(sop_class)] + get_contexts(
            sop_classes, require_uncompressed=require_uncompressed, transfer_syntaxes=transfer_syntaxes
        )
        assoc = await self.associate(contexts, services=receiver.services(), config=receiver.config(self.config))
        async with assoc:
            ctx = assoc.find_context(sop_class)
            await self._retrieve(assoc, ctx, CommandField.C_GET_RQ, sop_class, identifier, result, cancel)
        return result

    def get_sync(self, keys: Keys = None, **kwargs: Any) -> RetrieveResult:
        """:meth:`get` for plain scripts."""
        return run_sync(self.get(keys, **kwargs))

    async def _retrieve(
        self, assoc: Association, ctx: PresentationContext, field_: CommandField, sop_class: str,
        identifier: Dataset, result: RetrieveResult, cancel: asyncio.Event | None, **elements: Any,
    ) -> None:
        async with _cancel_watch(assoc, ctx, cancel):
            async for rsp, received in assoc.request(field_, sop_class, identifier, context=ctx, Priority=0, **elements):
                counts = _counts(rsp)
                result.completed, result.failed, result.warning = counts[1], counts[2], counts[3]
                if self.events.wants("progress"):
                    self.events.notify("progress", RetrieveProgress(rsp.status, *counts))
                if rsp.status not in PENDING_STATUSES:
                    result.status = rsp.status
                    result.error_comment = str(rsp.get("ErrorComment", "") or "")
                    if received is not None:
                        with contextlib.suppress(Exception):
                            ds = received.decode()
                            result.failed_instances = [str(u) for u in _as_list(ds.get("FailedSOPInstanceUIDList"))]
                    if not result.failed_instances:  # Orthanc 1.10 puts the list into the command set
                        result.failed_instances = rsp.foreign_uids(_FAILED_SOP_INSTANCE_UID_LIST)
                if received is not None:
                    received.discard()


@dataclass(slots=True)
class _Final:
    status: int
    error_comment: str


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def _counts(rsp: Command) -> tuple[int | None, int, int, int]:
    remaining = rsp.get("NumberOfRemainingSuboperations")
    return (
        int(remaining) if remaining is not None else None,
        int(rsp.get("NumberOfCompletedSuboperations", 0) or 0),
        int(rsp.get("NumberOfFailedSuboperations", 0) or 0),
        int(rsp.get("NumberOfWarningSuboperations", 0) or 0),
    )


class _CancelWatch:
    """Sends C-CANCEL for the association's outstanding request once (on request or when ``event`` is set)."""

    def __init__(self, assoc: Association, ctx: PresentationContext) -> None:
        self.assoc = assoc
        self.ctx = ctx
        self.sent = False

    async def cancel_now(self) -> None:
        if not self.sent:
            self.sent = True
            await self.assoc.cancel(self.assoc.last_message_id, self.ctx)


@contextlib.asynccontextmanager
async def _cancel_watch(assoc: Association, ctx: PresentationContext, event: asyncio.Event | None) -> AsyncIterator[_CancelWatch]:
    watch = _CancelWatch(assoc, ctx)
    task: asyncio.Task[None] | None = None
    if event is not None:

        async def wait() -> None:
            await event.wait()
            with contextlib.suppress(NetError):
                await watch.cancel_now()

        task = asyncio.get_running_loop().create_task(wait())
    try:
        yield watch
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

