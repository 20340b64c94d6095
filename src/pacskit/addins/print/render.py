"""Film boxes to PDF pages (reportlab), one page per film box.

Geometry, so that a page rendered at the printer's ``dpi`` (``pdftoppm -r dpi``) gives the images
pixel for pixel:

- the page is the film (Film Size ID, turned for LANDSCAPE); a margin of ``margin_mm`` all round,
  and a band of text at the top and bottom when the film box has annotation boxes;
- the printable area is cut into the cells of the Image Display Format; each image is scaled to
  fit its cell with its aspect ratio kept (Pixel Aspect Ratio is taken as 1:1), centred, resampled
  here to whole printer pixels with the Magnification Type (REPLICATE: nearest neighbour, BILINEAR,
  CUBIC; NONE: one image pixel per printer pixel) and placed on whole printer pixels, so the PDF
  viewer does not resample it again at that resolution;
- Border Density paints the film around the images, Empty Image Density the cells without an image;
  BLACK / WHITE, or a density in hundredths of optical density mapped linearly between Min Density
  (white) and Max Density (black); Polarity REVERSE inverts an image; Trim YES draws a thin frame
  round each image.

Images are embedded losslessly (Flate).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacskit.dicom.printing import PresentationLut, film_size_mm, p_values_to_gray

from .session import FilmBox, ImageBox, annotation_band_mm

if TYPE_CHECKING:
    import numpy.typing as npt

MM = 72.0 / 25.4  # PDF points per millimetre


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an image lands on the page, in printer pixels from the top-left corner."""

    left: int
    top: int
    width: int
    height: int


def density_gray(value: str, min_density: int, max_density: int) -> int:
    """0 (black) .. 255 (white) for a Border / Empty Image Density."""
    value = value.strip().upper()
    if value == "BLACK":
        return 0
    if value == "WHITE":
        return 255
    d = int(value)
    span = max(1, max_density - min_density)
    return int(round(255 * min(1.0, max(0.0, (max_density - d) / span))))


def page_pixels(film_box: FilmBox, dpi: int) -> tuple[int, int]:
    width_mm, height_mm = film_size_mm(film_box.film_size, film_box.orientation)
    return round(width_mm * dpi / 25.4), round(height_mm * dpi / 25.4)


def placement(film_box: FilmBox, box: ImageBox, image_shape: Sequence[int], dpi: int, margin_mm: float,
              magnification: str) -> tuple[Placement, tuple[int, int, int, int]]:
    """The image's place on the page and its cell's (left, top, width, height), in printer pixels."""
    per_mm = dpi / 25.4
    width_mm, height_mm = film_size_mm(film_box.film_size, film_box.orientation)
    band = annotation_band_mm(film_box)
    area_left = margin_mm * per_mm
    area_top = (margin_mm + band) * per_mm
    area_w = (width_mm - 2 * margin_mm) * per_mm
    area_h = (height_mm - 2 * margin_mm - 2 * band) * per_mm
    cell = film_box.cell(box)
    c_left, c_top = round(area_left + cell.x * area_w), round(area_top + cell.y * area_h)
    c_right, c_bottom = round(area_left + (cell.x + cell.width) * area_w), round(area_top + (cell.y + cell.height) * area_h)
    cw, ch = c_right - c_left, c_bottom - c_top
    rows, cols = int(image_shape[0]), int(image_shape[1])
    if magnification == "NONE":
        scale = min(1.0, cw / cols, ch / rows)  # larger than the cell: decimated to fit (0xB60A was answered)
    else:
        scale = min(cw / cols, ch / rows)
    if box.requested_size_mm is not None:
        scale = min(scale, box.requested_size_mm * per_mm / cols)
    w, h = max(1, int(cols * scale)), max(1, int(rows * scale))
    return Placement(c_left + (cw - w) // 2, c_top + (ch - h) // 2, w, h), (c_left, c_top, cw, ch)


def _resample(pixels: npt.NDArray[Any], width: int, height: int, magnification: str) -> Any:
    from PIL import Image

    image = Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
    if image.size == (width, height):
        return image
    method = {"BILINEAR": Image.Resampling.BILINEAR, "CUBIC": Image.Resampling.BICUBIC}.get(
        magnification, Image.Resampling.NEAREST)
    if width < image.size[0] and method is Image.Resampling.NEAREST:
        method = Image.Resampling.BOX  # shrinking: average, not drop pixels
    return image.resize((width, height), method)


def render_pdf(film_boxes: Sequence[FilmBox], path: str | os.PathLike[str], *, dpi: int, margin_mm: float,
               title: str = "", author: str = "", copies: int = 1, session_lut: PresentationLut | None = None) -> int:
    """Write one page per film box to ``path`` atomically (a temp file in the same folder, then
    renamed: no partial PDF is ever visible). Returns the file's size. Grayscale P-values go through
    the Presentation LUT of the image box, else of its film box, else ``session_lut`` (the film
    session's), else the identity."""
    import numpy as np
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pageCompression=1)
    pdf.setTitle(title)
    pdf.setAuthor(author)
    pdf.setCreator("pacskit print SCP")
    pdf.setSubject(f"copies={copies}")
    pt = 72.0 / dpi  # points per printer pixel
    for film_box in film_boxes:
        page_w, page_h = page_pixels(film_box, dpi)
        pdf.setPageSize((page_w * pt, page_h * pt))
        attrs = film_box.attrs
        min_d, max_d = int(attrs["MinDensity"]), int(attrs["MaxDensity"])
        border = density_gray(str(attrs["BorderDensity"]), min_d, max_d) / 255
        empty = density_gray(str(attrs["EmptyImageDensity"]), min_d, max_d) / 255
        pdf.setFillGray(border)
        pdf.rect(0, 0, page_w * pt, page_h * pt, stroke=0, fill=1)
        for box in sorted(film_box.image_boxes.values(), key=lambda b: b.position):
            mag = box.magnification or str(attrs["MagnificationType"])
            if box.pixels is None:
                _, (left, top, cw, ch) = placement(film_box, box, (1, 1), dpi, margin_mm, mag)
                pdf.setFillGray(empty)
                pdf.rect(left * pt, (page_h - top - ch) * pt, cw * pt, ch * pt, stroke=0, fill=1)
                continue
            pixels = box.pixels
            if pixels.ndim == 2:
                lut = box.lut or film_box.lut or session_lut
                pixels = p_values_to_gray(pixels, box.bits, lut, min_d, max_d)
            if box.polarity == "REVERSE":
                pixels = (255 - pixels).astype(np.uint8)
            where, _ = placement(film_box, box, pixels.shape, dpi, margin_mm, mag)
            image = _resample(pixels, where.width, where.height, mag)
            x, y = where.left * pt, (page_h - where.top - where.height) * pt
            pdf.drawImage(ImageReader(image), x, y, where.width * pt, where.height * pt)
            if attrs.get("Trim") == "YES":
                pdf.setStrokeGray(1 - round(border))
                pdf.setLineWidth(max(pt, 0.5))
                pdf.rect(x, y, where.width * pt, where.height * pt, stroke=1, fill=0)
        if film_box.annotation_boxes:
            band = annotation_band_mm(film_box) * MM
            pdf.setFillGray(1 - round(border))
            pdf.setFont("Helvetica", min(10.0, band * 0.6))
            boxes = sorted(film_box.annotation_boxes.values(), key=lambda b: b.position)
            for ann in boxes:
                if not ann.text:
                    continue
                top_band = ann.position % 2 == 1  # odd positions at the top, even at the bottom
                y = page_h * pt - margin_mm * MM - band * 0.7 if top_band else margin_mm * MM + band * 0.3
                pdf.drawString(margin_mm * MM, y, ann.text[:200])
        pdf.showPage()
    pdf.save()
    data = buffer.getvalue()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".print-", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return len(data)
