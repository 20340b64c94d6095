"""Rendered and thumbnail resources (PS3.18 8.3.5.1, 10.4.1.1.3): a frame as a consumer image.

A frame is decoded with pydicom (pylibjpeg / openjpeg for compressed syntaxes), the Modality LUT
applied (RescaleSlope / RescaleIntercept), then the VOI LUT as a window: the request's ``window``
(center, width, function LINEAR / LINEAR_EXACT / SIGMOID), else the instance's first WindowCenter /
WindowWidth, else its minimum to maximum. MONOCHROME1 is inverted; colour frames are sent as RGB.
``viewport`` (vw,vh) scales the image to fit inside vw x vh keeping its aspect ratio; ``quality``
(1-100) is the JPEG quality. Media types: ``image/jpeg`` (default), ``image/png``.

Not supported (a 400 says so): the crop form of viewport (vw,vh,sx,sy,sw,sh), ``annotation``,
``iccprofile``, ``charset``; multi-frame instances render their first frame (GIF / video are not
produced).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacskit.addins.dicomweb.common import DicomWebError, MediaRange

if TYPE_CHECKING:
    from pacskit.store import DataStore
    from pacskit.store.query.retrieve import RetrieveItem

RENDERED_TYPES = ("image/jpeg", "image/png")


@dataclass(slots=True)
class RenderParams:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def rendered_type(accept: Sequence[MediaRange]) -> str:
    for r in accept:
        for t in RENDERED_TYPES:
            if r.matches(t):
                return t
    raise DicomWebError(406, "rendered images are available as image/jpeg or image/png")


def parse_params(params: Sequence[tuple[str, str]], accept: Sequence[MediaRange], *,
                 default_viewport: tuple[int, int] | None = None) -> RenderParams:
    out = RenderParams(rendered_type(accept), viewport=default_viewport)
    for key, value in params:
        if key == "window":
            parts = value.split(",")
            if len(parts) not in (2, 3):
                raise DicomWebError(400, "window is center,width[,function]")
            try:
                center, width = float(parts[0]), float(parts[1])
            except ValueError:
                raise DicomWebError(400, "window center and width must be numbers") from None
            function = parts[2].strip().upper() if len(parts) == 3 else "LINEAR"
            if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
                raise DicomWebError(400, "window function is LINEAR, LINEAR_EXACT or SIGMOID with a width above 0")
            out.window = (center, width, function)
        elif key == "viewport":
            parts = value.split(",")
            if len(parts) != 2:
                raise DicomWebError(400, "viewport is vw,vh (the crop form is not supported)")
            try:
                vw, vh = int(parts[0]), int(parts[1])
            except ValueError:
                raise DicomWebError(400, "viewport must be two integers") from None
            if not (0 < vw <= 8192 and 0 < vh <= 8192):
                raise DicomWebError(400, "viewport sizes must be 1..8192")
            out.viewport = (vw, vh)
        elif key == "quality":
            try:
                out.quality = int(value)
            except ValueError:
                raise DicomWebError(400, "quality must be an integer 1..100") from None
            if not 1 <= out.quality <= 100:
                raise DicomWebError(400, "quality must be an integer 1..100")
        elif key in ("annotation", "iccprofile", "charset"):
            raise DicomWebError(400, f"{key} is not supported")
    return out


def _first(value: Any) -> float | None:
    """The first number of a DS / IS value (one value or several), ``None`` when absent or bad."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes, int, float)):
        try:
            value = list(value)[0]
        except (TypeError, IndexError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def render(store: DataStore, item: RetrieveItem, frame: int, params: RenderParams) -> bytes:
    """The encoded image of ``frame`` (1-based) of a stored instance (thread pool)."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        raise DicomWebError(406, "rendered images need numpy and Pillow on the server: pip install 'pacskit[render]'") from None
    from pydicom import dcmread
    from pydicom.pixels.utils import pixel_array

    with store.blobs.open(item.blob_key) as fh:
        ds = dcmread(fh, stop_before_pixels=True, force=True)
        if "Rows" not in ds:
            raise DicomWebError(404, "the instance has no image")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frame < 1 or frame > frames:
            raise DicomWebError(404, f"frame {frame} does not exist (the instance has {frames})")
        fh.seek(0)
        try:
            arr = pixel_array(fh, index=frame - 1)
        except Exception as exc:  # noqa: BLE001 - no decoder, corrupt data
            raise DicomWebError(406, f"the frame cannot be decoded: {exc}"[:200]) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        image = Image.fromarray(arr[..., :3].astype(np.uint8) if arr.dtype != np.uint8 else arr[..., :3], "RGB")
    else:
        data = arr.astype(np.float64)
        slope = _first(ds.get("RescaleSlope"))
        intercept = _first(ds.get("RescaleIntercept"))
        if slope is not None or intercept is not None:
            data = data * (slope if slope is not None else 1.0) + (intercept or 0.0)
        window = params.window
        if window is None:
            center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
            if center is not None and width is not None and width > 0:
                window = (center, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
        if window is None:
            lo, hi = float(data.min()), float(data.max())
            out = (data - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(data)
        else:
            c, w, function = window
            if function == "SIGMOID":
                out = 255.0 / (1.0 + np.exp(-4.0 * (data - c) / w))
            elif function == "LINEAR_EXACT":
                out = (data - (c - w / 2)) / w * 255.0
            else:  # PS3.3 C.11.2.1.2.1
                out = ((data - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else np.where(data > c - 0.5, 255.0, 0.0)
        out = np.clip(out, 0, 255).astype(np.uint8)
        if photometric == "MONOCHROME1":
            out = 255 - out
        image = Image.fromarray(out, "L")
    if params.viewport is not None:
        image.thumbnail(params.viewport, Image.Resampling.LANCZOS) if (
            image.width > params.viewport[0] or image.height > params.viewport[1]) else None
        if image.width < params.viewport[0] and image.height < params.viewport[1]:
            scale = min(params.viewport[0] / image.width, params.viewport[1] / image.height)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if params.media_type == "image/png":
        image.save(buf, "PNG")
    else:
        image.save(buf, "JPEG", quality=params.quality)
    return buf.getvalue()
