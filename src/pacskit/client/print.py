"""PrintScu: the Print Management SCU (PS3.4 Annex H), Basic Grayscale and Basic Color, on
:class:`~pacskit.client.nservices.NServiceScu`.

The low-level calls map one-to-one to the DIMSE-N operations of the standard and return
:class:`~pacskit.client.nservices.NResult` (statuses are returned, not raised)::

    async with PrintScu("PRINTER@10.0.0.5:104") as scu:
        printer = await scu.printer()                       # N-GET Printer: status, name
        session = await scu.create_session(copies=2, medium="PAPER")
        film = await scu.create_film_box(session.affected_sop_instance_uid, "STANDARD\\2,2", film_size="14INX17IN")
        await scu.set_image_box(film.image_boxes[0], prepare_print_image(ds), position=1)
        job = await scu.print_film_box(film.uid)
        await scu.delete_session(session.affected_sop_instance_uid)

:meth:`PrintScu.print_images` does the whole film session for a list of datasets and raises
:class:`PrintFailed` with one line naming the step, the attribute and the printer's reason when the
printer refuses something (e.g. a film size it does not have). ``on_event_report`` receives the
Printer and Print Job N-EVENT-REPORTs the printer sends on the association.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pacskit.client.nservices import EventReport, NResult, NServiceScu
from pacskit.dicom.printing import (
    BASIC_ANNOTATION_BOX,
    BASIC_COLOR_IMAGE_BOX,
    BASIC_COLOR_PRINT_META,
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_IMAGE_BOX,
    BASIC_GRAYSCALE_PRINT_META,
    PRESENTATION_LUT,
    PRINT_JOB,
    PRINTER,
    PRINTER_CONFIGURATION,
    PRINTER_CONFIGURATION_INSTANCE,
    PRINTER_INSTANCE,
    PrintImage,
    image_box_item,
    parse_display_format,
    prepare_print_image,
)
from pacskit.dicom.status import status_category
from pacskit.net import CommandField

__all__ = ["FilmBoxRef", "PrintFailed", "PrintResult", "PrintScu", "PrinterInfo", "display_format", "lut_reference"]


class PrintFailed(Exception):
    """The printer refused a step of a print: ``step`` (e.g. "Film Box N-CREATE"), ``status``, the
    attribute at fault if the printer named it, and its Error Comment."""

    def __init__(self, step: str, status: int, comment: str = "", attribute: str = "", requested: str = "") -> None:
        self.step, self.status, self.comment, self.attribute = step, status, comment, attribute
        self.requested = requested
        text = f"{step} refused with 0x{status:04X} ({_STATUS_TEXT.get(status, 'failure')})"
        if attribute:
            text += f", attribute {attribute}"
        if comment:
            text += f": {comment}"
        if requested:
            text += f"; we asked for {requested}"
        super().__init__(text)


_STATUS_TEXT = {
    0x0105: "no such attribute", 0x0106: "invalid attribute value", 0x0110: "processing failure",
    0x0112: "no such object instance", 0x0116: "attribute value out of range", 0x0118: "no such SOP class",
    0x0120: "missing attribute", 0x0121: "missing attribute value", 0x0122: "SOP class not supported",
    0x0123: "no such action", 0x0124: "not authorized", 0x0211: "unrecognized operation",
    0x0213: "resource limitation", 0xC600: "film session has no film boxes", 0xC601: "print queue full",
    0xC602: "print queue full", 0xC603: "image larger than the image box", 0xC605: "insufficient printer memory",
    0xC613: "combined print image larger than the image box", 0xC616: "previous film box not printed",
}


@dataclass(slots=True)
class PrinterInfo:
    """Printer N-GET: Printer Status (NORMAL, WARNING, FAILURE), its info, the printer's name."""

    status: str
    info: str
    name: str
    dataset: Dataset


@dataclass(slots=True)
class FilmBoxRef:
    """A created film box: its UID and the UIDs of its image (and annotation) boxes, in position order."""

    uid: str
    image_boxes: list[str]
    annotation_boxes: list[str]
    result: NResult


@dataclass(slots=True)
class PrintResult:
    """What :meth:`PrintScu.print_images` did: the film boxes printed, the print jobs the printer
    reported, warnings (step, status) it answered, the event reports received."""

    film_boxes: int = 0
    images: int = 0
    jobs: list[str] = field(default_factory=list)
    warnings: list[tuple[str, int, str]] = field(default_factory=list)
    events: list[EventReport] = field(default_factory=list)


def lut_reference(uid: str) -> DicomSequence:
    """A Referenced Presentation LUT Sequence naming ``uid``."""
    item = Dataset()
    item.ReferencedSOPClassUID = PRESENTATION_LUT
    item.ReferencedSOPInstanceUID = uid
    return DicomSequence([item])


def display_format(layout: str) -> str:
    """``"2,2"`` -> ``"STANDARD\\2,2"``; anything with a backslash is taken as it is (``ROW\\2,3``)."""
    text = layout.strip()
    if "\\" not in text:
        text = f"STANDARD\\{text}"
    parse_display_format(text)  # ValueError with the reason
    return text


def _attribute_names(result: NResult) -> str:
    from pydicom.datadict import keyword_for_tag

    tags = result.command.get("AttributeIdentifierList") or []
    if isinstance(tags, int):
        tags = [tags]
    return ", ".join(keyword_for_tag(t) or f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in tags)


class PrintScu(NServiceScu):
    """One association with a printer (``async with``); ``color`` chooses the Basic Color Print
    Management Meta SOP Class instead of the grayscale one. ``print_job``: also propose the Print Job
    SOP class (N-GET of jobs, their N-EVENT-REPORTs); ``annotation``: the Basic Annotation Box;
    ``configuration``: Printer Configuration Retrieval (to say what a printer takes when it refuses a
    film size or medium; most printers do not have it, which costs nothing); ``presentation_lut``: the
    Presentation LUT SOP class (:meth:`create_presentation_lut`)."""

    def __init__(
        self,
        remote: Any,
        *,
        color: bool = False,
        print_job: bool = True,
        annotation: bool = False,
        configuration: bool = True,
        presentation_lut: bool = False,
        on_event_report: Callable[[EventReport], int | None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.color = color
        self.meta = BASIC_COLOR_PRINT_META if color else BASIC_GRAYSCALE_PRINT_META
        self.image_box_class = BASIC_COLOR_IMAGE_BOX if color else BASIC_GRAYSCALE_IMAGE_BOX
        self.reports: list[EventReport] = []
        self._user_events = on_event_report
        classes = [self.meta] + ([PRINT_JOB] if print_job else []) + ([BASIC_ANNOTATION_BOX] if annotation else [])
        classes += [PRINTER_CONFIGURATION] if configuration else []
        classes += [PRESENTATION_LUT] if presentation_lut else []
        super().__init__(remote, classes, on_event_report=self._event, **kwargs)

    def _event(self, report: EventReport) -> int | None:
        self.reports.append(report)
        return self._user_events(report) if self._user_events is not None else None

    async def __aenter__(self) -> PrintScu:
        await super().__aenter__()
        assoc = self._assoc()
        if not any(pc.accepted and pc.abstract_syntax == self.meta for pc in assoc.contexts.values()):
            await self.__aexit__(None, None, None)
            kind = "Basic Color" if self.color else "Basic Grayscale"
            raise PrintFailed("association", 0x0122, f"the printer does not accept {kind} Print Management")
        return self

    def has_context(self, abstract_syntax: str) -> bool:
        return any(pc.accepted and pc.abstract_syntax == abstract_syntax for pc in self._assoc().contexts.values())

    async def _meta(self, field: CommandField, sop_class: str, dataset: Dataset | None, **elements: Any) -> NResult:
        """A request on the Meta SOP Class's context (its SOP classes have no context of their own)."""
        assoc = self._assoc()
        ctx = assoc.find_context(self.meta)
        rsp, ds = await assoc.n_request(field, sop_class, dataset, context=ctx, **elements)
        return NResult(rsp.status, ds, rsp)

    # ---------------------------------------------------------------- the DIMSE-N operations

    async def printer(self) -> PrinterInfo:
        """N-GET of the Printer: raises :class:`PrintFailed` if the printer does not answer it."""
        result = await self._meta(CommandField.N_GET_RQ, PRINTER, None, RequestedSOPInstanceUID=PRINTER_INSTANCE)
        if not result.ok:
            raise PrintFailed("Printer N-GET", result.status, result.error_comment)
        ds = result.dataset or Dataset()
        return PrinterInfo(str(ds.get("PrinterStatus", "") or ""), str(ds.get("PrinterStatusInfo", "") or ""),
                           str(ds.get("PrinterName", "") or ""), ds)

    async def configuration(self) -> dict[str, list[str]] | None:
        """Printer Configuration Retrieval N-GET: ``{"FilmSizeID": [...], "MediumType": [...],
        "MagnificationType": [...]}`` of what the printer takes, or ``None`` when it does not say."""
        if not self.has_context(PRINTER_CONFIGURATION):
            return None
        result = await self.n_get(PRINTER_CONFIGURATION, PRINTER_CONFIGURATION_INSTANCE)
        if not result.ok or result.dataset is None or not result.dataset.get("PrinterConfigurationSequence"):
            return None
        out: dict[str, list[str]] = {"FilmSizeID": [], "MediumType": [], "MagnificationType": []}
        for item in result.dataset.PrinterConfigurationSequence:
            for medium in item.get("MediaInstalledSequence", []):
                for keyword in ("FilmSizeID", "MediumType"):
                    value = str(medium.get(keyword, "") or "")
                    if value and value not in out[keyword]:
                        out[keyword].append(value)
            for keyword in ("DefaultMagnificationType", "OtherMagnificationTypesAvailable"):
                value = item.get(keyword)
                for v in ([value] if isinstance(value, str) else list(value or [])):
                    if v and v not in out["MagnificationType"]:
                        out["MagnificationType"].append(str(v))
        return out

    async def create_presentation_lut(self, shape: str | None = "IDENTITY", *, table: Sequence[int] | None = None,
                                      first: int = 0, bits: int = 12) -> NResult:
        """Presentation LUT N-CREATE: a ``shape`` (IDENTITY, LIN OD) or a ``table`` (output values of
        ``bits`` bits for the inputs ``first``, ``first + 1``…); reference the result's
        ``affected_sop_instance_uid`` from a film session, film box or image box
        (``ReferencedPresentationLUTSequence``, :func:`lut_reference`)."""
        ds = Dataset()
        if table is not None:
            item = Dataset()
            item.LUTDescriptor = [len(table) if len(table) < 65536 else 0, first, bits]
            item.add_new(0x00283006, "US", [int(v) for v in table])  # LUT Data: US (OW is ambiguous)
            ds.PresentationLUTSequence = DicomSequence([item])
        else:
            ds.PresentationLUTShape = shape
        return await self.n_create(PRESENTATION_LUT, ds)

    async def create_session(self, *, copies: int | None = None, priority: str | None = None, medium: str | None = None,
                             destination: str | None = None, label: str | None = None, owner: str | None = None,
                             **extra: Any) -> NResult:
        """Basic Film Session N-CREATE (the printer chooses the UID: ``result.affected_sop_instance_uid``)."""
        ds = Dataset()
        values = {"NumberOfCopies": copies, "PrintPriority": priority, "MediumType": medium,
                  "FilmDestination": destination, "FilmSessionLabel": label, "OwnerID": owner, **extra}
        for keyword, value in values.items():
            if value is not None:
                setattr(ds, keyword, value)
        result = await self._meta(CommandField.N_CREATE_RQ, BASIC_FILM_SESSION, ds)
        return result

    async def set_session(self, session_uid: str, **values: Any) -> NResult:
        ds = Dataset()
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return await self._meta(CommandField.N_SET_RQ, BASIC_FILM_SESSION, ds, RequestedSOPInstanceUID=session_uid)

    async def create_film_box(self, session_uid: str, image_display_format: str, *, orientation: str | None = None,
                              film_size: str | None = None, magnification: str | None = None,
                              border_density: str | None = None, empty_image_density: str | None = None,
                              trim: str | None = None, annotation_format: str | None = None,
                              **extra: Any) -> FilmBoxRef:
        """Basic Film Box N-CREATE; the image boxes the printer created are in the result's order
        (Image Position 1, 2, …). A refusal gives a :class:`FilmBoxRef` with no boxes and the status."""
        ds = Dataset()
        ds.ImageDisplayFormat = image_display_format
        values = {"FilmOrientation": orientation, "FilmSizeID": film_size, "MagnificationType": magnification,
                  "BorderDensity": border_density, "EmptyImageDensity": empty_image_density, "Trim": trim,
                  "AnnotationDisplayFormatID": annotation_format, **extra}
        for keyword, value in values.items():
            if value is not None:
                setattr(ds, keyword, value)
        ref = Dataset()
        ref.ReferencedSOPClassUID = BASIC_FILM_SESSION
        ref.ReferencedSOPInstanceUID = session_uid
        ds.ReferencedFilmSessionSequence = DicomSequence([ref])
        result = await self._meta(CommandField.N_CREATE_RQ, BASIC_FILM_BOX, ds)
        answer = result.dataset or Dataset()
        boxes = [str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedImageBoxSequence", [])]
        notes = [str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedBasicAnnotationBoxSequence", [])]
        return FilmBoxRef(result.affected_sop_instance_uid, boxes, notes, result)

    async def set_film_box(self, film_box_uid: str, **values: Any) -> NResult:
        ds = Dataset()
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return await self._meta(CommandField.N_SET_RQ, BASIC_FILM_BOX, ds, RequestedSOPInstanceUID=film_box_uid)

    async def set_image_box(self, image_box_uid: str, image: PrintImage | Dataset | None, *, position: int,
                            polarity: str | None = None, magnification: str | None = None,
                            requested_size_mm: float | None = None, decimate_crop: str | None = None) -> NResult:
        """Image Box N-SET: ``image`` prepared with :func:`~pacskit.dicom.printing.prepare_print_image`
        (or an image sequence item built by the caller; ``None`` sends no pixels)."""
        ds = Dataset()
        ds.ImageBoxPosition = position
        if polarity is not None:
            ds.Polarity = polarity
        if magnification is not None:
            ds.MagnificationType = magnification
        if requested_size_mm is not None:
            ds.RequestedImageSize = f"{requested_size_mm:.6g}"
        if decimate_crop is not None:
            ds.RequestedDecimateCropBehavior = decimate_crop
        if image is not None:
            item = image if isinstance(image, Dataset) else image_box_item(image)
            keyword = "BasicColorImageSequence" if self.color else "BasicGrayscaleImageSequence"
            setattr(ds, keyword, DicomSequence([item]))
        return await self._meta(CommandField.N_SET_RQ, self.image_box_class, ds, RequestedSOPInstanceUID=image_box_uid)

    async def n_set_meta_image_box(self, image_box_uid: str, dataset: Dataset) -> NResult:
        """Image Box N-SET of a dataset the caller built (any attribute, e.g. a Referenced Presentation
        LUT Sequence)."""
        return await self._meta(CommandField.N_SET_RQ, self.image_box_class, dataset, RequestedSOPInstanceUID=image_box_uid)

    async def n_delete_lut(self, lut_uid: str) -> NResult:
        """Presentation LUT N-DELETE."""
        return await self.n_delete(PRESENTATION_LUT, lut_uid)

    async def set_annotation(self, annotation_box_uid: str, position: int, text: str) -> NResult:
        """Basic Annotation Box N-SET (needs ``annotation=True`` and a printer that accepts it)."""
        ds = Dataset()
        ds.AnnotationPosition = position
        ds.TextString = text
        return await self.n_set(BASIC_ANNOTATION_BOX, annotation_box_uid, ds)

    async def print_film_box(self, film_box_uid: str) -> NResult:
        """Basic Film Box N-ACTION (Action Type 1, print)."""
        return await self._meta(CommandField.N_ACTION_RQ, BASIC_FILM_BOX, None, RequestedSOPInstanceUID=film_box_uid,
                                ActionTypeID=1)

    async def print_session(self, session_uid: str) -> NResult:
        """Basic Film Session N-ACTION (Action Type 1): every film box of the session."""
        return await self._meta(CommandField.N_ACTION_RQ, BASIC_FILM_SESSION, None, RequestedSOPInstanceUID=session_uid,
                                ActionTypeID=1)

    async def delete_film_box(self, film_box_uid: str) -> NResult:
        return await self._meta(CommandField.N_DELETE_RQ, BASIC_FILM_BOX, None, RequestedSOPInstanceUID=film_box_uid)

    async def delete_session(self, session_uid: str) -> NResult:
        return await self._meta(CommandField.N_DELETE_RQ, BASIC_FILM_SESSION, None, RequestedSOPInstanceUID=session_uid)

    async def print_job(self, job_uid: str) -> NResult:
        """Print Job N-GET (Execution Status PENDING, PRINTING, DONE, FAILURE)."""
        return await self.n_get(PRINT_JOB, job_uid)

    # ---------------------------------------------------------------- the whole thing

    async def print_images(
        self,
        datasets: Sequence[Dataset],
        *,
        layout: str = "STANDARD\\1,1",
        film_size: str | None = None,
        orientation: str | None = None,
        copies: int | None = None,
        priority: str | None = None,
        medium: str | None = None,
        destination: str | None = None,
        label: str | None = None,
        magnification: str | None = None,
        border_density: str | None = None,
        empty_image_density: str | None = None,
        trim: str | None = None,
        bits: int = 8,
        window: tuple[float, float] | None = None,
        polarity: str | None = None,
        annotations: Sequence[str] = (),
        check_printer: bool = True,
        all_frames: bool = False,
        lut_shape: str | None = None,
    ) -> PrintResult:
        """Print ``datasets`` (each its first frame, or every frame with ``all_frames``) on as many films of ``layout`` as they need: one
        film session, a film box per film printed as soon as it is full (N-ACTION on the film box),
        then the session deleted. Image pixels are prepared with
        :func:`~pacskit.dicom.printing.prepare_print_image` (``bits`` 8 or 12, ``window``).
        ``lut_shape`` (IDENTITY, LIN OD; needs ``presentation_lut=True``) creates a Presentation LUT the
        film boxes reference. Raises :class:`PrintFailed` at the first refusal (the session is deleted
        first) and when the printer reports FAILURE (``check_printer``)."""
        result = PrintResult()
        images: list[tuple[Dataset, int]] = []
        for ds in datasets:
            frames = int(ds.get("NumberOfFrames", 1) or 1) if all_frames else 1
            images.extend((ds, frame) for frame in range(frames))
        layout_text = display_format(layout)
        per_film = parse_display_format(layout_text).image_boxes
        if check_printer:
            printer = await self.printer()
            if printer.status == "FAILURE":
                raise PrintFailed("Printer N-GET", 0, f"the printer reports FAILURE: {printer.info}")
        session = await self.create_session(copies=copies, priority=priority, medium=medium, destination=destination,
                                            label=label)
        await self._explain(session)
        self._check("Film Session N-CREATE", session, result, {"NumberOfCopies": copies, "PrintPriority": priority,
                                                                "MediumType": medium, "FilmDestination": destination})
        session_uid = session.affected_sop_instance_uid or (session.dataset or Dataset()).get("SOPInstanceUID", "")
        lut_uid = ""
        if lut_shape is not None:
            if not self.has_context(PRESENTATION_LUT):
                raise PrintFailed("Presentation LUT N-CREATE", 0x0122, "the printer does not accept Presentation LUTs")
            made = await self.create_presentation_lut(lut_shape)
            self._check("Presentation LUT N-CREATE", made, result, {"PresentationLUTShape": lut_shape})
            lut_uid = made.affected_sop_instance_uid
        if not session_uid:
            raise PrintFailed("Film Session N-CREATE", session.status, "the printer did not say the film session's UID")
        try:
            for start in range(0, max(1, len(images)), per_film):
                chunk = images[start:start + per_film]
                film_extra: dict[str, Any] = {}
                if lut_uid:
                    film_extra["ReferencedPresentationLUTSequence"] = lut_reference(lut_uid)
                film = await self.create_film_box(
                    session_uid, layout_text, orientation=orientation, film_size=film_size, magnification=magnification,
                    border_density=border_density, empty_image_density=empty_image_density, trim=trim,
                    annotation_format="TITLE" if annotations else None, **film_extra)
                asked = {"ImageDisplayFormat": layout_text, "FilmSizeID": film_size, "FilmOrientation": orientation,
                         "MagnificationType": magnification, "BorderDensity": border_density,
                         "EmptyImageDensity": empty_image_density, "Trim": trim}
                await self._explain(film.result)
                self._check("Film Box N-CREATE", film.result, result, asked)
                if len(film.image_boxes) < len(chunk):
                    raise PrintFailed("Film Box N-CREATE", film.result.status,
                                      f"the printer made {len(film.image_boxes)} image boxes for {layout_text}")
                for position, (box_uid, (ds, frame)) in enumerate(zip(film.image_boxes, chunk), start=1):
                    image = prepare_print_image(ds, bits=bits, color=self.color, window=window, frame=frame)
                    answer = await self.set_image_box(box_uid, image, position=position, polarity=polarity)
                    self._check(f"Image Box N-SET (position {position})", answer, result)
                    result.images += 1
                if annotations and film.annotation_boxes and self.has_context(BASIC_ANNOTATION_BOX):
                    for position, (ann_uid, text) in enumerate(zip(film.annotation_boxes, annotations), start=1):
                        self._check("Annotation Box N-SET", await self.set_annotation(ann_uid, position, text), result)
                printed = await self.print_film_box(film.uid)
                self._check("Film Box N-ACTION", printed, result)
                for item in (printed.dataset or Dataset()).get("ReferencedPrintJobSequence", []):
                    result.jobs.append(str(item.ReferencedSOPInstanceUID))
                result.film_boxes += 1
        finally:
            if self.assoc is not None and self.assoc.is_open:
                await self.delete_session(session_uid)
        result.events = list(self.reports)
        return result

    async def _explain(self, answer: NResult) -> None:
        """A refused N-CREATE: add what the printer takes (Printer Configuration Retrieval, when it has
        it) to the answer's Error Comment, for :class:`PrintFailed`."""
        if status_category(answer.status) in ("Success", "Warning"):
            return
        try:
            config = await self.configuration()
        except Exception:  # an explanation must not hide the refusal
            return
        if not config:
            return
        have = "; ".join(f"{k}: {', '.join(v)}" for k, v in config.items() if v)
        comment = answer.error_comment
        answer.command["ErrorComment"] = f"{comment}; the printer takes {have}" if comment else f"the printer takes {have}"

    @staticmethod
    def _check(step: str, answer: NResult, result: PrintResult, asked: dict[str, Any] | None = None) -> None:
        """Record a warning; raise :class:`PrintFailed` for a failure, with the values we asked for
        (the attribute the printer named first, or all of them when it named none: DCMTK's
        dcmprscp answers 0x0106 without saying which)."""
        category = status_category(answer.status)
        if category == "Warning":
            result.warnings.append((step, answer.status, answer.error_comment))
        elif category != "Success":
            named = _attribute_names(answer)
            values = {k: v for k, v in (asked or {}).items() if v is not None}
            if named and any(n in values for n in named.split(", ")):
                values = {k: v for k, v in values.items() if k in named.split(", ")}
            requested = ", ".join(f"{k}={v}" for k, v in values.items())
            raise PrintFailed(step, answer.status, answer.error_comment, named, requested)
