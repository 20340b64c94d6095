"""The print SCP's objects (PS3.4 H.4): one Basic Film Session per association, its Film Boxes, their
Image Boxes and Annotation Boxes, with the checks of the standard. Every refusal is a
:class:`~pacskit.dicom.printing.PrintError` carrying the status to answer; nothing here touches the
network or the disk, so the rules are testable on their own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacskit.dicom.status import Status
from pacskit.dicom.printing import (
    BASIC_ANNOTATION_BOX,
    BASIC_COLOR_IMAGE_BOX,
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_IMAGE_BOX,
    FILM_SIZES,
    Cell,
    DisplayFormat,
    PresentationLut,
    PrintError,
    PrintStatus,
    decode_image_box_values,
    parse_display_format,
    parse_presentation_lut,
)

if TYPE_CHECKING:
    import numpy.typing as npt

INVALID_ATTRIBUTE_VALUE = Status.INVALID_ATTRIBUTE_VALUE
MISSING_ATTRIBUTE = Status.MISSING_ATTRIBUTE
NO_SUCH_INSTANCE = Status.NO_SUCH_SOP_INSTANCE
RESOURCE_LIMITATION = Status.RESOURCE_LIMITATION
DUPLICATE_INSTANCE = Status.DUPLICATE_SOP_INSTANCE
MEMORY_ALLOCATION_NOT_SUPPORTED = PrintStatus.MEMORY_ALLOCATION_NOT_SUPPORTED
DENSITY_OUT_OF_RANGE = PrintStatus.DENSITY_OUT_OF_RANGE
IMAGE_DEMAGNIFIED = PrintStatus.IMAGE_DEMAGNIFIED
IMAGE_CROPPED = PrintStatus.IMAGE_CROPPED
IMAGE_DECIMATED = PrintStatus.IMAGE_DECIMATED
IMAGE_TOO_LARGE = PrintStatus.IMAGE_TOO_LARGE
INSUFFICIENT_MEMORY = PrintStatus.INSUFFICIENT_MEMORY

PRIORITIES = ("HIGH", "MED", "LOW")
ORIENTATIONS = ("PORTRAIT", "LANDSCAPE")
MAGNIFICATIONS = ("REPLICATE", "BILINEAR", "CUBIC", "NONE")
POLARITIES = ("NORMAL", "REVERSE")
DECIMATE_CROP = ("DECIMATE", "CROP", "FAIL")


@dataclass(slots=True)
class PrinterLimits:
    """What the printer takes (the add-in's options): values refused with 0x0106 name these."""

    medium_types: tuple[str, ...]
    film_destinations: tuple[str, ...]
    film_sizes: tuple[str, ...]
    default_film_size: str
    max_copies: int
    max_film_boxes: int
    max_image_boxes: int
    max_image_pixels: int
    max_session_bytes: int
    min_density: int
    max_density: int
    dpi: int
    margin_mm: float
    annotation_boxes: int


@dataclass(slots=True)
class ImageBox:
    uid: str
    position: int
    sop_class: str
    #: grayscale P-values (uint8/uint16, MONOCHROME2) of ``bits`` bits, or uint8 RGB
    pixels: npt.NDArray[Any] | None = None
    bits: int = 8
    lut: PresentationLut | None = None
    polarity: str = "NORMAL"
    magnification: str = ""
    smoothing: str = ""
    requested_size_mm: float | None = None
    behaviour: str = "DECIMATE"

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes) if self.pixels is not None else 0


@dataclass(slots=True)
class AnnotationBox:
    uid: str
    position: int
    text: str = ""


@dataclass(slots=True)
class FilmBox:
    uid: str
    display: DisplayFormat
    attrs: dict[str, Any]
    image_boxes: dict[str, ImageBox] = field(default_factory=dict)
    annotation_boxes: dict[str, AnnotationBox] = field(default_factory=dict)
    printed: bool = False
    lut: PresentationLut | None = None

    @property
    def orientation(self) -> str:
        return str(self.attrs["FilmOrientation"])

    @property
    def film_size(self) -> str:
        return str(self.attrs["FilmSizeID"])

    @property
    def empty(self) -> bool:
        return all(box.pixels is None for box in self.image_boxes.values())

    def cell(self, box: ImageBox) -> Cell:
        return self.display.cells[box.position - 1]

    def nbytes(self) -> int:
        return sum(box.nbytes for box in self.image_boxes.values())


@dataclass(slots=True)
class FilmSession:
    uid: str
    color: bool
    attrs: dict[str, Any]
    film_boxes: dict[str, FilmBox] = field(default_factory=dict)
    lut: PresentationLut | None = None

    def nbytes(self) -> int:
        return sum(fb.nbytes() for fb in self.film_boxes.values())


def _text(ds: Dataset, keyword: str) -> str | None:
    """A string attribute's value, ``None`` when absent or empty (zero length: 'use the default')."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or value == "":
        return None
    return str(value).strip().upper()


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    return int(tag)


def _choice(ds: Dataset, keyword: str, allowed: tuple[str, ...], default: str) -> str:
    value = _text(ds, keyword)
    if value is None:
        return default
    if value not in allowed:
        raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{keyword} {value!r} not supported; supported: {', '.join(allowed)}",
                         _tag(keyword))
    return value


class PrintState:
    """The objects of one association (film session and below). Requests of one association are
    served one at a time, so a state needs no lock of its own; ``budget`` is shared by all of them."""

    def __init__(self, limits: PrinterLimits, budget: MemoryBudget) -> None:
        self.limits = limits
        self.budget = budget
        self.session: FilmSession | None = None
        #: Presentation LUTs created on this association
        self.luts: dict[str, PresentationLut] = {}

    # ---------------------------------------------------------------- presentation LUT

    def create_lut(self, uid: str | None, ds: Dataset) -> tuple[str, PresentationLut]:
        lut = parse_presentation_lut(ds)
        uid = uid or generate_uid()
        if uid in self.luts:
            raise PrintError(DUPLICATE_INSTANCE, f"Presentation LUT {uid} exists")
        self.luts[uid] = lut
        return uid, lut

    def delete_lut(self, uid: str) -> None:
        """Objects that reference it keep it (they were given it by reference at N-CREATE/N-SET)."""
        if self.luts.pop(uid, None) is None:
            raise PrintError(NO_SUCH_INSTANCE, f"no Presentation LUT {uid} on this association")

    def _lut_ref(self, ds: Dataset, current: PresentationLut | None) -> PresentationLut | None:
        """Referenced Presentation LUT Sequence: absent keeps ``current``, empty removes it."""
        if "ReferencedPresentationLUTSequence" not in ds:
            return current
        seq = ds.ReferencedPresentationLUTSequence
        if not seq:
            return None
        uid = str(seq[0].get("ReferencedSOPInstanceUID", ""))
        if uid not in self.luts:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, f"no Presentation LUT {uid} on this association",
                             _tag("ReferencedPresentationLUTSequence"))
        return self.luts[uid]

    # ---------------------------------------------------------------- film session

    def _session_attrs(self, ds: Dataset, current: dict[str, Any]) -> tuple[dict[str, Any], int]:
        warning = 0
        attrs = dict(current)
        if "NumberOfCopies" in ds and ds.NumberOfCopies not in (None, ""):
            copies = int(ds.NumberOfCopies)
            if not 1 <= copies <= self.limits.max_copies:
                raise PrintError(INVALID_ATTRIBUTE_VALUE, f"NumberOfCopies {copies} not supported; 1..{self.limits.max_copies}",
                                 _tag("NumberOfCopies"))
            attrs["NumberOfCopies"] = copies
        attrs["PrintPriority"] = _choice(ds, "PrintPriority", PRIORITIES, attrs["PrintPriority"])
        attrs["MediumType"] = _choice(ds, "MediumType", self.limits.medium_types, attrs["MediumType"])
        attrs["FilmDestination"] = _choice(ds, "FilmDestination", self.limits.film_destinations, attrs["FilmDestination"])
        for keyword in ("FilmSessionLabel", "OwnerID"):
            if keyword in ds and ds[keyword].value is not None:
                attrs[keyword] = str(ds[keyword].value)
        if "MemoryAllocation" in ds and ds.MemoryAllocation not in (None, ""):
            warning = MEMORY_ALLOCATION_NOT_SUPPORTED
        return attrs, warning

    def create_session(self, uid: str | None, ds: Dataset, *, color: bool) -> tuple[FilmSession, int]:
        if self.session is not None:
            raise PrintError(RESOURCE_LIMITATION, "one film session per association; delete the current one first")
        defaults = {"NumberOfCopies": 1, "PrintPriority": "MED", "MediumType": self.limits.medium_types[0],
                    "FilmDestination": self.limits.film_destinations[0], "FilmSessionLabel": "", "OwnerID": ""}
        attrs, warning = self._session_attrs(ds, defaults)
        lut = self._lut_ref(ds, None)
        self.session = FilmSession(uid or generate_uid(), color, attrs, lut=lut)
        return self.session, warning

    def get_session(self, uid: str) -> FilmSession:
        if self.session is None or self.session.uid != uid:
            raise PrintError(NO_SUCH_INSTANCE, f"no film session {uid} on this association")
        return self.session

    def set_session(self, uid: str, ds: Dataset) -> tuple[FilmSession, int]:
        session = self.get_session(uid)
        attrs, warning = self._session_attrs(ds, session.attrs)
        session.lut = self._lut_ref(ds, session.lut)
        session.attrs = attrs
        return session, warning

    def delete_session(self, uid: str) -> None:
        session = self.get_session(uid)
        self.budget.release(session.nbytes())
        self.session = None

    # ---------------------------------------------------------------- film box

    def _density(self, ds: Dataset, keyword: str, default: int) -> tuple[int, int]:
        if keyword not in ds or ds[keyword].value in (None, ""):
            return default, 0
        value = int(ds[keyword].value)
        clamped = min(max(value, self.limits.min_density), self.limits.max_density)
        return clamped, (DENSITY_OUT_OF_RANGE if clamped != value else 0)

    def _film_box_attrs(self, ds: Dataset, current: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Film box attributes an N-CREATE sets and an N-SET may change (PS3.4 H.4.2.1.2)."""
        warning = 0
        attrs = dict(current)
        attrs["MagnificationType"] = _choice(ds, "MagnificationType", MAGNIFICATIONS, attrs["MagnificationType"])
        if _text(ds, "SmoothingType") is not None:
            attrs["SmoothingType"] = _text(ds, "SmoothingType")
        for keyword in ("BorderDensity", "EmptyImageDensity"):
            value = _text(ds, keyword)
            if value is not None:
                if value not in ("BLACK", "WHITE") and not value.isdigit():
                    raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{keyword} {value!r}: BLACK, WHITE or a density", _tag(keyword))
                attrs[keyword] = value
        attrs["MinDensity"], w1 = self._density(ds, "MinDensity", attrs["MinDensity"])
        attrs["MaxDensity"], w2 = self._density(ds, "MaxDensity", attrs["MaxDensity"])
        warning = w1 or w2 or warning
        attrs["Trim"] = _choice(ds, "Trim", ("YES", "NO"), attrs["Trim"])
        if _text(ds, "ConfigurationInformation") is not None:
            attrs["ConfigurationInformation"] = str(ds.ConfigurationInformation)
        return attrs, warning

    def create_film_box(self, uid: str | None, ds: Dataset) -> tuple[FilmBox, int]:
        session = self.session
        ref_seq = ds.get("ReferencedFilmSessionSequence")
        if not ref_seq:
            raise PrintError(MISSING_ATTRIBUTE, "Film Box N-CREATE without Referenced Film Session Sequence",
                             _tag("ReferencedFilmSessionSequence"))
        ref = ref_seq[0]
        if session is None or str(ref.get("ReferencedSOPInstanceUID", "")) != session.uid:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, "Referenced Film Session is not this association's film session",
                             _tag("ReferencedFilmSessionSequence"))
        if str(ref.get("ReferencedSOPClassUID", BASIC_FILM_SESSION)) != BASIC_FILM_SESSION:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, "Referenced SOP Class of the film session is not Basic Film Session",
                             _tag("ReferencedFilmSessionSequence"))
        if len(session.film_boxes) >= self.limits.max_film_boxes:
            raise PrintError(RESOURCE_LIMITATION, f"at most {self.limits.max_film_boxes} film boxes per film session")
        text = ds.get("ImageDisplayFormat")
        if not text:
            raise PrintError(MISSING_ATTRIBUTE, "Film Box N-CREATE without Image Display Format", _tag("ImageDisplayFormat"))
        try:
            display = parse_display_format(str(text), self.limits.max_image_boxes)
        except ValueError as exc:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, str(exc), _tag("ImageDisplayFormat")) from None
        orientation = _choice(ds, "FilmOrientation", ORIENTATIONS, "PORTRAIT")
        film_size = _choice(ds, "FilmSizeID", self.limits.film_sizes, self.limits.default_film_size)
        defaults = {"MagnificationType": "BILINEAR", "SmoothingType": "", "BorderDensity": "BLACK",
                    "EmptyImageDensity": "BLACK", "MinDensity": self.limits.min_density,
                    "MaxDensity": self.limits.max_density, "Trim": "NO", "ConfigurationInformation": ""}
        attrs, warning = self._film_box_attrs(ds, defaults)
        attrs.update(ImageDisplayFormat=display.text, FilmOrientation=orientation, FilmSizeID=film_size,
                     AnnotationDisplayFormatID=str(ds.get("AnnotationDisplayFormatID", "") or ""),
                     RequestedResolutionID=str(ds.get("RequestedResolutionID", "") or "STANDARD"))
        uid = uid or generate_uid()
        if uid in session.film_boxes:
            raise PrintError(DUPLICATE_INSTANCE, f"film box {uid} exists")
        box_class = BASIC_COLOR_IMAGE_BOX if session.color else BASIC_GRAYSCALE_IMAGE_BOX
        film_box = FilmBox(uid, display, attrs, lut=self._lut_ref(ds, None))
        for cell in display.cells:
            image_uid = generate_uid()
            film_box.image_boxes[image_uid] = ImageBox(image_uid, cell.position, box_class)
        if attrs["AnnotationDisplayFormatID"] and self.limits.annotation_boxes:
            for position in range(1, self.limits.annotation_boxes + 1):
                ann_uid = generate_uid()
                film_box.annotation_boxes[ann_uid] = AnnotationBox(ann_uid, position)
        session.film_boxes[uid] = film_box
        return film_box, warning

    def film_box(self, uid: str) -> FilmBox:
        if self.session is None or uid not in self.session.film_boxes:
            raise PrintError(NO_SUCH_INSTANCE, f"no film box {uid} in this film session")
        return self.session.film_boxes[uid]

    def set_film_box(self, uid: str, ds: Dataset) -> tuple[FilmBox, int]:
        box = self.film_box(uid)
        attrs, warning = self._film_box_attrs(ds, box.attrs)
        box.lut = self._lut_ref(ds, box.lut)
        box.attrs = attrs
        return box, warning

    def delete_film_box(self, uid: str) -> None:
        box = self.film_box(uid)
        assert self.session is not None
        self.budget.release(box.nbytes())
        del self.session.film_boxes[uid]

    # ---------------------------------------------------------------- image box

    def find_image_box(self, uid: str) -> tuple[FilmBox, ImageBox]:
        if self.session is not None:
            for film_box in self.session.film_boxes.values():
                if uid in film_box.image_boxes:
                    return film_box, film_box.image_boxes[uid]
        raise PrintError(NO_SUCH_INSTANCE, f"no image box {uid} in this film session")

    def set_image_box(self, uid: str, sop_class: str, ds: Dataset) -> tuple[ImageBox, int]:
        """N-SET of an image box: checks everything before changing anything, so a refused N-SET
        leaves the box as it was."""
        film_box, box = self.find_image_box(uid)
        if sop_class != box.sop_class:
            raise PrintError(Status.SOP_CLASS_NOT_SUPPORTED, f"image box {uid} is a {'color' if box.sop_class == BASIC_COLOR_IMAGE_BOX else 'grayscale'}"
                                     " image box")
        if "ImageBoxPosition" in ds and ds.ImageBoxPosition not in (None, "") and int(ds.ImageBoxPosition) != box.position:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, f"Image Box Position {int(ds.ImageBoxPosition)}: this box is at "
                                                      f"{box.position}", _tag("ImageBoxPosition"))
        polarity = _choice(ds, "Polarity", POLARITIES, box.polarity)
        magnification = _choice(ds, "MagnificationType", MAGNIFICATIONS, box.magnification)
        behaviour = _choice(ds, "RequestedDecimateCropBehavior", DECIMATE_CROP, box.behaviour)
        requested = box.requested_size_mm
        if "RequestedImageSize" in ds and ds.RequestedImageSize not in (None, ""):
            requested = float(ds.RequestedImageSize)
            if requested <= 0:
                raise PrintError(INVALID_ATTRIBUTE_VALUE, f"Requested Image Size {requested} mm", _tag("RequestedImageSize"))
        color = box.sop_class == BASIC_COLOR_IMAGE_BOX
        seq_keyword = "BasicColorImageSequence" if color else "BasicGrayscaleImageSequence"
        other = "BasicGrayscaleImageSequence" if color else "BasicColorImageSequence"
        if other in ds:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{other} in an N-SET of a {'color' if color else 'grayscale'} image box",
                             _tag(other))
        pixels, bits = box.pixels, box.bits
        lut = self._lut_ref(ds, box.lut)
        warning = 0
        if seq_keyword in ds:
            seq = ds[seq_keyword].value
            if not seq:
                pixels = None  # an empty sequence empties the box
            else:
                pixels, bits = decode_image_box_values(seq[0], color=color, max_pixels=self.limits.max_image_pixels)
                pixels, warning = self._fit(film_box, box, pixels, behaviour, requested, magnification)
        grow = (pixels.nbytes if pixels is not None else 0) - box.nbytes
        if grow > 0 and not self.budget.take(grow, self.limits.max_session_bytes, self._bytes()):
            raise PrintError(INSUFFICIENT_MEMORY, "not enough printer memory for this image")
        if grow < 0:
            self.budget.release(-grow)
        box.pixels, box.bits, box.polarity, box.magnification = pixels, bits, polarity, magnification
        box.behaviour, box.requested_size_mm, box.lut = behaviour, requested, lut
        return box, warning

    def _bytes(self) -> int:
        return self.session.nbytes() if self.session is not None else 0

    def cell_pixels(self, film_box: FilmBox, box: ImageBox) -> tuple[int, int]:
        """The image box's size in printer pixels (columns, rows) at the printer resolution."""
        from pacskit.dicom.printing import film_size_mm

        width_mm, height_mm = film_size_mm(film_box.film_size, film_box.orientation)
        margin = self.limits.margin_mm
        band = annotation_band_mm(film_box)
        area_w, area_h = width_mm - 2 * margin, height_mm - 2 * margin - 2 * band
        cell = film_box.cell(box)
        per_mm = self.limits.dpi / 25.4
        return max(1, int(cell.width * area_w * per_mm)), max(1, int(cell.height * area_h * per_mm))

    def _fit(self, film_box: FilmBox, box: ImageBox, pixels: npt.NDArray[Any], behaviour: str,
             requested: float | None, magnification: str) -> tuple[npt.NDArray[Any], int]:
        """Does the image fit its box at the printer's resolution (with magnification NONE, pixel for
        pixel)? Bigger: DECIMATE shrinks it (0xB60A), CROP keeps the middle (0xB609), FAIL refuses (0xC603)."""
        cols, rows = self.cell_pixels(film_box, box)
        mag = magnification or str(film_box.attrs["MagnificationType"])
        warning = 0
        if requested is not None:
            per_mm = self.limits.dpi / 25.4
            if requested * per_mm > cols:
                if behaviour == "FAIL":
                    raise PrintError(IMAGE_TOO_LARGE, f"requested image size {requested} mm is wider than the image box")
                warning = IMAGE_DEMAGNIFIED
        if mag != "NONE":
            return pixels, warning  # magnified (or demagnified) to the box when printed
        height, width = pixels.shape[:2]
        if width <= cols and height <= rows:
            return pixels, warning
        if behaviour == "FAIL":
            raise PrintError(IMAGE_TOO_LARGE, f"image of {width} x {height} pixels is larger than the image box "
                                              f"({cols} x {rows} at {self.limits.dpi} dpi)")
        if behaviour == "CROP":
            top, left = max(0, (height - rows) // 2), max(0, (width - cols) // 2)
            return pixels[top:top + min(rows, height), left:left + min(cols, width)].copy(), IMAGE_CROPPED
        return pixels, IMAGE_DECIMATED

    # ---------------------------------------------------------------- annotation box

    def set_annotation_box(self, uid: str, ds: Dataset) -> AnnotationBox:
        if self.session is not None:
            for film_box in self.session.film_boxes.values():
                if uid in film_box.annotation_boxes:
                    box = film_box.annotation_boxes[uid]
                    if "AnnotationPosition" in ds and ds.AnnotationPosition not in (None, "") and int(
                            ds.AnnotationPosition) != box.position:
                        raise PrintError(INVALID_ATTRIBUTE_VALUE, f"Annotation Position {int(ds.AnnotationPosition)}: "
                                                                  f"this box is at {box.position}", _tag("AnnotationPosition"))
                    if "TextString" in ds:
                        box.text = str(ds.TextString or "")
                    return box
        raise PrintError(NO_SUCH_INSTANCE, f"no annotation box {uid} in this film session")

    def release(self) -> None:
        """The association ended: its objects go (PS3.4 H.4.1.1: a film session lives as long as its
        association)."""
        if self.session is not None:
            self.budget.release(self.session.nbytes())
            self.session = None
        self.luts.clear()


def annotation_band_mm(film_box: FilmBox) -> float:
    """Height of the text band at the top and at the bottom of a film with annotation boxes."""
    return 8.0 if film_box.annotation_boxes else 0.0


class MemoryBudget:
    """The printer memory all associations share: image pixels held until their film session ends."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, session_limit: int, session_used: int) -> bool:
        with self._lock:
            if session_used + nbytes > session_limit or self.used + nbytes > self.total:
                return False
            self.used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used = max(0, self.used - nbytes)


# ---------------------------------------------------------------------------------- responses


def session_dataset(session: FilmSession) -> Dataset:
    ds = Dataset()
    for keyword, value in session.attrs.items():
        setattr(ds, keyword, value)
    return ds


def film_box_dataset(film_box: FilmBox, session: FilmSession) -> Dataset:
    """The N-CREATE response of a film box: its attributes and the image (and annotation) boxes made."""
    ds = Dataset()
    for keyword, value in film_box.attrs.items():
        if keyword in ("MinDensity", "MaxDensity"):
            setattr(ds, keyword, int(value))
        else:
            setattr(ds, keyword, value)
    ref = Dataset()
    ref.ReferencedSOPClassUID = BASIC_FILM_SESSION
    ref.ReferencedSOPInstanceUID = session.uid
    ds.ReferencedFilmSessionSequence = DicomSequence([ref])
    items = []
    for box in sorted(film_box.image_boxes.values(), key=lambda b: b.position):
        item = Dataset()
        item.ReferencedSOPClassUID = box.sop_class
        item.ReferencedSOPInstanceUID = box.uid
        items.append(item)
    ds.ReferencedImageBoxSequence = DicomSequence(items)
    if film_box.annotation_boxes:
        anns = []
        for ann in sorted(film_box.annotation_boxes.values(), key=lambda b: b.position):
            item = Dataset()
            item.ReferencedSOPClassUID = BASIC_ANNOTATION_BOX
            item.ReferencedSOPInstanceUID = ann.uid
            anns.append(item)
        ds.ReferencedBasicAnnotationBoxSequence = DicomSequence(anns)
    return ds


def supported_film_sizes(names: list[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n.upper() not in FILM_SIZES]
    if unknown:
        raise ValueError(f"unknown film sizes {unknown}; known: {', '.join(FILM_SIZES)}")
    return tuple(n.upper() for n in names)


__all__ = [
    "AnnotationBox",
    "FilmBox",
    "FilmSession",
    "ImageBox",
    "MemoryBudget",
    "PrintState",
    "PrinterLimits",
    "annotation_band_mm",
    "film_box_dataset",
    "session_dataset",
    "supported_film_sizes",
    "BASIC_FILM_BOX",
]
