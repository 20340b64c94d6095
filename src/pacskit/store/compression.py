"""Lossless compression of stored instances, after the fact, crash-safely.

``compress(store, level, uids, syntax)`` re-encodes the Pixel Data of the selected instances that are
stored uncompressed (Explicit or Implicit VR Little Endian) in a lossless syntax with pydicom's
encoders: ``rle`` (RLE Lossless, pydicom's own), ``j2k`` (JPEG 2000 Lossless, pylibjpeg-openjpeg),
``jpeg-ls`` (JPEG-LS Lossless, needs pyjpegls). Each new encoding is decoded again and compared with
the original pixels **byte for byte** before it is kept; an instance whose round trip differs (or
that the encoder refuses: float pixels, an unsupported bit depth) is left as it was and reported.

The files are replaced with the correction machinery (:mod:`pacskit.store.correction`): new blobs
under new keys, one intent listing old and new keys, one transaction switching the rows (blob key,
size, SHA-256 and transfer syntax), then the old files deleted; a crash leaves the old or the new
copies, never neither, and ``check`` clean. Retrieve converts back to what a peer accepts
(:mod:`pacskit.dicom.transcode`, in the retrieve add-in).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from pacskit.store.correction import _apply
from pacskit.store.deletion import Deleter, Level

if TYPE_CHECKING:
    from pacskit.store.datastore import DataStore

log = logging.getLogger("pacskit.store.compression")

SYNTAXES = {"rle": str(RLELossless), "j2k": str(JPEG2000Lossless), "jpeg-ls": str(JPEGLSLossless)}
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class CompressionError(ValueError):
    """The compression cannot be done as asked (unknown syntax, encoder missing)."""


@dataclass(slots=True)
class CompressReport:
    syntax: str
    compressed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, why)

    def to_json(self) -> dict[str, Any]:
        return {"syntax": self.syntax, "compressed": self.compressed, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "skipped": [list(s) for s in self.skipped]}


def _encoder_ready(uid: str) -> None:
    from pydicom.pixels.encoders import (  # type: ignore[attr-defined]
        JPEG2000LosslessEncoder,
        JPEGLSLosslessEncoder,
        RLELosslessEncoder,
    )

    encoder = {str(RLELossless): RLELosslessEncoder, str(JPEG2000Lossless): JPEG2000LosslessEncoder,
               str(JPEGLSLossless): JPEGLSLosslessEncoder}[uid]
    if not encoder.is_available:
        raise CompressionError(f"the {encoder.UID.name} encoder needs {', '.join(encoder.missing_dependencies)}")


def compress(store: DataStore, level: Level, uids: list[str], syntax: str) -> CompressReport:
    """Compress the uncompressed instances of the selection in ``syntax`` (a key of :data:`SYNTAXES`)."""
    if syntax not in SYNTAXES:
        raise CompressionError(f"syntax must be one of {', '.join(SYNTAXES)}, not {syntax!r}")
    target = SYNTAXES[syntax]
    _encoder_ready(target)
    report = CompressReport(syntax)
    studies, rows, not_found = Deleter(store).select(level, uids)
    report.skipped.extend((uid, "not found") for uid in not_found)
    for study_pk, study_rows in rows.items():
        for row in study_rows:
            one = {study_pk: [row]}
            before = row.size
            try:
                _apply(store, one, {}, {}, lambda s: None, f"compress {row.pk}", None, None,
                       transform=lambda ds: _encode(ds, target))
            except _Skip as exc:
                report.skipped.append((_uid(store, row.pk), str(exc)))
                continue
            report.compressed += 1
            report.bytes_before += before
            found = store.index.find_instance(_uid(store, row.pk))
            if found is not None:
                report.bytes_after += store.blobs.size(found[1]) or 0
    log.info("compressed %d instances in %s (%d -> %d bytes); %d skipped", report.compressed, syntax,
             report.bytes_before, report.bytes_after, len(report.skipped))
    return report


class _Skip(Exception):
    """This instance is left as it is."""


def _uid(store: DataStore, pk: int) -> str:
    from sqlalchemy import select

    from pacskit.store.index.models import Instance

    with store.index.reading() as s:
        return s.scalar(select(Instance.sop_instance_uid).where(Instance.pk == pk)) or f"row {pk}"


def _encode(ds: Any, target: str) -> dict[str, Any]:
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts not in _UNCOMPRESSED:
        raise _Skip(f"stored in {ts}, not uncompressed")
    if "PixelData" not in ds:
        raise _Skip("no Pixel Data")
    original = ds.pixel_array.copy()
    try:
        ds.compress(target)
    except Exception as exc:
        raise _Skip(f"the encoder refused it: {exc}") from None
    import pydicom

    check = pydicom.Dataset()
    check.update(ds)
    check.file_meta = ds.file_meta
    decoded = check.pixel_array
    if decoded.dtype != original.dtype or decoded.shape != original.shape or decoded.tobytes() != original.tobytes():
        raise _Skip("the round trip was not byte-exact: kept uncompressed")
    return {"transfer_syntax_uid": target}


__all__ = ["SYNTAXES", "CompressReport", "CompressionError", "compress"]
