"""Rendered and thumbnail resources (PS3.18 8.3.5.1, 10.4.1.1.3): a frame as a consumer image.

A frame is decoded with pydicom (pylibjpeg / openjpeg for compressed syntaxes), the Modality LUT
applied (RescaleSlope / RescaleIntercept), then the VOI LUT as a window: the request's ``window``
(center, width, function LINEAR / LINEAR_EXACT / SIGMOID), else the instance's first WindowCenter /
WindowWidth, else its minimum to maximum. MONOCHROME1 is inverted; colour frames are sent as RGB.
``viewport`` (vw,vh) scales the image to fit inside vw x vh keeping its aspect ratio; ``quality``
(1-100) is the JPEG quality. Media types: ``image/jpeg`` (default), ``image/png``.

Study and series ``/rendered`` answer ``multipart/related`` with one rendered image per instance
that has one (its first frame); study and series ``/thumbnail`` render a representative instance
(:func:`representatives`). Rendered images are kept in a :class:`RenderCache` (bounded in bytes,
keyed by the stored file and the parameters), so a search page showing 50 study thumbnails again
costs 50 index lookups, not 50 decodes.

Not supported (a 400 says so): the crop form of viewport (vw,vh,sx,sy,sw,sh), ``annotation``,
``iccprofile``, ``charset``; multi-frame instances render their first frame (GIF / video are not
produced).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
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

    def key(self, item: RetrieveItem, frame: int) -> str:
        """What identifies the image rendered from ``frame`` of ``item`` with these parameters (the
        stored file, by blob key and size: an overwritten instance gets a new key): the cache key,
        and the ETag sent with it."""
        text = repr((item.blob_key, item.size, frame, self.media_type, self.window, self.viewport, self.quality))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class RenderCache:
    """Rendered images by :meth:`RenderParams.key`, least recently used dropped beyond ``max_bytes``.
    Thread-safe (renders run in the thread pool)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._images.get(key)
            if data is None:
                self.misses += 1
                return None
            self._images.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:
            return  # a huge image would push out everything else
        with self._lock:
            old = self._images.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._images[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._images:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= len(dropped)


def render_cached(cache: RenderCache | None, store: DataStore, item: RetrieveItem, frame: int,
                  params: RenderParams) -> bytes:
    """:func:`render` through ``cache`` (thread pool)."""
    if cache is None:
        return render(store, item, frame, params)
    key = params.key(item, frame)
    data = cache.get(key)
    if data is None:
        data = render(store, item, frame, params)
        cache.put(key, data)
    return data


#: Modalities whose instances are not images: a study's thumbnail comes from another series first
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "RTPLAN", "RTRECORD", "RTSTRUCT", "REG", "FID",
                                  "ECG", "HD", "AU", "PLAN"})


def representatives(store: DataStore, study: str, series: str | None, limit: int = 4) -> list[RetrieveItem]:
    """Up to ``limit`` instances to draw a study's (or series') thumbnail from, best first: the middle
    instance (by InstanceNumber) of each series, image series before the others, then by
    SeriesNumber. Two indexed queries whatever the study's size (thread pool)."""
    from sqlalchemy import select

    from pacskit.store import Instance, Series, Study
    from pacskit.store.query.retrieve import RetrieveItem

    stmt = (select(Series.pk, Series.modality, Series.series_number, Series.num_instances)
            .join(Study, Study.pk == Series.study_fk).where(Study.study_instance_uid == study))
    if series is not None:
        stmt = stmt.where(Series.series_instance_uid == series)
    out: list[RetrieveItem] = []
    with store.index.reading() as s:
        rows = s.execute(stmt).all()
        rows.sort(key=lambda r: (str(r[1] or "").upper() in NON_IMAGE_MODALITIES,
                                 r[2] is None, r[2] or 0, r[0]))
        for series_pk, _modality, _number, count in rows[:limit]:
            pick = (select(Instance.pk, Instance.blob_key, Instance.sop_class_uid, Instance.sop_instance_uid,
                           Instance.transfer_syntax_uid, Instance.size)
                    .where(Instance.series_fk == series_pk)
                    .order_by(Instance.instance_number.is_(None), Instance.instance_number, Instance.pk)
                    .offset(max(0, int(count or 0) // 2 - (1 if int(count or 0) % 2 == 0 else 0))).limit(1))
            r = s.execute(pick).first()
            if r is None and count:  # num_instances out of date: the first one
                r = s.execute(pick.offset(0)).first()
            if r is not None:
                out.append(RetrieveItem(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4] or ""), int(r[5])))
    return out


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
