"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, read from the blob store.

Instances are selected with the retrieve path of the DIMSE services
(:class:`pacskit.store.retrieve.RetrieveSelection`: unique keys -> rows, a page at a time) and sent as
``multipart/related; type="application/dicom"`` straight from their stored files: what C-STORE
received is what WADO-RS sends, byte for byte, when the client accepts the stored transfer syntax
(``transfer-syntax=*`` or that UID). Bodies are streamed: files are read in one thread hop per batch
of up to 4 MiB (big files in 1 MiB pieces), so a 1 GB study is never in memory.

Transfer syntax negotiation: the Accept header's ``transfer-syntax`` parameters in preference order;
none means Explicit VR Little Endian (PS3.18 8.7.3.5.2), ``*`` the stored syntax. An instance in
another syntax is converted with :func:`pacskit.dicom.transcode.transcode` (uncompressed syntaxes
among themselves, and decompression); a conversion that cannot be done is a 406 naming the syntaxes,
decided before the first byte is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from pydicom import dcmread
from pydicom.uid import UID

from pacskit.addins.dicomweb.common import (
    DicomWebError,
    part_header,
    closing,
)
from pacskit.addins.dicomweb.model import PIXEL_DATA, to_json
from pacskit.dicom.transcode import CannotConvert, can_convert, encodable_syntaxes, encode_frame, transcode
from pacskit.store.query.retrieve import RetrieveItem, RetrieveKeys, RetrieveSelection

if TYPE_CHECKING:
    from pacskit.store import DataStore

BATCH_BYTES = 4 * 1024 * 1024
CHUNK = 1024 * 1024
NATIVE_TS = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")

#: compressed transfer syntax -> the media type of its frames (PS3.18 Table 8.7.3-2)
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


def select(store: DataStore, study: str, series: str | None = None, instance: str | None = None) -> RetrieveSelection:
    """The stored instances of a study / series / instance (thread pool); a 404 when there are none.
    Prefetched (:class:`RetrieveSelection`): every caller here lists the whole selection at once."""
    if instance is not None:
        keys = RetrieveKeys("IMAGE", study_uids=(study,), series_uids=(series,) if series else (), sop_uids=(instance,))
    elif series is not None:
        keys = RetrieveKeys("SERIES", study_uids=(study,), series_uids=(series,))
    else:
        keys = RetrieveKeys("STUDY", study_uids=(study,))
    selection = RetrieveSelection(store.index, keys, prefetch=True)
    if selection.count == 0:
        what = "instance" if instance else "series" if series else "study"
        raise DicomWebError(404, f"no such {what} stored")
    return selection


def choose_syntax(stored: str, accepted: Sequence[str]) -> str | None:
    """The transfer syntax to send an instance stored in ``stored`` in, or ``None`` (none possible)."""
    for ts in accepted:
        if ts == "*" or ts == stored:
            return stored
        if can_convert(stored, ts):
            return ts
    return None


def check_syntaxes(selection: RetrieveSelection, accepted: Sequence[str]) -> None:
    """A 406 before anything is sent when an instance cannot be sent in any accepted syntax."""
    for _cls, stored in selection.sop_classes:
        if choose_syntax(stored, accepted) is None:
            names = ", ".join(accepted)
            raise DicomWebError(406, f"instances stored in {UID(stored).name} cannot be sent in {names}")


@dataclass(slots=True)
class _Piece:
    item: RetrieveItem
    syntax: str
    converted: str | None = None  # a temporary file of the item already in ``syntax``


def convert_first(store: DataStore, pieces: Sequence[_Piece]) -> None:
    """Convert a lone instance before anything is sent (thread pool), so that a conversion the data
    does not allow (an image too small for JPEG 2000, a codec that refuses it) is a 406, not a body
    cut short. In a study or series the instances are converted as they are sent."""
    if len(pieces) == 1 and pieces[0].syntax != pieces[0].item.transfer_syntax_uid:
        try:
            pieces[0].converted = _converted(store, pieces[0].item, pieces[0].syntax)
        except CannotConvert as exc:
            raise DicomWebError(406, f"the instance cannot be sent in {UID(pieces[0].syntax).name}: {exc}"[:300]) from None


def plan(selection: RetrieveSelection, accepted: Sequence[str], boundary: str) -> tuple[list[_Piece], int | None]:
    """Every selected instance with the syntax it is sent in (thread pool), and the length of the
    whole body when nothing is converted (then it is sent with a Content-Length, which saves a copy
    of every chunk in the HTTP layer)."""
    pieces = [_Piece(item, choose_syntax(item.transfer_syntax_uid, accepted) or accepted[0]) for item in selection]
    if any(p.syntax != p.item.transfer_syntax_uid for p in pieces):
        return pieces, None
    total = len(closing(boundary))
    for p in pieces:
        total += len(_header(boundary, p.syntax)) + p.item.size + 2
    return pieces, total


#: a body of at most this many bytes (stored files, nothing converted) is read whole in the thread
#: hop that plans it and sent as one message: the streaming machinery (a producer task, a queue, one
#: more thread hop, an ASGI message per piece) costs more than copying it once into one bytes object
WHOLE_BODY_BYTES = 1024 * 1024


@dataclass(slots=True)
class Prepared:
    """What :func:`prepare` decided: the pieces, the body's length when known, and the whole body
    when it is small (:data:`WHOLE_BODY_BYTES`)."""

    pieces: list[_Piece]
    length: int | None
    whole: bytes | None


def prepare(store: DataStore, study: str, series: str | None, instance: str | None, accepted: Sequence[str],
            boundary: str) -> Prepared:
    """Everything before the first byte of a WADO-RS retrieve, in one thread hop: select (404), check
    the syntaxes (406), plan, convert a lone instance (406), and read a small body whole."""
    selection = select(store, study, series, instance)
    check_syntaxes(selection, accepted)
    pieces, length = plan(selection, accepted, boundary)
    convert_first(store, pieces)
    whole = None
    if length is not None and length <= WHOLE_BODY_BYTES:
        try:  # each file's size is checked against the index: a damaged one is an error, never sent
            whole = b"".join([*_read_batch(store, pieces, boundary), closing(boundary)])
        except SizeChanged as exc:
            raise DicomWebError(500, f"a stored file is damaged (pacskit check): {exc}") from exc
    return Prepared(pieces, length, whole)


def _header(boundary: str, syntax: str) -> bytes:
    return part_header(boundary, f"application/dicom; transfer-syntax={syntax}")


class SizeChanged(RuntimeError):
    """A stored file is not the size the index recorded: the body already announced cannot be sent."""


def _read_batch(store: DataStore, batch: Sequence[_Piece], boundary: str) -> list[bytes]:
    """Part headers and bodies of stored files (one thread hop for the batch). The file data is not
    joined (a copy of every byte costs more than the extra trip through the HTTP stack: measured 1.33
    vs 1.10 CPU s/GB), but each CRLF goes with the next part's header: two pieces per instance."""
    out: list[bytes] = []
    trailer = b""
    for piece in batch:
        with store.blobs.open(piece.item.blob_key) as fh:
            data = fh.read()
        if len(data) != piece.item.size:
            raise SizeChanged(f"{piece.item.sop_instance_uid}: {len(data)} bytes stored, {piece.item.size} indexed")
        out += (trailer + _header(boundary, piece.syntax), data)
        trailer = b"\r\n"
    out.append(trailer)
    return out


def _converted(store: DataStore, item: RetrieveItem, target: str) -> str:
    """A temporary file holding ``item`` re-encoded in ``target`` (the caller deletes it)."""
    src = store.blobs.path(item.blob_key)
    tmp_src = None
    if src is None:  # a blob store without paths: a local copy first
        fd, tmp_src = tempfile.mkstemp(suffix=".dcm", dir=store.temp_dir)
        with os.fdopen(fd, "wb") as out, store.blobs.open(item.blob_key) as fh:
            while chunk := fh.read(CHUNK):
                out.write(chunk)
        src = tmp_src
    fd, dest = tempfile.mkstemp(suffix=".dcm", dir=store.temp_dir)
    os.close(fd)
    try:
        transcode(src, dest, target)
    except BaseException:
        os.unlink(dest)
        raise
    finally:
        if tmp_src:
            os.unlink(tmp_src)
    return dest


async def _batches(store: DataStore, pieces: Sequence[_Piece], boundary: str, log: Any) -> AsyncIterator[list[bytes]]:
    """Lists of body pieces: small stored files a batch of up to 4 MiB per thread hop, big or
    converted files 1 MiB at a time."""
    batch: list[_Piece] = []
    size = 0
    for piece in pieces:
        item = piece.item
        if piece.syntax == item.transfer_syntax_uid and item.size <= BATCH_BYTES:
            batch.append(piece)
            size += item.size
            if size >= BATCH_BYTES:
                yield await asyncio.to_thread(_read_batch, store, batch, boundary)
                batch, size = [], 0
            continue
        if batch:
            yield await asyncio.to_thread(_read_batch, store, batch, boundary)
            batch, size = [], 0
        async for chunk in _stream_one(store, piece, boundary, log):
            yield [chunk]
    if batch:
        yield await asyncio.to_thread(_read_batch, store, batch, boundary)
    yield [closing(boundary)]


async def stream_instances(store: DataStore, pieces: Sequence[_Piece], boundary: str, log: Any) -> AsyncIterator[bytes]:
    """The multipart body of ``pieces``. The next batch is read while the current one is being sent
    (a queue of two batches: at most ~12 MiB in memory whatever the study's size)."""
    queue: asyncio.Queue[list[bytes] | BaseException | None] = asyncio.Queue(maxsize=2)

    async def produce() -> None:
        try:
            async for chunk in _batches(store, pieces, boundary, log):
                await queue.put(chunk)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put(exc)

    task = asyncio.get_running_loop().create_task(produce())
    try:
        while (got := await queue.get()) is not None:
            if isinstance(got, BaseException):
                log.error("WADO-RS body aborted: %s", got)
                raise got
            for chunk in got:
                yield chunk
    finally:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - already reported
            pass
        for piece in pieces:  # converted up front but never sent (the client went away)
            if piece.converted is not None:
                with contextlib.suppress(OSError):
                    os.unlink(piece.converted)
                piece.converted = None


async def _stream_one(store: DataStore, piece: _Piece, boundary: str, log: Any) -> AsyncIterator[bytes]:
    """One big or converted instance, 1 MiB at a time."""
    item, syntax = piece.item, piece.syntax
    temp = piece.converted
    if syntax != item.transfer_syntax_uid and temp is None:
        try:
            temp = await asyncio.to_thread(_converted, store, item, syntax)
        except CannotConvert as exc:
            # decided up front by check_syntaxes; the data itself failed: the body cannot be completed
            log.error("WADO-RS: %s cannot be converted to %s: %s", item.sop_instance_uid, syntax, exc)
            raise
    fh: BinaryIO = await asyncio.to_thread(open, temp, "rb") if temp else await asyncio.to_thread(store.blobs.open, item.blob_key)
    try:
        yield _header(boundary, syntax)
        sent = 0
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            sent += len(chunk)
            yield chunk
        if temp is None and sent != item.size:
            raise SizeChanged(f"{item.sop_instance_uid}: {sent} bytes stored, {item.size} indexed")
        yield b"\r\n"
    finally:
        fh.close()
        if temp:
            os.unlink(temp)
            piece.converted = None


# --- metadata -------------------------------------------------------------------------------------------


def _bulk_path(path: tuple[int, ...]) -> str:
    return "/".join(f"{p:08X}" if i % 2 == 0 else str(p) for i, p in enumerate(path))


def instance_metadata(store: DataStore, item: RetrieveItem, instance_url: str, threshold: int) -> dict[str, Any]:
    """The DICOM JSON of one stored instance: every attribute but the pixel data's value, which is a
    BulkDataURI, as are binary values above ``threshold`` bytes. Never reads the pixel data."""
    with store.blobs.open(item.blob_key) as fh:
        ds = dcmread(fh, stop_before_pixels=True, defer_size=threshold, force=True)
        obj = to_json(ds, lambda path: f"{instance_url}/bulk/{_bulk_path(path)}", threshold=threshold)
        pixel_vr = _pixel_data_vr(fh, ds)
    if pixel_vr is not None:
        obj[f"{PIXEL_DATA:08X}"] = {"vr": pixel_vr, "BulkDataURI": f"{instance_url}/bulk/{PIXEL_DATA:08X}"}
    return dict(sorted(obj.items()))


def _pixel_data_vr(fh: BinaryIO, ds: Any) -> str | None:
    """The VR of the Pixel Data element the file continues with (``stop_before_pixels`` leaves the file
    there), or ``None`` when it has none."""
    head = fh.read(8)
    if len(head) < 8:
        return None
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    if syntax == "1.2.840.10008.1.2.2":
        group, elem = struct.unpack(">HH", head[:4])
    else:
        group, elem = struct.unpack("<HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA:
        return None
    if syntax.is_implicit_VR:
        return "OW" if int(ds.get("BitsAllocated", 16) or 16) > 8 else "OB"
    vr = head[4:6].decode("ascii", "replace")
    return vr if vr in ("OB", "OW") else "OB"


async def stream_metadata(store: DataStore, selection: RetrieveSelection, base: str, study: str,
                          series_of: Callable[[RetrieveItem], str], threshold: int) -> AsyncIterator[bytes]:
    """A JSON array of every selected instance's metadata, 64 instances per thread hop."""
    first = True
    last = 0
    yield b"["
    while True:
        page = await asyncio.to_thread(selection.page, last)
        if not page:
            break
        last = page[-1].pk
        for start in range(0, len(page), 64):
            chunk = page[start:start + 64]

            def build(chunk: list[RetrieveItem] = chunk) -> bytes:
                parts = []
                for item in chunk:
                    url = f"{base}/studies/{study}/series/{series_of(item)}/instances/{item.sop_instance_uid}"
                    parts.append(json.dumps(instance_metadata(store, item, url, threshold), separators=(",", ":")))
                return ",".join(parts).encode()

            data = await asyncio.to_thread(build)
            yield data if first else b"," + data
            first = False
    yield b"]"


def series_uids(store: DataStore, selection: RetrieveSelection) -> dict[int, str]:
    """Instance row id -> its SeriesInstanceUID, for the URLs of a study's metadata."""
    from sqlalchemy import select as sql_select

    from pacskit.store import Instance, Series, Study

    study_uids = selection.keys.study_uids
    stmt = (sql_select(Instance.pk, Series.series_instance_uid)
            .join(Series, Series.pk == Instance.series_fk).join(Study, Study.pk == Series.study_fk)
            .where(Study.study_instance_uid.in_(study_uids)))
    if selection.keys.series_uids:
        stmt = stmt.where(Series.series_instance_uid.in_(selection.keys.series_uids))
    with store.index.reading() as s:
        return {int(pk): str(uid) for pk, uid in s.execute(stmt).all()}


# --- frames and bulk data ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Frames:
    """Frames of one instance: their bytes, how they are encoded and the media type to send them as."""

    data: list[bytes]
    media_type: str
    transfer_syntax: str | None  # the compressed syntax, None for native frames


def _open_header(fh: BinaryIO) -> Any:
    return dcmread(fh, stop_before_pixels=True, force=True)


def _number_of_frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def read_frames(store: DataStore, item: RetrieveItem, numbers: Sequence[int], want_native: bool,
                compressed_ok: Sequence[str]) -> Frames:
    """The frames ``numbers`` (1-based) of an instance. Native stored frames are read by offset; a
    compressed instance's frames are returned as stored when the client accepts that syntax (or
    ``*``), else decoded to native (``want_native``), else encoded in the first accepted syntax an
    installed encoder writes losslessly (:func:`pacskit.dicom.transcode.encodable_syntaxes`), as are
    native frames asked for in a compressed syntax only; otherwise a 406 saying why."""
    with store.blobs.open(item.blob_key) as fh:
        ds = _open_header(fh)
        count = _number_of_frames(ds)
        bad = [n for n in numbers if n < 1 or n > count]
        if bad:
            raise DicomWebError(404, f"frame {bad[0]} does not exist (the instance has {count})")
        head = fh.read(12)
        if len(head) < 8 or struct.unpack("<HH", head[:4]) != (0x7FE0, 0x0010):
            raise DicomWebError(404, "the instance has no pixel data")
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
        encode_into = next((ts for ts in compressed_ok if ts in encodable_syntaxes() and ts != syntax), None)
        if syntax in NATIVE_TS:
            if not want_native and encode_into is None:
                raise DicomWebError(406, f"frames are stored uncompressed and cannot be encoded in "
                                         f"{', '.join(compressed_ok)}; accept application/octet-stream "
                                         f"or one of {', '.join(encodable_syntaxes())}")
            value_at = fh.tell() - 12 + (8 if syntax == "1.2.840.10008.1.2" else 12)
            frame_bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated)
            out = []
            for n in numbers:
                if frame_bits % 8 == 0:
                    fh.seek(value_at + (n - 1) * frame_bits // 8)
                    out.append(fh.read(frame_bits // 8))
                else:  # 1-bit frames packed across byte boundaries: unpack via pydicom
                    fh.seek(0)
                    out.append(_decoded_frame(fh, n))
            if want_native:
                return Frames(out, "application/octet-stream", None)
            assert encode_into is not None
            return _encoded(out, ds, encode_into, decoded=False)
        if syntax in FRAME_MEDIA_TYPES and (syntax in compressed_ok or "*" in compressed_ok):
            from pydicom.encaps import get_frame

            fh.seek(fh.tell() - 12 + 12)  # the value of an encapsulated Pixel Data: after its 12-byte header
            data_start = fh.tell()
            out = []
            for n in numbers:
                fh.seek(data_start)
                out.append(get_frame(fh, n - 1, number_of_frames=count))
            return Frames(out, FRAME_MEDIA_TYPES[syntax], syntax)
        if not want_native and encode_into is None:
            raise DicomWebError(406, f"frames are stored in {UID(syntax).name} and cannot be encoded in "
                                     f"{', '.join(compressed_ok)}; accept it or application/octet-stream")
        out = []
        for n in numbers:
            fh.seek(0)
            out.append(_decoded_frame(fh, n))
        if want_native:
            return Frames(out, "application/octet-stream", None)
        assert encode_into is not None
        return _encoded(out, ds, encode_into, decoded=True)


def _encoded(frames: list[bytes], ds: Any, target: str, *, decoded: bool) -> Frames:
    """Native little endian frames encoded in ``target``; ``decoded``: they come from pydicom's
    decoder (colour as RGB, interleaved)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1))
    planar = int(ds.get("PlanarConfiguration", 0) or 0)
    if decoded and samples == 3:
        photometric, planar = "RGB", 0
    try:
        out = [encode_frame(f, target, rows=int(ds.Rows), columns=int(ds.Columns), samples_per_pixel=samples,
                            bits_allocated=int(ds.BitsAllocated), bits_stored=int(ds.get("BitsStored", ds.BitsAllocated)),
                            pixel_representation=int(ds.get("PixelRepresentation", 0)),
                            photometric_interpretation=photometric, planar_configuration=planar)
               for f in frames]
    except CannotConvert as exc:
        raise DicomWebError(406, str(exc)[:200]) from None
    return Frames(out, FRAME_MEDIA_TYPES[target], target)


def _decoded_frame(fh: BinaryIO, number: int) -> bytes:
    from pydicom.pixels.utils import pixel_array

    try:
        arr = pixel_array(fh, index=number - 1)
    except Exception as exc:  # noqa: BLE001 - no decoder for it, corrupt data
        raise DicomWebError(406, f"the frame cannot be decoded: {exc}"[:200]) from None
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def read_bulk(store: DataStore, item: RetrieveItem, path: Sequence[str]) -> bytes:
    """The value of the element at ``path`` (tag, item index, tag, ...) of an instance."""
    with store.blobs.open(item.blob_key) as fh:
        ds = dcmread(fh, force=True, defer_size=1024)
        node: Any = ds
        try:
            for i, part in enumerate(path):
                if i % 2 == 0:
                    node = node[int(part, 16)]
                    if i < len(path) - 1:
                        node = node.value
                else:
                    node = node[int(part)]
        except (KeyError, IndexError, ValueError, TypeError):
            raise DicomWebError(404, f"no bulk data at {'/'.join(path)[:80]}") from None
        value = getattr(node, "value", None)
        if not isinstance(value, (bytes, bytearray)):
            raise DicomWebError(404, f"{'/'.join(path)[:80]} is not bulk data")
        return bytes(value)


def frame_list(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5]; a 400 for anything else."""
    try:
        numbers = [int(p) for p in text.split(",")]
    except ValueError:
        raise DicomWebError(400, f"frame list must be comma-separated numbers, not {text[:40]!r}") from None
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 10000:
        raise DicomWebError(400, "frame numbers start at 1")
    return numbers
