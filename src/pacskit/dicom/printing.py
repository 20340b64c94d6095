"""Print Management (PS3.4 Annex H) knowledge shared by the Print SCU and the Print SCP add-in.

- the SOP class UIDs of the Basic Grayscale / Color Print Management Meta SOP Classes and their parts;
- :func:`parse_display_format`: Image Display Format (2010,0010) -> the image boxes' cells on the film
  (``STANDARD\\C,R``, ``ROW\\n1,n2…``, ``COL\\n1,n2…``);
- :data:`FILM_SIZES`: Film Size ID (2010,0050) -> millimetres;
- :func:`prepare_print_image`: a stored image -> the pixels of an Image Box (modality LUT, VOI window,
  rescaled to the printer's 8 or 12 bits, MONOCHROME1 turned into MONOCHROME2, colour to RGB);
- :func:`image_box_item` / :func:`decode_image_box_item`: the Basic Grayscale / Color Image Sequence
  item, built and checked (a bad one raises :class:`PrintError` with the DIMSE status to answer).

numpy is imported where pixels are touched (the ``codecs`` or ``print`` extra), never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from pacskit.dicom.status import DimseRefusal, Status

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from pydicom.dataset import Dataset

__all__ = [
    "BASIC_ANNOTATION_BOX",
    "BASIC_COLOR_IMAGE_BOX",
    "BASIC_COLOR_PRINT_META",
    "BASIC_FILM_BOX",
    "BASIC_FILM_SESSION",
    "BASIC_GRAYSCALE_IMAGE_BOX",
    "BASIC_GRAYSCALE_PRINT_META",
    "FILM_SIZES",
    "PRESENTATION_LUT",
    "PRINTER",
    "PRINTER_CONFIGURATION",
    "PRINTER_CONFIGURATION_INSTANCE",
    "PRINTER_INSTANCE",
    "PRINT_JOB",
    "Cell",
    "DisplayFormat",
    "PrintError",
    "PrintImage",
    "PrintStatus",
    "PresentationLut",
    "decode_image_box_item",
    "decode_image_box_values",
    "p_values_to_gray",
    "parse_presentation_lut",
    "film_size_mm",
    "image_box_item",
    "parse_display_format",
    "prepare_print_image",
    "voi_linear",
]

BASIC_FILM_SESSION = "1.2.840.10008.5.1.1.1"
BASIC_FILM_BOX = "1.2.840.10008.5.1.1.2"
BASIC_GRAYSCALE_IMAGE_BOX = "1.2.840.10008.5.1.1.4"
BASIC_COLOR_IMAGE_BOX = "1.2.840.10008.5.1.1.4.1"
BASIC_GRAYSCALE_PRINT_META = "1.2.840.10008.5.1.1.9"
BASIC_COLOR_PRINT_META = "1.2.840.10008.5.1.1.18"
PRINT_JOB = "1.2.840.10008.5.1.1.14"
BASIC_ANNOTATION_BOX = "1.2.840.10008.5.1.1.15"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
PRESENTATION_LUT = "1.2.840.10008.5.1.1.23"
PRINTER_CONFIGURATION = "1.2.840.10008.5.1.1.16.376"
PRINTER_CONFIGURATION_INSTANCE = "1.2.840.10008.5.1.1.17.376"

#: Film Size ID defined terms (PS3.3 C.13.8) -> (width, height) in millimetres, portrait
FILM_SIZES: dict[str, tuple[float, float]] = {
    "8INX10IN": (203.2, 254.0),
    "8_5INX11IN": (215.9, 279.4),
    "10INX12IN": (254.0, 304.8),
    "10INX14IN": (254.0, 355.6),
    "11INX14IN": (279.4, 355.6),
    "11INX17IN": (279.4, 431.8),
    "14INX14IN": (355.6, 355.6),
    "14INX17IN": (355.6, 431.8),
    "24CMX24CM": (240.0, 240.0),
    "24CMX30CM": (240.0, 300.0),
    "A4": (210.0, 297.0),
    "A3": (297.0, 420.0),
}


class PrintStatus(IntEnum):
    """The Print Management statuses of PS3.4 H.4 (the general ones are :class:`pacskit.dicom.status.Status`)."""

    MEMORY_ALLOCATION_NOT_SUPPORTED = 0xB600
    COLLATION_NOT_SUPPORTED = 0xB601
    SESSION_EMPTY_PAGE = 0xB602  # film session: no image box has an image
    FILM_BOX_EMPTY_PAGE = 0xB603  # film box: no image box has an image
    IMAGE_DEMAGNIFIED = 0xB604
    DENSITY_OUT_OF_RANGE = 0xB605  # Min/Max Density outside the printer's range: its own used
    IMAGE_CROPPED = 0xB609
    IMAGE_DECIMATED = 0xB60A
    NO_FILM_BOXES = 0xC600  # film session N-ACTION without film boxes
    SESSION_QUEUE_FULL = 0xC601  # film session N-ACTION: no print job could be made
    FILM_BOX_QUEUE_FULL = 0xC602  # film box N-ACTION: no print job could be made
    IMAGE_TOO_LARGE = 0xC603
    INSUFFICIENT_MEMORY = 0xC605
    COMBINED_IMAGE_TOO_LARGE = 0xC613
    FILM_BOX_NOT_PRINTED = 0xC616


class PrintError(DimseRefusal):
    """A print request the SCP refuses (or warns about): ``status`` is the DIMSE status to answer,
    ``tag`` the attribute at fault (Attribute Identifier List), ``comment`` one line for Error Comment."""


def film_size_mm(film_size_id: str, orientation: str = "PORTRAIT") -> tuple[float, float]:
    """(width, height) in mm of ``film_size_id`` in ``orientation``; ``KeyError`` for an unknown size."""
    width, height = FILM_SIZES[film_size_id.strip().upper()]
    if orientation.strip().upper() == "LANDSCAPE":
        width, height = max(width, height), min(width, height)
    return width, height


# ---------------------------------------------------------------------------------- display format


@dataclass(frozen=True, slots=True)
class Cell:
    """One image box's place on the film, as fractions of the printable area (origin top left)."""

    position: int  # Image Position (2020,0010), 1-based
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class DisplayFormat:
    """A parsed Image Display Format: ``cells`` in Image Position order."""

    text: str
    cells: tuple[Cell, ...]

    @property
    def image_boxes(self) -> int:
        return len(self.cells)


def parse_display_format(text: str, max_boxes: int = 64) -> DisplayFormat:
    """Parse Image Display Format (2010,0010) (PS3.3 C.13.8): ``STANDARD\\C,R`` (C columns, R rows;
    positions left to right, then top to bottom), ``ROW\\n1,n2,…`` (one row per value with that many
    images), ``COL\\n1,n2,…`` (one column per value; positions top to bottom, then left to right).
    ``ValueError`` with a reason for anything else (SLIDE, SUPERSLIDE and CUSTOM are not supported),
    for a zero count, or for more than ``max_boxes`` image boxes."""
    raw = text.strip()
    kind, sep, rest = raw.partition("\\")
    kind = kind.strip().upper()
    if not sep:
        raise ValueError(f"image display format {raw!r}: expected STANDARD\\C,R, ROW\\… or COL\\…")
    try:
        numbers = [int(v) for v in rest.replace(" ", "").split(",")]
    except ValueError:
        raise ValueError(f"image display format {raw!r}: the counts must be integers") from None
    if any(n < 1 or n > max_boxes for n in numbers):
        raise ValueError(f"image display format {raw!r}: every count must be 1..{max_boxes}")
    cells: list[Cell] = []
    if kind == "STANDARD":
        if len(numbers) != 2:
            raise ValueError(f"image display format {raw!r}: STANDARD takes columns,rows")
        columns, rows = numbers
        if columns * rows > max_boxes:
            raise ValueError(f"image display format {raw!r}: {columns * rows} image boxes, at most {max_boxes}")
        for r in range(rows):
            for c in range(columns):
                cells.append(Cell(len(cells) + 1, c / columns, r / rows, 1 / columns, 1 / rows))
    elif kind == "ROW":
        if sum(numbers) > max_boxes:
            raise ValueError(f"image display format {raw!r}: {sum(numbers)} image boxes, at most {max_boxes}")
        for r, count in enumerate(numbers):
            for c in range(count):
                cells.append(Cell(len(cells) + 1, c / count, r / len(numbers), 1 / count, 1 / len(numbers)))
    elif kind == "COL":
        if sum(numbers) > max_boxes:
            raise ValueError(f"image display format {raw!r}: {sum(numbers)} image boxes, at most {max_boxes}")
        for c, count in enumerate(numbers):
            for r in range(count):
                cells.append(Cell(len(cells) + 1, c / len(numbers), r / count, 1 / len(numbers), 1 / count))
    else:
        raise ValueError(f"image display format {raw!r}: {kind or 'empty'} is not supported (STANDARD, ROW, COL)")
    return DisplayFormat(raw, tuple(cells))


# ---------------------------------------------------------------------------------- pixels


@dataclass(slots=True)
class PrintImage:
    """Pixels ready for an Image Box: ``pixels`` is (rows, columns) for grayscale (MONOCHROME2,
    0..2**bits-1) or (rows, columns, 3) uint8 RGB."""

    pixels: npt.NDArray[Any]
    bits: int  # 8 or 12 (grayscale); 8 for RGB

    @property
    def color(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])


def voi_linear(values: npt.NDArray[Any], center: float, width: float, out_max: int) -> npt.NDArray[np.float64]:
    """The LINEAR VOI function of PS3.3 C.11.2.1.2.1 onto 0..``out_max`` (float, not rounded)."""
    import numpy as np

    x = values.astype(np.float64)
    if width < 1:
        width = 1.0
    if width == 1:  # degenerate window: a threshold at the centre
        return np.where(x <= center - 0.5, 0.0, float(out_max))
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * out_max
    low = x <= center - 0.5 - (width - 1) / 2
    high = x > center - 0.5 + (width - 1) / 2
    y = np.where(low, 0.0, np.where(high, float(out_max), y))
    return np.asarray(np.clip(y, 0, out_max), dtype=np.float64)


def _first(value: Any) -> float:
    if value is None:
        raise ValueError("empty")
    try:
        return float(value[0]) if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") else float(value)
    except TypeError:
        return float(value)


def prepare_print_image(
    ds: Dataset,
    *,
    bits: int = 8,
    color: bool = False,
    window: tuple[float, float] | None = None,
    frame: int = 0,
) -> PrintImage:
    """The pixels of ``ds`` (frame ``frame``) as an Image Box wants them.

    Grayscale: the Modality LUT (Rescale Slope/Intercept or the Modality LUT Sequence), then the VOI:
    ``window`` (centre, width) if given, else the dataset's first Window Center/Width, else its VOI LUT
    Sequence, else the full range of the values; rescaled to 0..2**bits-1 (``bits`` 8 or 12) and
    MONOCHROME1 inverted, so the result is always MONOCHROME2. Colour (RGB, YBR_*, PALETTE COLOR):
    converted to 8-bit RGB. ``color`` asks for RGB output (a grayscale image is replicated into three
    samples); a colour image printed in grayscale is reduced to its luminance (ITU-R BT.601).
    """
    import numpy as np
    from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

    if bits not in (8, 12):
        raise ValueError("bits must be 8 or 12")
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        if not 0 <= frame < frames:
            raise ValueError(f"frame {frame} out of range (the image has {frames})")
        arr = arr[frame]
    elif frame != 0:
        raise ValueError(f"frame {frame} out of range (the image has 1)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples == 3 or photometric == "PALETTE COLOR":
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)
            bits_in = int(ds.RedPaletteColorLookupTableDescriptor[2])
            if bits_in > 8:
                rgb = np.round(rgb.astype(np.float64) * 255 / (2**bits_in - 1))
        else:
            rgb = arr  # pydicom 3 already gives YBR_FULL / YBR_FULL_422 / JPEG YBR as RGB (as_rgb)
            stored = int(ds.get("BitsStored", 8) or 8)
            if stored > 8:
                rgb = np.round(rgb.astype(np.float64) * 255 / (2**stored - 1))
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        if color:
            return PrintImage(np.ascontiguousarray(rgb), 8)
        luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        out_max = 2**bits - 1
        gray = np.round(luma * out_max / 255).astype(np.uint8 if bits == 8 else np.uint16)
        return PrintImage(gray, bits)
    out_max = 2**bits - 1
    values = apply_modality_lut(arr, ds)
    if window is not None:
        scaled = voi_linear(values, window[0], window[1], out_max)
    elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None and ds.WindowWidth is not None:
        scaled = voi_linear(values, _first(ds.WindowCenter), _first(ds.WindowWidth), out_max)
    elif "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        # the LUT is indexed by whole numbers: the Modality LUT's output, rounded (pydicom warns on floats)
        lut_out = apply_voi_lut(np.round(values).astype(np.int64), ds, prefer_lut=True).astype(np.float64)
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        scaled = lut_out * out_max / (2**depth - 1)
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values.astype(np.float64) - low) * out_max / (high - low) if high > low else np.zeros(values.shape)
    if photometric == "MONOCHROME1":
        scaled = out_max - scaled
    pixels = np.clip(np.round(scaled), 0, out_max).astype(np.uint8 if bits == 8 else np.uint16)
    if color:
        return PrintImage(np.repeat((pixels if bits == 8 else np.right_shift(pixels, 4)).astype(np.uint8)[..., None], 3, axis=2), 8)
    return PrintImage(pixels, bits)


def image_box_item(image: PrintImage) -> Dataset:
    """The Basic Grayscale Image Sequence (2020,0110) or Basic Color Image Sequence (2020,0111) item
    for ``image``: MONOCHROME2 8 bits in 8 or 12 bits in 16; RGB 8 bits, color-by-plane (Planar
    Configuration 1, as PS3.3 C.13.5.1 requires for the Basic Color Image Box)."""
    import numpy as np
    from pydicom.dataset import Dataset

    item = Dataset()
    item.Rows = image.rows
    item.Columns = image.columns
    item.PixelAspectRatio = [1, 1]
    item.PixelRepresentation = 0
    if image.color:
        item.SamplesPerPixel = 3
        item.PhotometricInterpretation = "RGB"
        item.PlanarConfiguration = 1
        item.BitsAllocated = 8
        item.BitsStored = 8
        item.HighBit = 7
        item.PixelData = np.ascontiguousarray(np.moveaxis(image.pixels.astype(np.uint8), 2, 0)).tobytes()
        return item
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.BitsAllocated = 8 if image.bits == 8 else 16
    item.BitsStored = image.bits
    item.HighBit = image.bits - 1
    dtype = np.uint8 if image.bits == 8 else np.dtype("<u2")
    item.PixelData = np.ascontiguousarray(image.pixels.astype(dtype)).tobytes()
    return item


_PIXEL_DATA = 0x7FE00010


def decode_image_box_item(item: Dataset, *, color: bool, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The pixels of an Image Box sequence item as 8-bit MONOCHROME2 (rows, columns) or RGB
    (rows, columns, 3), for printing with the identity Presentation LUT (see
    :func:`decode_image_box_values` for the checks and statuses)."""
    values, bits = decode_image_box_values(item, color=color, max_pixels=max_pixels)
    if color:
        return values.astype("uint8")
    return p_values_to_gray(values, bits)


def decode_image_box_values(item: Dataset, *, color: bool, max_pixels: int) -> tuple[npt.NDArray[Any], int]:
    """The P-values of an Image Box sequence item and their bit depth: (rows, columns) uint8 or uint16,
    MONOCHROME1 turned into MONOCHROME2 (max - value), or (rows, columns, 3) uint8 RGB with 8.
    Raises :class:`PrintError` with the PS3.4 H / PS3.7 status: 0x0120 a missing attribute, 0x0106 an
    invalid value (photometric interpretation, bits, a Pixel Data length that does not match Rows x
    Columns x samples), 0xC605 more than ``max_pixels`` pixels."""
    import numpy as np

    def need(keyword: str, tag: int) -> Any:
        value = item.get(keyword)
        if value is None or value == "":
            raise PrintError(Status.MISSING_ATTRIBUTE, f"image box item without {keyword}", tag)
        return value

    rows = int(need("Rows", 0x00280010))
    columns = int(need("Columns", 0x00280011))
    samples = int(item.get("SamplesPerPixel", 3 if color else 1) or 0)
    photometric = str(item.get("PhotometricInterpretation", "RGB" if color else "MONOCHROME2")).strip().upper()
    allocated = int(need("BitsAllocated", 0x00280100))
    stored = int(item.get("BitsStored", allocated) or allocated)
    if rows < 1 or columns < 1:
        raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, f"image box item of {rows} x {columns} pixels", 0x00280010)
    if rows * columns > max_pixels:
        raise PrintError(PrintStatus.INSUFFICIENT_MEMORY, f"image of {rows} x {columns} pixels is more than the {max_pixels} this printer takes")
    if int(item.get("PixelRepresentation", 0) or 0) != 0:
        raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, "signed image box pixels (Pixel Representation must be 0)", 0x00280103)
    if color:
        if samples != 3 or photometric != "RGB":
            raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, f"a color image box takes RGB with 3 samples, not {photometric} with {samples}", 0x00280004)
        if allocated != 8 or stored != 8:
            raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, f"color image box pixels must be 8 bits, not {stored} in {allocated}", 0x00280100)
    else:
        if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, f"a grayscale image box takes MONOCHROME1/2 with 1 sample, not {photometric} with {samples}", 0x00280004)
        if (allocated, stored) not in ((8, 8), (16, 12), (16, 16)):
            raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, f"grayscale image box pixels must be 8 bits in 8 or 12 in 16, not {stored} in {allocated}", 0x00280101)
    raw = item.get("PixelData")
    if raw is None:
        raise PrintError(Status.MISSING_ATTRIBUTE, "image box item without Pixel Data", _PIXEL_DATA)
    data = bytes(raw)
    expected = rows * columns * samples * (allocated // 8)
    # an odd length is padded to even on the wire
    if len(data) not in (expected, expected + (expected & 1)):
        raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, f"Pixel Data has {len(data)} bytes; {rows} x {columns} x {samples} samples of "
                                 f"{allocated} bits need {expected}", _PIXEL_DATA)
    if color:
        planar = int(item.get("PlanarConfiguration", 1) or 0)
        flat = np.frombuffer(data, dtype=np.uint8, count=expected)
        if planar == 1:
            return np.ascontiguousarray(np.moveaxis(flat.reshape(3, rows, columns), 0, 2)), 8
        return flat.reshape(rows, columns, 3).copy(), 8  # colour-by-pixel: tolerated (some SCUs send it)
    values: npt.NDArray[Any]
    if allocated == 8:
        values = np.frombuffer(data, dtype=np.uint8, count=expected).reshape(rows, columns).copy()
    else:
        mask = 2**stored - 1  # bits above High Bit are not pixel data
        values = (np.frombuffer(data, dtype="<u2", count=rows * columns).reshape(rows, columns) & mask).astype(np.uint16)
    if photometric == "MONOCHROME1":
        values = (2**stored - 1 - values).astype(values.dtype)
    return values, stored


@dataclass(frozen=True, slots=True)
class PresentationLut:
    """A Presentation LUT (PS3.3 C.11.4): ``shape`` IDENTITY or LIN OD, or a table (``lut`` with
    ``first`` the first input value mapped and ``lut_bits`` the output depth)."""

    shape: str = "IDENTITY"
    lut: Any = None
    first: int = 0
    lut_bits: int = 8


def parse_presentation_lut(ds: Dataset) -> PresentationLut:
    """Presentation LUT N-CREATE attributes -> :class:`PresentationLut`; :class:`PrintError` 0x0106 for
    an unknown shape or a malformed table, 0x0120 when neither is there."""
    import numpy as np

    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    seq = ds.get("PresentationLUTSequence")
    if shape and seq:
        raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, "Presentation LUT Shape and Sequence both given", 0x20500020)
    if shape:
        if shape not in ("IDENTITY", "LIN OD"):
            raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, f"Presentation LUT Shape {shape!r}: IDENTITY or LIN OD", 0x20500020)
        return PresentationLut(shape)
    if not seq:
        raise PrintError(Status.MISSING_ATTRIBUTE, "Presentation LUT without Shape or Sequence", 0x20500020)
    item = seq[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
        table = np.asarray(data if not isinstance(data, bytes) else np.frombuffer(data, "<u2"), dtype=np.int64)
    except (AttributeError, TypeError, ValueError):
        raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, "Presentation LUT Sequence without a valid LUT", 0x20500010) from None
    entries = entries or 65536
    if len(table) != entries or not 8 <= bits <= 16 or table.min() < 0 or table.max() >= 2**bits:
        raise PrintError(Status.INVALID_ATTRIBUTE_VALUE, "Presentation LUT Descriptor does not match its LUT Data", 0x20500010)
    return PresentationLut("TABLE", table, first, bits)


def p_values_to_gray(values: npt.NDArray[Any], bits: int, lut: PresentationLut | None = None,
                     min_density: int = 20, max_density: int = 320) -> npt.NDArray[np.uint8]:
    """Grayscale P-values (0..2**bits-1) to 8-bit grey on paper (0 black, 255 white) through the
    Presentation LUT: IDENTITY (and none) linear; a table first (its output linear); LIN OD linear in
    optical density between Min Density (white) and Max Density (black), hundredths of OD, so the grey
    (reflectance) is 255 * 10 ** (-(D - Dmin))."""
    import numpy as np

    top = float(2**bits - 1)
    p = values.astype(np.float64)
    if lut is not None and lut.shape == "TABLE":
        index = np.clip(values.astype(np.int64) - lut.first, 0, len(lut.lut) - 1)
        p = lut.lut[index].astype(np.float64)
        top = float(2**lut.lut_bits - 1)
    if lut is not None and lut.shape == "LIN OD":
        span = max(0, max_density - min_density) / 100.0
        out = 255.0 * np.power(10.0, -span * p / top)
    else:
        out = p * 255.0 / top
    return np.asarray(np.clip(np.round(out), 0, 255), dtype=np.uint8)
