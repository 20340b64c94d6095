"""Print SCP add-in: a DICOM "paper printer" (PS3.4 Annex H) that renders each printed film box to a
PDF page in a spool folder, and optionally archives it as Encapsulated PDF in the store.

SOP classes (docs/addins/print.md has the conformance statement):

- Basic Grayscale Print Management Meta (1.2.840.10008.5.1.1.9) and, unless ``color = false``, Basic
  Color Print Management Meta (1.2.840.10008.5.1.1.18): Printer N-GET, Basic Film Session N-CREATE /
  N-SET / N-ACTION / N-DELETE, Basic Film Box N-CREATE / N-SET / N-ACTION / N-DELETE, Basic Grayscale /
  Color Image Box N-SET; Printer N-EVENT-REPORTs on that context when the printer's status changes;
- Print Job (1.2.840.10008.5.1.1.14): N-GET, and an N-EVENT-REPORT (DONE or FAILURE) for each job on
  that context when the SCU negotiated it;
- Basic Annotation Box (1.2.840.10008.5.1.1.15): N-SET of the text of the annotation boxes a film box
  gets when its N-CREATE has an Annotation Display Format ID;
- Presentation LUT (1.2.840.10008.5.1.1.23): N-CREATE (IDENTITY, LIN OD or a table) and N-DELETE; film
  sessions, film boxes and image boxes reference it;
- Printer Configuration Retrieval (1.2.840.10008.5.1.1.16.376): N-GET of what the printer takes (media
  and film sizes, magnification types, bit depths), so an SCU can say what a refused value could be.

A film session lives as long as its association (one per association); images are kept in memory
until their session ends, within ``max_session_bytes`` per session and ``max_memory_bytes`` for all.
Statuses are those of PS3.4 H.4 and PS3.7 C (the table is in docs/addins/print.md); every refusal is
logged with its reason and the association goes on.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacskit.dicom.printing import (
    BASIC_ANNOTATION_BOX,
    BASIC_COLOR_IMAGE_BOX,
    BASIC_COLOR_PRINT_META,
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_IMAGE_BOX,
    BASIC_GRAYSCALE_PRINT_META,
    FILM_SIZES,
    PRESENTATION_LUT,
    PRINT_JOB,
    PRINTER,
    PRINTER_CONFIGURATION,
    PRINTER_CONFIGURATION_INSTANCE,
    PRINTER_INSTANCE,
    PrintError,
    PrintStatus,
)
from pacskit.dicom.status import Status
from pacskit.net import CommandField, PresentationContext
from pacskit.net import events as ev
from pacskit.services import AddIn, AddInOptions, BaseServices, Handler, Permission, Request, Response, SupportedContext

from .render import render_pdf
from .session import (
    FilmBox,
    MemoryBudget,
    PrinterLimits,
    PrintState,
    film_box_dataset,
    session_dataset,
    supported_film_sizes,
)

__all__ = ["PrintAddIn", "PrintJob", "PrintOptions"]

NO_SUCH_ACTION = Status.NO_SUCH_ACTION_TYPE
NO_SUCH_SOP_CLASS = Status.NO_SUCH_SOP_CLASS
NO_SUCH_INSTANCE = Status.NO_SUCH_SOP_INSTANCE
NO_FILM_BOXES = PrintStatus.NO_FILM_BOXES
SESSION_QUEUE_FULL = PrintStatus.SESSION_QUEUE_FULL
FILM_BOX_QUEUE_FULL = PrintStatus.FILM_BOX_QUEUE_FULL
SESSION_EMPTY_PAGE = PrintStatus.SESSION_EMPTY_PAGE
FILM_BOX_EMPTY_PAGE = PrintStatus.FILM_BOX_EMPTY_PAGE

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


class PrintOptions(AddInOptions):
    enabled: bool = Field(False, description="a PACS is not a printer until asked: enable in [addins.print]")
    spool_dir: str = Field("print-spool", description="folder of the PDFs (relative: inside the server's data folder)")
    printer_name: str = Field("pacskit", description="Printer Name (2110,0030) given by Printer N-GET and in job reports")
    color: bool = Field(True, description="also accept the Basic Color Print Management Meta SOP Class")
    film_sizes: list[str] = Field(
        default_factory=lambda: ["A4", "A3", "8INX10IN", "10INX12IN", "11INX14IN", "14INX14IN", "14INX17IN",
                                 "24CMX24CM", "24CMX30CM"],
        description=f"Film Size IDs accepted (of {', '.join(FILM_SIZES)})")
    default_film_size: str = Field("A4", description="film size of a Film Box N-CREATE without Film Size ID")
    medium_types: list[str] = Field(default_factory=lambda: ["PAPER", "CLEAR FILM", "BLUE FILM"],
                                    description="Medium Types accepted; the first is the default")
    film_destinations: list[str] = Field(default_factory=lambda: ["MAGAZINE", "PROCESSOR"],
                                         description="Film Destinations accepted; the first is the default")
    max_copies: int = Field(99, ge=1, le=9999, description="largest Number of Copies")
    max_film_boxes: int = Field(16, ge=1, le=1000, description="film boxes per film session (more: 0x0213)")
    max_image_boxes: int = Field(64, ge=1, le=1024, description="image boxes per film box (a larger display format: 0x0106)")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="pixels per image (more: 0xC605)")
    max_session_bytes: int = Field(256 * 2**20, ge=1, description="image memory per film session (more: 0xC605)")
    max_memory_bytes: int = Field(1024 * 2**20, ge=1, description="image memory of all film sessions (more: 0xC605)")
    dpi: int = Field(150, ge=36, le=600, description="printer resolution of the PDF pages' images (memory: a 14INX17IN film at 600 dpi is 86 Mpixels)")
    margin_mm: float = Field(5.0, ge=0, le=50, description="unprinted margin round the film")
    min_density: int = Field(20, ge=0, description="Min Density (hundredths of OD): white")
    max_density: int = Field(320, ge=1, description="Max Density (hundredths of OD): black")
    annotation_boxes: int = Field(2, ge=0, le=8, description="annotation boxes of a film box with an Annotation "
                                  "Display Format ID (odd positions at the top, even at the bottom)")
    archive: bool = Field(False, description="also store every printed PDF as an Encapsulated PDF instance")
    archive_patient_id: str = Field("", description="Patient ID of archived PDFs (empty: PRINT-<calling AE>)")

    @field_validator("film_sizes")
    @classmethod
    def _sizes(cls, value: list[str]) -> list[str]:
        return list(supported_film_sizes(value))

    @field_validator("medium_types", "film_destinations")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one value")
        return [v.upper() for v in value]


@dataclass(slots=True)
class PrintJob:
    """One N-ACTION print: what the Print Job N-GET answers."""

    uid: str
    calling_ae: str
    label: str
    priority: str
    created: dt.datetime
    pages: int
    status: str = "PENDING"  # PENDING, PRINTING, DONE, FAILURE
    info: str = ""
    path: str = ""
    archived_uid: str = ""


@dataclass(slots=True)
class _Association:
    state: PrintState
    meta_context: PresentationContext | None = None
    job_context: PresentationContext | None = None
    assoc: Any = None


class PrintAddIn(AddIn):
    name = "print"
    description = "Print SCP: Basic Grayscale/Color Print Management rendered to PDF (spool folder, optional archive)"
    Options = PrintOptions
    permissions = (
        Permission("print", BASIC_GRAYSCALE_PRINT_META),
        Permission("print", BASIC_COLOR_PRINT_META),
        Permission("print", PRINT_JOB),
        Permission("print", BASIC_ANNOTATION_BOX),
        Permission("print", PRINTER_CONFIGURATION),
        Permission("print", PRESENTATION_LUT),
    )
    options: PrintOptions

    def __init__(self, options: AddInOptions, base: BaseServices) -> None:
        super().__init__(options, base)
        import importlib.util

        missing = [m for m in ("reportlab", "numpy", "PIL") if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"the print add-in needs {', '.join(missing)}: pip install 'pacskit[print]'")
        o = self.options
        if o.default_film_size.upper() not in o.film_sizes:
            raise ValueError(f"default_film_size {o.default_film_size!r} is not in film_sizes")
        self.limits = PrinterLimits(
            medium_types=tuple(o.medium_types), film_destinations=tuple(o.film_destinations),
            film_sizes=tuple(o.film_sizes), default_film_size=o.default_film_size.upper(), max_copies=o.max_copies,
            max_film_boxes=o.max_film_boxes, max_image_boxes=o.max_image_boxes, max_image_pixels=o.max_image_pixels,
            max_session_bytes=o.max_session_bytes, min_density=o.min_density, max_density=o.max_density, dpi=o.dpi,
            margin_mm=o.margin_mm, annotation_boxes=o.annotation_boxes)
        self.budget = MemoryBudget(o.max_memory_bytes)
        spool = Path(o.spool_dir)
        self.spool_dir = spool if spool.is_absolute() else Path(base.data_dir) / spool
        self._assocs: dict[int, _Association] = {}
        self._lock = threading.Lock()
        #: the last 1000 print jobs, newest last
        self.jobs: collections.OrderedDict[str, PrintJob] = collections.OrderedDict()
        self.printer_status = ("NORMAL", "NORMAL")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ add-in hooks

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        metas = [BASIC_GRAYSCALE_PRINT_META] + ([BASIC_COLOR_PRINT_META] if self.options.color else [])
        extra = [PRINT_JOB, BASIC_ANNOTATION_BOX, PRINTER_CONFIGURATION, PRESENTATION_LUT]
        return [SupportedContext(uid) for uid in [*metas, *extra]]

    def handlers(self) -> Mapping[str, Handler]:
        return {"N-CREATE": self.on_create, "N-SET": self.on_set, "N-GET": self.on_get, "N-ACTION": self.on_action,
                "N-DELETE": self.on_delete}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.base.events.subscribe(ev.CONNECTION_CLOSED, self._closed)

    async def stop(self) -> None:
        self.base.events.unsubscribe(ev.CONNECTION_CLOSED, self._closed)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except BaseException:  # noqa: S110 - cancelled or already logged
                pass

    def _closed(self, event: ev.SpyEvent) -> None:
        assoc = event.assoc
        if assoc is None:
            return
        with self._lock:
            entry = self._assocs.pop(assoc.id, None)
        if entry is not None:
            entry.state.release()

    # ------------------------------------------------------------------ dispatch

    def _entry(self, request: Request) -> _Association:
        assoc = request.assoc
        with self._lock:
            entry = self._assocs.get(assoc.id)
            if entry is None:
                entry = self._assocs[assoc.id] = _Association(PrintState(self.limits, self.budget), assoc=assoc)
        if request.context.abstract_syntax in (BASIC_GRAYSCALE_PRINT_META, BASIC_COLOR_PRINT_META):
            entry.meta_context = request.context
        if entry.job_context is None:
            for pc in assoc.contexts.values():
                if pc.accepted and pc.abstract_syntax == PRINT_JOB:
                    entry.job_context = pc
        return entry

    def _allowed(self, request: Request, classes: Mapping[str, set[str]]) -> str:
        """The request's SOP class if the context may carry it for this service; else PrintError."""
        meta = request.context.abstract_syntax
        sop_class = request.sop_class_uid
        if sop_class not in classes.get(meta, set()):
            raise PrintError(NO_SUCH_SOP_CLASS, f"{request.service} of SOP class {sop_class or '(none)'} "
                                                f"is not served on the {_META_NAMES.get(meta, meta)} context")
        return sop_class

    async def _run(self, request: Request, body: Callable[[_Association], Response]) -> Response:
        """``body`` in the association's thread pool (pixel decoding, PDF writing), PrintErrors turned
        into their status with Error Comment and Attribute Identifier List, and logged."""
        entry = self._entry(request)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(request.assoc.executor, body, entry)
        except PrintError as exc:
            return self._refused(request, exc)

    def _refused(self, request: Request, exc: PrintError) -> Response:
        self.base.log.warning("%s %s %s from %s: 0x%04X %s", request.service, _class_name(request.sop_class_uid),
                              request.sop_instance_uid, request.assoc.remote_ae_title, exc.status, exc.comment)
        elements: dict[str, Any] = {"ErrorComment": exc.comment[:64]}
        if exc.tag is not None and request.service in ("N-SET", "N-CREATE"):
            elements["AttributeIdentifierList"] = [exc.tag]
        return Response(exc.status, elements=elements)

    # ------------------------------------------------------------------ N-CREATE

    async def on_create(self, request: Request) -> Response:
        def body(entry: _Association) -> Response:
            sop_class = self._allowed(request, _CREATE)
            ds = request.dataset or Dataset()
            uid = request.sop_instance_uid or None
            state = entry.state
            if sop_class == PRESENTATION_LUT:
                lut_uid, lut = state.create_lut(uid, ds)
                self.base.log.info("presentation LUT %s: %s", lut_uid, lut.shape)
                return Response(Status.SUCCESS, ds, {"AffectedSOPInstanceUID": lut_uid})
            if sop_class == BASIC_FILM_SESSION:
                session, warning = state.create_session(uid, ds, color=request.context.abstract_syntax == BASIC_COLOR_PRINT_META)
                self.base.log.info("film session %s created by %s (%s)", session.uid, request.assoc.remote_ae_title,
                                   "color" if session.color else "grayscale")
                return Response(warning, session_dataset(session), {"AffectedSOPInstanceUID": session.uid})
            film_box, warning = state.create_film_box(uid, ds)
            assert state.session is not None
            self.base.log.info("film box %s %s %s %s", film_box.uid, film_box.display.text, film_box.film_size,
                               film_box.orientation)
            return Response(warning, film_box_dataset(film_box, state.session), {"AffectedSOPInstanceUID": film_box.uid})

        return await self._run(request, body)

    # ------------------------------------------------------------------ N-SET

    async def on_set(self, request: Request) -> Response:
        def body(entry: _Association) -> Response:
            sop_class = self._allowed(request, _SET)
            ds = request.dataset
            if ds is None:
                raise PrintError(Status.MISSING_ATTRIBUTE, "N-SET without a modification list")
            uid = request.sop_instance_uid
            state = entry.state
            if sop_class == BASIC_FILM_SESSION:
                session, warning = state.set_session(uid, ds)
                return Response(warning, session_dataset(session))
            if sop_class == BASIC_FILM_BOX:
                _, warning = state.set_film_box(uid, ds)
                return Response(warning)
            if sop_class == BASIC_ANNOTATION_BOX:
                state.set_annotation_box(uid, ds)
                return Response(Status.SUCCESS)
            box, warning = state.set_image_box(uid, sop_class, ds)
            if box.pixels is not None:
                self.base.log.debug("image box %s at %d: %s", uid, box.position, box.pixels.shape)
            return Response(warning)

        return await self._run(request, body)

    # ------------------------------------------------------------------ N-GET

    async def on_get(self, request: Request) -> Response:
        def body(entry: _Association) -> Response:
            sop_class = self._allowed(request, _GET)
            wanted = [int(t) for t in request.command.get("AttributeIdentifierList") or []]
            if sop_class == PRINTER:
                if request.sop_instance_uid != PRINTER_INSTANCE:
                    raise PrintError(NO_SUCH_INSTANCE, f"the printer is {PRINTER_INSTANCE}")
                ds = self.printer_dataset()
            elif sop_class == PRINTER_CONFIGURATION:
                if request.sop_instance_uid != PRINTER_CONFIGURATION_INSTANCE:
                    raise PrintError(NO_SUCH_INSTANCE, f"the printer configuration is {PRINTER_CONFIGURATION_INSTANCE}")
                ds = self.configuration_dataset()
            else:
                job = self.jobs.get(request.sop_instance_uid)
                if job is None:
                    raise PrintError(NO_SUCH_INSTANCE, f"no print job {request.sop_instance_uid}")
                ds = self.job_dataset(job)
            if wanted:
                ds = _only(ds, wanted)
            return Response(Status.SUCCESS, ds)

        return await self._run(request, body)

    def printer_dataset(self) -> Dataset:
        status, info = self._check_printer()
        ds = Dataset()
        ds.PrinterStatus = status
        ds.PrinterStatusInfo = info
        ds.PrinterName = self.options.printer_name[:64]
        ds.Manufacturer = "pacskit"
        ds.ManufacturerModelName = "PDF print SCP"
        ds.DeviceSerialNumber = ""
        ds.SoftwareVersions = _version()
        ds.DateOfLastCalibration = ""
        ds.TimeOfLastCalibration = ""
        return ds

    def configuration_dataset(self) -> Dataset:
        """Printer Configuration Retrieval N-GET (PS3.3 C.13.x Printer Configuration Module): one item
        with the SOP classes served, memory, bit depths, the media installed (every medium type with
        every film size) and the magnification types."""
        o = self.options
        item = Dataset()
        metas = [BASIC_GRAYSCALE_PRINT_META] + ([BASIC_COLOR_PRINT_META] if o.color else [])
        item.SOPClassesSupported = [*metas, PRINT_JOB, BASIC_ANNOTATION_BOX]
        item.MaximumMemoryAllocation = min(o.max_session_bytes // 1024, 2**32 - 1)
        item.MemoryBitDepth = 16
        item.PrintingBitDepth = 8
        media: list[Dataset] = []
        for medium in o.medium_types:
            for size in o.film_sizes:
                entry = Dataset()
                entry.ItemNumber = len(media) + 1
                entry.MediumType = medium
                entry.FilmSizeID = size
                entry.MinDensity = o.min_density
                entry.MaxDensity = o.max_density
                media.append(entry)
        item.MediaInstalledSequence = DicomSequence(media)
        item.DefaultMagnificationType = "BILINEAR"
        item.OtherMagnificationTypesAvailable = ["REPLICATE", "CUBIC", "NONE"]
        item.DefaultPrinterResolutionID = "STANDARD"
        item.MaximumCollatedFilms = o.max_film_boxes
        ds = Dataset()
        ds.PrinterConfigurationSequence = DicomSequence([item])
        return ds

    def _check_printer(self) -> tuple[str, str]:
        """FAILURE / PRINTER DOWN while the spool folder cannot be written (the last print failed on
        it), WARNING / SUPPLY LOW when it has less than 100 MB free, else NORMAL."""
        status, info = self.printer_status
        if status == "FAILURE":
            return status, info
        try:
            free = shutil.disk_usage(self.spool_dir).free
        except OSError:
            return "FAILURE", "PRINTER DOWN"
        if free < 100 * 2**20:
            return "WARNING", "SUPPLY LOW"
        return "NORMAL", "NORMAL"

    def job_dataset(self, job: PrintJob) -> Dataset:
        ds = Dataset()
        ds.ExecutionStatus = job.status
        ds.ExecutionStatusInfo = job.info or "NORMAL"
        ds.PrintPriority = job.priority
        ds.CreationDate = job.created.strftime("%Y%m%d")
        ds.CreationTime = job.created.strftime("%H%M%S")
        ds.PrinterName = self.options.printer_name[:64]
        ds.Originator = job.calling_ae
        return ds

    # ------------------------------------------------------------------ N-ACTION (print)

    async def on_action(self, request: Request) -> Response:
        action = int(request.command.get("ActionTypeID", 0) or 0)
        job_holder: list[PrintJob] = []

        def body(entry: _Association) -> Response:
            sop_class = self._allowed(request, _ACTION)
            if action != 1:
                raise PrintError(NO_SUCH_ACTION, f"Action Type ID {action}: only 1 (print)")
            state = entry.state
            uid = request.sop_instance_uid
            if sop_class == BASIC_FILM_SESSION:
                session = state.get_session(uid)
                film_boxes = list(session.film_boxes.values())
                if not film_boxes:
                    raise PrintError(NO_FILM_BOXES, "the film session has no film boxes")
                warning = SESSION_EMPTY_PAGE if all(fb.empty for fb in film_boxes) else 0
                queue_full = SESSION_QUEUE_FULL
            else:
                film_boxes = [state.film_box(uid)]
                session = state.get_session(state.session.uid if state.session is not None else "")
                warning = FILM_BOX_EMPTY_PAGE if film_boxes[0].empty else 0
                queue_full = FILM_BOX_QUEUE_FULL
            job = self._print(request, session.attrs, film_boxes, queue_full, session.lut)
            job_holder.append(job)
            for film_box in film_boxes:
                film_box.printed = True
            ref = Dataset()
            ref.ReferencedSOPClassUID = PRINT_JOB
            ref.ReferencedSOPInstanceUID = job.uid
            ds = Dataset()
            ds.ReferencedPrintJobSequence = DicomSequence([ref])
            return Response(warning, ds, {"ActionTypeID": action})

        response = await self._run(request, body)
        if job_holder:
            # queued behind the N-ACTION response (the engine sends in order): the SCU learns the job
            # UID first, then its state
            entry = self._entry(request)
            job = job_holder[0]
            if entry.job_context is not None:
                self._spawn(self._report_job(request.assoc, entry.job_context, job))
        return response

    def _print(self, request: Request, session_attrs: Mapping[str, Any], film_boxes: list[FilmBox],
               queue_full: int, session_lut: Any = None) -> PrintJob:
        now = dt.datetime.now()
        job = PrintJob(generate_uid(), request.assoc.remote_ae_title, str(session_attrs.get("FilmSessionLabel", "")),
                       str(session_attrs.get("PrintPriority", "MED")), now, len(film_boxes), status="PRINTING")
        name = f"{now:%Y%m%d-%H%M%S}-{_safe(job.calling_ae)}-{job.uid}.pdf"
        target = self.spool_dir / name
        try:
            size = render_pdf(film_boxes, target, dpi=self.options.dpi, margin_mm=self.options.margin_mm,
                              title=job.label or f"print job {job.uid}", author=job.calling_ae,
                              copies=int(session_attrs.get("NumberOfCopies", 1)), session_lut=session_lut)
        except OSError as exc:
            # Printer Status Info / Execution Status Info are CS defined terms (PS3.3 C.13.9.1)
            job.status, job.info = "FAILURE", "PRINTER DOWN"
            self._remember(job)
            self.base.log.error("print job %s from %s failed: %s", job.uid, job.calling_ae, exc)
            self._set_printer_status("FAILURE", job.info)
            raise PrintError(queue_full, f"unable to create the print job: {exc.strerror or exc}") from None
        job.status, job.info, job.path = "DONE", "NORMAL", str(target)
        if self.printer_status[0] != "NORMAL":
            self._set_printer_status("NORMAL", "NORMAL")
        self.base.log.info("print job %s from %s: %d page(s), %d bytes -> %s", job.uid, job.calling_ae, len(film_boxes),
                           size, target)
        if self.options.archive:
            job.archived_uid = self._archive(job, target)
        self._remember(job)
        return job

    def _remember(self, job: PrintJob) -> None:
        with self._lock:
            self.jobs[job.uid] = job
            while len(self.jobs) > 1000:
                self.jobs.popitem(last=False)

    def _archive(self, job: PrintJob, pdf: Path) -> str:
        """Store the PDF as an Encapsulated PDF instance; a failure is logged, the print stands."""
        store = self.base.store
        if store is None:
            self.base.log.error("print job %s: archive is on but the server has no store", job.uid)
            return ""
        try:
            ds = encapsulated_pdf(pdf.read_bytes(), job, self.options.archive_patient_id or f"PRINT-{job.calling_ae}")
            fd, tmp = tempfile.mkstemp(prefix="print-", suffix=".dcm", dir=store.temp_dir)
            os.close(fd)
            ds.save_as(tmp, enforce_file_format=True)
            result = store.ingest(tmp, source_ae=job.calling_ae)
            self.base.log.info("print job %s archived as %s (%s)", job.uid, ds.SOPInstanceUID, result.status)
            return str(ds.SOPInstanceUID)
        except Exception as exc:
            self.base.log.error("print job %s: archiving failed: %s", job.uid, exc)
            return ""

    # ------------------------------------------------------------------ N-DELETE

    async def on_delete(self, request: Request) -> Response:
        def body(entry: _Association) -> Response:
            sop_class = self._allowed(request, _DELETE)
            if sop_class == PRESENTATION_LUT:
                entry.state.delete_lut(request.sop_instance_uid)
            elif sop_class == BASIC_FILM_SESSION:
                entry.state.delete_session(request.sop_instance_uid)
            else:
                entry.state.delete_film_box(request.sop_instance_uid)
            return Response(Status.SUCCESS)

        return await self._run(request, body)

    # ------------------------------------------------------------------ N-EVENT-REPORTs we send

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_job(self, assoc: Any, context: PresentationContext, job: PrintJob) -> None:
        event = 3 if job.status == "DONE" else 4
        ds = Dataset()
        ds.ExecutionStatusInfo = job.info or "NORMAL"
        ds.FilmSessionLabel = job.label
        ds.PrinterName = self.options.printer_name[:64]
        await self._send_report(assoc, context, PRINT_JOB, job.uid, event, ds)

    def _set_printer_status(self, status: str, info: str) -> None:
        """Change the printer's status and tell every association with a print context (Printer
        N-EVENT-REPORT: 1 NORMAL, 3 FAILURE; WARNING (SUPPLY LOW) is only computed for N-GET)."""
        if self.printer_status == (status, info):
            return
        self.printer_status = (status, info)
        self.base.log.log(30 if status != "NORMAL" else 20, "printer status %s (%s)", status, info)
        loop = self._loop
        if loop is None:
            return
        event = {"NORMAL": 1, "WARNING": 2, "FAILURE": 3}[status]
        with self._lock:
            targets = [(e.assoc, e.meta_context) for e in self._assocs.values() if e.meta_context is not None]
        for assoc, context in targets:
            ds = Dataset()
            if status != "NORMAL":
                ds.PrinterStatusInfo = info
            ds.PrinterName = self.options.printer_name[:64]
            loop.call_soon_threadsafe(self._spawn, self._send_report(assoc, context, PRINTER, PRINTER_INSTANCE, event, ds))

    async def _send_report(self, assoc: Any, context: PresentationContext, sop_class: str, uid: str, event: int,
                           ds: Dataset) -> None:
        if not assoc.is_open:
            return
        try:
            rsp, _ = await assoc.n_request(CommandField.N_EVENT_REPORT_RQ, sop_class, ds, context=context,
                                           AffectedSOPInstanceUID=uid, EventTypeID=event)
            if rsp.status != 0:
                self.base.log.info("N-EVENT-REPORT %s %d to %s answered 0x%04X", _class_name(sop_class), event,
                                   assoc.remote_ae_title, rsp.status)
        except Exception as exc:  # the SCU may have released meanwhile: the report is informative only
            self.base.log.info("N-EVENT-REPORT %s %d to %s not delivered: %s", _class_name(sop_class), event,
                               assoc.remote_ae_title, exc)


# ---------------------------------------------------------------------- tables and helpers

_META_NAMES = {BASIC_GRAYSCALE_PRINT_META: "Basic Grayscale Print Management Meta",
               BASIC_COLOR_PRINT_META: "Basic Color Print Management Meta",
               PRINT_JOB: "Print Job", BASIC_ANNOTATION_BOX: "Basic Annotation Box",
               PRINTER_CONFIGURATION: "Printer Configuration Retrieval", PRESENTATION_LUT: "Presentation LUT"}
_CLASS_NAMES = {BASIC_FILM_SESSION: "Film Session", BASIC_FILM_BOX: "Film Box",
                BASIC_GRAYSCALE_IMAGE_BOX: "Grayscale Image Box", BASIC_COLOR_IMAGE_BOX: "Color Image Box",
                PRINTER: "Printer", PRINT_JOB: "Print Job", BASIC_ANNOTATION_BOX: "Annotation Box"}
_GRAY, _COLOR = BASIC_GRAYSCALE_PRINT_META, BASIC_COLOR_PRINT_META
_CREATE = {_GRAY: {BASIC_FILM_SESSION, BASIC_FILM_BOX}, _COLOR: {BASIC_FILM_SESSION, BASIC_FILM_BOX},
           PRESENTATION_LUT: {PRESENTATION_LUT}}
_SET = {_GRAY: {BASIC_FILM_SESSION, BASIC_FILM_BOX, BASIC_GRAYSCALE_IMAGE_BOX},
        _COLOR: {BASIC_FILM_SESSION, BASIC_FILM_BOX, BASIC_COLOR_IMAGE_BOX},
        BASIC_ANNOTATION_BOX: {BASIC_ANNOTATION_BOX}}
_GET = {_GRAY: {PRINTER}, _COLOR: {PRINTER}, PRINT_JOB: {PRINT_JOB}, PRINTER_CONFIGURATION: {PRINTER_CONFIGURATION}}
_ACTION = {_GRAY: {BASIC_FILM_SESSION, BASIC_FILM_BOX}, _COLOR: {BASIC_FILM_SESSION, BASIC_FILM_BOX}}
_DELETE = {_GRAY: {BASIC_FILM_SESSION, BASIC_FILM_BOX}, _COLOR: {BASIC_FILM_SESSION, BASIC_FILM_BOX},
           PRESENTATION_LUT: {PRESENTATION_LUT}}


def _class_name(uid: str) -> str:
    return _CLASS_NAMES.get(uid, uid)


def _only(ds: Dataset, tags: list[int]) -> Dataset:
    out = Dataset()
    for tag in tags:
        if tag in ds:
            out[tag] = ds[tag]
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text.strip()) or "SCU"


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"pacskit {version('pacskit')}"
    except Exception:
        return "pacskit"


def encapsulated_pdf(pdf: bytes, job: PrintJob, patient_id: str) -> Dataset:
    """An Encapsulated PDF instance (PS3.3 A.45.1) of a print job: one study and series per job."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = job.calling_ae
    ds.PatientID = patient_id[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.ContentDate = ds.AcquisitionDateTime = job.created.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = job.created.strftime("%H%M%S")
    ds.AcquisitionDateTime = job.created.strftime("%Y%m%d%H%M%S")
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.StudyDescription = "Printed films"
    ds.SeriesDescription = job.label or "print job"
    ds.Modality = "DOC"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "SYN"
    ds.Manufacturer = "pacskit"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = (job.label or f"Print job {job.uid}")[:64]
    ds.ConceptNameCodeSequence = DicomSequence([])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) & 1 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
