"""STOW-RS (PS3.18 10.5): a multipart/related body of instances -> the durable ingest.

Two forms of body are taken:

* ``multipart/related; type="application/dicom"``: one Part 10 instance per part;
* ``multipart/related; type="application/dicom+json"`` (or ``+xml``): metadata and bulk data. A
  ``application/dicom+json`` part holds a JSON array of datasets (a ``application/dicom+xml`` part
  one Native DICOM Model dataset); their ``BulkDataURI`` values name other parts of the body by
  ``Content-Location`` (or ``cid:`` + ``Content-ID``). A Pixel Data part of an uncompressed type
  (``application/octet-stream``) makes a native Explicit VR Little Endian instance; a compressed
  one (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``, ``image/dicom-rle``, with an
  optional ``transfer-syntax`` parameter) is encapsulated, one fragment per frame (several parts
  with the same location are the frames in order). Each dataset becomes a Part 10 file (File Meta
  from its UIDs) and is ingested like a received one. A dataset whose BulkDataURI names no part of
  the body, that is not valid DICOM JSON, or whose Pixel Data comes without the Image Pixel
  attributes describing it (or, native, with another length) fails alone (0xC000); the rest are
  stored.

The body is parsed as it arrives (:class:`MultipartReader`): small parts are kept in memory (up to
``_MEMORY_BUDGET`` for the body), larger ones written to a temporary file beside the blob store.
Nothing is ingested until the whole body has been read and found well formed, so a broken boundary,
an oversized part or a dropped connection stores nothing. Then every instance goes
through :meth:`pacskit.store.DataStore.ingest`, the path C-STORE uses: the same validation, the same
duplicate policy (the Storage add-in's ``duplicate_policy`` unless the DICOMweb add-in sets its own)
and the same statuses, reported as FailureReason of the PS3.18 response:

==========  =======================================================================================
0x0111      duplicate SOP Instance refused (``duplicate_policy = "reject"``)
0xA700      out of resources (disk full, part above the size cap)
0xA900      the dataset's SOP Class / Study Instance UID does not match the request
0xC000      cannot understand (not a Part 10 file, missing or invalid UIDs, nesting too deep)
==========  =======================================================================================

A keep-first duplicate whose content differs from the stored copy is answered in
ReferencedSOPSequence with WarningReason 0xB006 (elements discarded: the received copy is).

HTTP status (PS3.18 10.5.3): 200 every instance stored, 202 some stored and some failed or stored
with a warning, 409 none stored; 400 a malformed body, 413 a part above ``max_part_size``, 415 a part or body of a media type
we do not take.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from pacskit.addins.dicomweb.common import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    MULTIPART,
    OCTET_STREAM,
    DicomWebError,
    MediaRange,
    parse_media_type,
)
from pacskit.dicom.part10 import parse_part10_header, read_part10_header

if TYPE_CHECKING:
    from pacskit.net import ReceivedDataset
    from pacskit.store import DataStore

_MAX_HEADER = 16 * 1024
#: parts up to this size stay in memory (a temporary file each costs ~0.5 ms of the event loop)
_IN_MEMORY_PART = 1024 * 1024
#: most bytes of one body kept in memory; the parts beyond go to temporary files
_MEMORY_BUDGET = 64 * 1024 * 1024

#: instances a lane of :class:`IngestLanes` ingests before it hands its thread back to the pool
LANE_STRETCH = 32

#: root types of a STOW-RS body
ROOT_TYPES = (DICOM, DICOM_JSON, DICOM_XML)

#: media type of a compressed bulk data part -> its transfer syntax when the part names none
#: (PS3.18 Table 8.7.3-2 / 8.7.3-3: the first syntax listed for the type)
BULK_MEDIA_SYNTAXES: dict[str, str] = {
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "video/mpeg": "1.2.840.10008.1.2.4.100",
    "video/mp4": "1.2.840.10008.1.2.4.102",
    "video/h265": "1.2.840.10008.1.2.4.107",
}


@dataclass(slots=True)
class ReceivedPart:
    """One part of the body: in memory (``data``) or in a temporary file (``path``)."""

    path: str | None
    content_type: str
    media: MediaRange | None = None
    location: str | None = None  # Content-Location, or "cid:" + Content-ID
    data: bytearray | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return bytes(self.data)
        assert self.path is not None
        with open(self.path, "rb") as fh:
            return fh.read()

    def to_file(self, temp_dir: str) -> str:
        """The part in a file of its own (written now when it was kept in memory); the caller owns it."""
        if self.path is None:
            fd, self.path = tempfile.mkstemp(suffix=".stow", dir=temp_dir)
            with os.fdopen(fd, "wb") as out:
                out.write(self.data or b"")
            self.data = None
        return self.path

    def discard(self) -> None:
        self.data = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


@dataclass(slots=True)
class MultipartReader:
    """Incremental parser of a multipart/related body into temporary files (RFC 2046 5.1)."""

    boundary: bytes
    temp_dir: str
    max_part_size: int
    max_parts: int
    root_type: str = DICOM  # the body's type parameter: which part types are taken
    parts: list[ReceivedPart] = field(default_factory=list)
    _buf: bytearray = field(default_factory=bytearray)
    _state: str = "preamble"  # preamble | headers | body | done
    _out: Any = None
    _written: int = 0
    _in_memory: int = 0

    async def feed_all(self, chunks: AsyncIterator[bytes]) -> list[ReceivedPart]:
        """Consume the body; the parts, or a :class:`DicomWebError` (the temporary files removed)."""
        try:
            async for chunk in chunks:
                if chunk:
                    self._feed(chunk)
            if self._state != "done":
                raise DicomWebError(400, "multipart body ends before its closing boundary")
            return self.parts
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        for part in self.parts:
            part.discard()
        self.parts = []

    def _feed(self, data: bytes) -> None:
        self._buf += data
        delim = b"--" + self.boundary
        while True:
            if self._state == "preamble":
                at = self._buf.find(delim)
                if at < 0:
                    if len(self._buf) > _MAX_HEADER:
                        raise DicomWebError(400, "no multipart boundary found at the start of the body")
                    return
                end = at + len(delim)
                if len(self._buf) < end + 2:
                    return
                if self._buf[end:end + 2] == b"--":
                    raise DicomWebError(400, "multipart body has no parts")
                del self._buf[:end]
                self._state = "after-delim"
            if self._state == "after-delim":
                nl = self._buf.find(b"\r\n")
                if nl < 0:
                    if len(self._buf) > 1024:
                        raise DicomWebError(400, "malformed multipart boundary line")
                    return
                if self._buf[:nl].strip(b" \t"):
                    raise DicomWebError(400, "malformed multipart boundary line")
                del self._buf[:nl + 2]
                self._state = "headers"
            if self._state == "headers":
                end = self._buf.find(b"\r\n\r\n")
                if self._buf.startswith(b"\r\n"):
                    end, skip = 0, 2
                else:
                    skip = 4
                if end < 0:
                    if len(self._buf) > _MAX_HEADER:
                        raise DicomWebError(400, "multipart part headers too long")
                    return
                headers = bytes(self._buf[:end]).decode("latin-1")
                del self._buf[:end + skip]
                self._start_part(headers)
                self._state = "body"
            if self._state == "body":
                marker = b"\r\n" + delim
                at = self._buf.find(marker)
                if at < 0:
                    keep = len(marker) - 1
                    if len(self._buf) > keep:
                        self._write(self._buf[:-keep])
                        del self._buf[:-keep]
                    return
                rest = at + len(marker)
                if len(self._buf) < rest + 2:  # is it the closing delimiter? wait for two more bytes
                    self._write(self._buf[:at])
                    del self._buf[:at]
                    return
                self._write(self._buf[:at])
                self._end_part()
                if self._buf[rest:rest + 2] == b"--":
                    self._state = "done"
                    self._buf.clear()
                    return
                del self._buf[:rest]
                self._state = "after-delim"
                continue
            if self._state == "done":
                self._buf.clear()  # epilogue: ignored
                return

    def _start_part(self, headers: str) -> None:
        if len(self.parts) >= self.max_parts:
            raise DicomWebError(413, f"more than {self.max_parts} parts in one request")
        media = MediaRange(self.root_type)
        location = None
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-type":
                media = parse_media_type(value)
            elif name == "content-location":
                location = value.strip()
            elif name == "content-id" and location is None:
                location = "cid:" + value.strip().strip("<>")
        content_type = media.type
        if self.root_type == DICOM:
            if content_type != DICOM:
                raise DicomWebError(415, f"part of type {content_type} in a body of application/dicom parts")
        elif content_type not in ROOT_TYPES and content_type != OCTET_STREAM and content_type not in BULK_MEDIA_SYNTAXES:
            raise DicomWebError(415, f"part of type {content_type}: a metadata body takes {', '.join(ROOT_TYPES)}, "
                                     f"{OCTET_STREAM} and the compressed pixel data types")
        self._written = 0
        self.parts.append(ReceivedPart(None, content_type, media, location, bytearray()))

    def _write(self, data: bytes | bytearray) -> None:
        self._written += len(data)
        if self._written > self.max_part_size:
            raise DicomWebError(413, f"a part is larger than the limit of {self.max_part_size} bytes")
        part = self.parts[-1]
        if part.data is not None:
            if self._written <= _IN_MEMORY_PART and self._in_memory + len(data) <= _MEMORY_BUDGET:
                part.data += data
                self._in_memory += len(data)
                return
            # too big to keep: to a temporary file from here on
            fd, part.path = tempfile.mkstemp(suffix=".stow", dir=self.temp_dir)
            self._out = os.fdopen(fd, "wb")
            self._out.write(part.data)
            self._in_memory -= len(part.data)
            part.data = None
        self._out.write(data)

    def _end_part(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def boundary_of(content_type: str | None) -> tuple[bytes, str]:
    """The boundary and the root type (``application/dicom``, ``+json`` or ``+xml``) of a STOW-RS
    body; 415 for a body that is not multipart/related of one of those."""
    if not content_type:
        raise DicomWebError(415, "Content-Type missing: multipart/related; type=\"application/dicom\" expected")
    media = parse_media_type(content_type)
    if media.type != MULTIPART:
        raise DicomWebError(415, f"Content-Type {media.type} not accepted: multipart/related; type=\"application/dicom\"")
    kind = media.params.get("type", DICOM).lower()
    if kind not in ROOT_TYPES:
        raise DicomWebError(415, f"multipart/related of {kind} not accepted: {', '.join(ROOT_TYPES)}")
    boundary = media.params.get("boundary")
    # RFC 2046 allows 70 characters of a small set; Orthanc sends 72 ("uuid-uuid" halves): be liberal
    # with the length and the characters, strict on what would break the framing
    if not boundary or len(boundary) > 200 or not re.fullmatch(r"[\x21-\x7e ]+", boundary):
        raise DicomWebError(400, f"Content-Type has no valid boundary parameter: {content_type[:120]!r}")
    return boundary.encode("ascii"), kind


@dataclass(slots=True)
class Outcome:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str = ""
    failure: int | None = None  # the FailureReason, None when stored
    comment: str = ""
    warning: int | None = None  # the WarningReason of a stored (or kept) instance


def _uids(path: str) -> tuple[str, str, str, str]:
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
        return tuple(str(ds.get(k, "") or "") for k in  # type: ignore[return-value]
                     ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
    except Exception:  # noqa: BLE001 - not DICOM at all: ingest says why
        return "", "", "", ""


@dataclass(slots=True)
class MetadataInstance:
    """One dataset of a metadata body (DICOM JSON), with the parts of the body its BulkDataURIs name
    (shared with the other datasets: the reader owns and removes them)."""

    obj: dict[str, Any]
    bulk: dict[str, list[ReceivedPart]]


Unit = ReceivedPart | MetadataInstance


def units_of(parts: Sequence[ReceivedPart], root_type: str) -> list[Unit]:
    """The instances of a received body, in order (thread pool): its ``application/dicom`` parts and
    the datasets of its metadata parts. A metadata part that is not JSON / XML of datasets, or a bulk
    data part without a location, makes the body malformed (a 400 before anything is stored)."""
    from pacskit.addins.dicomweb.model import xml_to_json

    if root_type == DICOM:
        return list(parts)
    bulk: dict[str, list[ReceivedPart]] = {}
    for part in parts:
        if part.content_type not in ROOT_TYPES:
            if not part.location:
                raise DicomWebError(400, f"a {part.content_type} part has no Content-Location (or Content-ID) "
                                         "for a BulkDataURI to name")
            bulk.setdefault(part.location, []).append(part)
    out: list[Unit] = []
    for n, part in enumerate(parts, 1):
        if part.content_type == DICOM:
            out.append(part)
        elif part.content_type == DICOM_JSON:
            try:
                value = json.loads(part.read())
            except (ValueError, UnicodeDecodeError) as exc:
                raise DicomWebError(400, f"part {n} is not JSON: {exc}"[:200]) from None
            datasets = value if isinstance(value, list) else [value]
            if not all(isinstance(d, dict) for d in datasets):
                raise DicomWebError(400, f"part {n}: DICOM JSON is an array of objects (PS3.18 F.2)")
            out += [MetadataInstance(d, bulk) for d in datasets]
        elif part.content_type == DICOM_XML:
            try:
                out.append(MetadataInstance(xml_to_json(part.read().decode("utf-8")), bulk))
            except (ValueError, UnicodeDecodeError) as exc:
                raise DicomWebError(400, f"part {n} is not a Native DICOM Model dataset: {exc}"[:200]) from None
    return out


class _BadMetadata(ValueError):
    """A dataset of a metadata body that cannot become an instance (0xC000 for it alone)."""


def _uid_of(obj: dict[str, Any], tag: str) -> str:
    try:
        value = obj[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    return value if isinstance(value, str) else ""


def build_instance(unit: MetadataInstance, temp_dir: str) -> str:
    """A Part 10 file of a metadata dataset and the bulk data it names (thread pool); the caller
    ingests it. Raises :class:`_BadMetadata`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import UID, ExplicitVRLittleEndian

    obj = {k: v for k, v in unit.obj.items() if not k.upper().startswith("0002")}  # File Meta: ours
    hinted = _uid_of(unit.obj, "00020010")
    pixel: dict[str, Any] = {}

    def bulk_value(tag: str, vr: str, uri: str) -> bytes:
        parts = unit.bulk.get(uri)
        if not parts:
            raise _BadMetadata(f"BulkDataURI {uri[:100]!r} of {tag} names no part of the body")
        kinds = {p.content_type for p in parts}
        if len(kinds) != 1:
            raise _BadMetadata(f"the parts of {uri[:100]!r} are of different types")
        kind = kinds.pop()
        if kind == OCTET_STREAM:
            return b"".join(p.read() for p in parts)
        if tag.upper() != "7FE00010":
            raise _BadMetadata(f"{tag}: compressed data ({kind}) is only for Pixel Data")
        media = parts[0].media
        syntax = (media.params.get("transfer-syntax") if media else None) or (
            hinted if hinted and UID(hinted).is_compressed else BULK_MEDIA_SYNTAXES[kind])
        pixel["syntax"] = syntax
        return bytes(encapsulate([p.read() for p in parts], has_bot=False))

    try:
        ds = Dataset.from_json(obj, bulk_data_uri_handler=bulk_value)
    except _BadMetadata:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a malformed dataset
        raise _BadMetadata(f"not a valid DICOM JSON dataset: {exc}"[:200]) from None
    sop_class, sop_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        raise _BadMetadata("the dataset has no SOP Class UID or SOP Instance UID")
    if "PixelData" in ds:
        _check_pixel_description(ds, compressed="syntax" in pixel)
    syntax = pixel.get("syntax", ExplicitVRLittleEndian)
    if "syntax" in pixel:
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    fd, path = tempfile.mkstemp(suffix=".stow", dir=temp_dir)
    os.close(fd)
    try:
        dcmwrite(path, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    except Exception as exc:  # noqa: BLE001
        os.unlink(path)
        raise _BadMetadata(f"cannot be written as a Part 10 file: {exc}"[:200]) from None
    return path


_PIXEL_DESCRIPTION = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                      "PixelRepresentation", "PhotometricInterpretation")


def _check_pixel_description(ds: Any, *, compressed: bool) -> None:
    """Pixel data from a metadata body must come with the Image Pixel attributes that describe it
    (pacskit does not derive them from a compressed bit stream), and native pixel data must have the
    length they give; otherwise the instance would be stored unreadable."""
    missing = [k for k in _PIXEL_DESCRIPTION if k not in ds]
    if missing:
        raise _BadMetadata(f"Pixel Data without {', '.join(missing)} (not derived from the bit stream)")
    if compressed:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) * frames
    except (TypeError, ValueError) as exc:
        raise _BadMetadata(f"Image Pixel attributes are not numbers: {exc}") from None
    expected = (bits + 7) // 8
    got = len(ds.PixelData)
    if got not in (expected, expected + 1):  # + the padding byte of an odd length
        raise _BadMetadata(f"Pixel Data is {got} bytes, its Image Pixel attributes say {expected}")


class IngestLanes:
    """Every unit of a body through :func:`ingest_unit`, by a few lanes (threads) at a time.

    Each lane calls :meth:`run` in a thread of the add-in's pool, again while it answers ``True``;
    a call takes the next unit until it has ingested :data:`LANE_STRETCH` of them or none is left.
    The ingests overlap their fsyncs and commits as a task per unit did, but the event loop hands
    work to a thread once per stretch instead of once per instance (for a small instance, a hand-off
    and its answer cost the loop about as much as the rest of the request), and the threads are
    still shared with the other requests between stretches (a small STOW-RS does not wait for a big
    one to end). A unit whose ingest raises does not stop its lane, so every ingest has ended when
    the lanes have, before the parts are discarded; :attr:`stop` (the request was cancelled) makes
    them take no further unit.
    """

    def __init__(self, store: DataStore, units: Sequence[Unit], study: str | None, duplicate_policy: str,
                 log: Any) -> None:
        self.store, self.units, self.study, self.duplicate_policy, self.log = store, units, study, duplicate_policy, log
        self.stop = threading.Event()
        self._results: list[Outcome | BaseException | None] = [None] * len(units)
        self._claim = threading.Lock()
        self._next = 0

    def run(self) -> bool:
        """One stretch of a lane: ingest the next units, at most :data:`LANE_STRETCH`; ``True`` when
        units are left for the next stretch."""
        for _ in range(LANE_STRETCH):
            if self.stop.is_set():
                return False
            with self._claim:
                i = self._next
                if i >= len(self.units):
                    return False
                self._next = i + 1
            try:
                self._results[i] = ingest_unit(self.store, self.units[i], self.study, self.duplicate_policy, self.log)
            except BaseException as exc:  # noqa: BLE001 - the caller raises it once every ingest ended
                self._results[i] = exc
        return self._next < len(self.units) and not self.stop.is_set()

    def results(self) -> list[Outcome | BaseException]:
        """The outcome of each unit in order, or the exception its ingest raised."""
        return [r if r is not None else RuntimeError("not ingested: the request was cancelled") for r in self._results]


def ingest_unit(store: DataStore, unit: Unit, study: str | None, duplicate_policy: str, log: Any) -> Outcome:
    """One instance of the body through the durable ingest (thread pool)."""
    if isinstance(unit, ReceivedPart):
        if unit.data is not None and study is None:
            data, unit.data = unit.data, None  # consumed by the ingest, whatever happens
            return ingest_data(store, data, duplicate_policy, log)
        path = unit.to_file(store.temp_dir)
        unit.path = None  # consumed by the ingest, whatever happens
        return ingest_part(store, path, study, duplicate_policy, log)
    try:
        path = build_instance(unit, store.temp_dir)
    except _BadMetadata as exc:
        sop_instance = _uid_of(unit.obj, "00080018")
        log.warning("STOW-RS %s refused (0xC000): %s", sop_instance or "dataset", exc)
        return Outcome(_uid_of(unit.obj, "00080016"), sop_instance, _uid_of(unit.obj, "0020000D"),
                       _uid_of(unit.obj, "0020000E"), 0xC000, str(exc))
    return ingest_part(store, path, study, duplicate_policy, log)


def ingest_data(store: DataStore, data: bytearray, duplicate_policy: str, log: Any) -> Outcome:
    """A Part 10 instance held in memory through the durable ingest (thread pool), when no Study
    Instance UID has to be checked first: its File Meta is read where it is, and it is written once,
    into a temporary file the ingest takes over as it takes a C-STORE's (the File Meta is not read
    again)."""
    from pacskit.net.sinks import Part10FileSink

    try:
        info = parse_part10_header(data, "part")
    except ValueError as exc:  # not a Part 10 file: as the ingest says of one
        log.warning("STOW-RS part refused (0xC000): %s", exc)
        return Outcome("", "", "", "", 0xC000, str(exc))
    view = memoryview(data)
    try:
        sink = Part10FileSink(store.temp_dir, view[:info.dataset_offset], info.transfer_syntax,
                              source_ae=info.source_ae or "")
        try:
            sink.write(view[info.dataset_offset:])
            received = sink.finish()
        except BaseException:
            sink.abort()
            raise
    except OSError as exc:
        return _refused_for(exc, info.sop_class_uid, info.sop_instance_uid, "", "", log)
    return ingest_part(store, received, None, duplicate_policy, log, (info.sop_class_uid, info.sop_instance_uid))


def ingest_part(store: DataStore, path: str | ReceivedDataset, study: str | None, duplicate_policy: str, log: Any,
                meta: tuple[str, str] | None = None) -> Outcome:
    """One Part 10 file (its path, or the file of a received dataset with ``meta``, its SOP Class and
    Instance UIDs) through the durable ingest (thread pool); the file is consumed either way."""
    from pacskit.store import IngestStatus, InstanceMismatch, InstanceTooLarge, InvalidInstance

    if meta is not None:
        study_uid = series_uid = ""
        sop_class, sop_instance = meta
    elif study is not None:  # the dataset's Study Instance UID is needed before the ingest
        assert isinstance(path, str)
        sop_class, sop_instance, study_uid, series_uid = _uids(path)
    else:  # the File Meta is enough for the answer; the study and series come from the index after
        study_uid = series_uid = ""
        try:
            info = read_part10_header(path)
            sop_class, sop_instance = info.sop_class_uid, info.sop_instance_uid
        except (ValueError, OSError):
            sop_class = sop_instance = ""
    if study is not None and study_uid != study:
        assert isinstance(path, str)
        os.unlink(path)
        return Outcome(sop_class, sop_instance, study_uid, series_uid, 0xA900, "Study Instance UID differs from the request's")
    try:
        result = store.ingest(path, source_ae=None, duplicate_policy=duplicate_policy)  # type: ignore[arg-type]
    except InvalidInstance as exc:
        status = 0xA900 if isinstance(exc, InstanceMismatch) else 0xA700 if isinstance(exc, InstanceTooLarge) else 0xC000
        log.warning("STOW-RS %s refused (0x%04X): %s", sop_instance or "?", status, exc)
        return Outcome(sop_class, sop_instance, study_uid, series_uid, status, str(exc))
    except ValueError as exc:  # not a Part 10 file
        log.warning("STOW-RS part refused (0xC000): %s", exc)
        return Outcome(sop_class, sop_instance, study_uid, series_uid, 0xC000, str(exc))
    except OSError as exc:
        return _refused_for(exc, sop_class, sop_instance, study_uid, series_uid, log)
    if result.status == IngestStatus.DUPLICATE_REJECTED:
        return Outcome(sop_class, sop_instance, study_uid, series_uid, 0x0111, "duplicate SOP Instance UID refused")
    if result.status == IngestStatus.DUPLICATE_IGNORED and not result.same_content:
        # keep-first: the copy already stored stays and this one, which differs, is thrown away
        log.warning("STOW-RS %s: a different copy is already stored; the received one is discarded", sop_instance)
        return Outcome(sop_class, result.sop_instance_uid, study_uid, series_uid, warning=0xB006,
                       comment="a different copy of this instance is already stored and kept")
    return Outcome(sop_class, result.sop_instance_uid, study_uid, series_uid)


def _refused_for(exc: OSError, sop_class: str, sop_instance: str, study_uid: str, series_uid: str, log: Any) -> Outcome:
    """0xA700 for a full disk; any other ``OSError`` is raised again."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.error("STOW-RS %s refused: disk full", sop_instance)
        return Outcome(sop_class, sop_instance, study_uid, series_uid, 0xA700, "out of resources: disk full")
    raise exc


def locate(store: DataStore, outcomes: Sequence[Outcome]) -> None:
    """Fill the Study and Series Instance UIDs of the stored outcomes from the index (one query per
    1,000 instances; thread pool): what their RetrieveURLs need."""
    from sqlalchemy import select as sql_select

    from pacskit.store import Instance, Series, Study

    missing = {o.sop_instance_uid: o for o in outcomes if o.failure is None and not o.series_instance_uid}
    uids = list(missing)
    for start in range(0, len(uids), 1000):
        chunk = uids[start:start + 1000]
        stmt = (sql_select(Instance.sop_instance_uid, Series.series_instance_uid, Study.study_instance_uid)
                .join(Series, Series.pk == Instance.series_fk).join(Study, Study.pk == Series.study_fk)
                .where(Instance.sop_instance_uid.in_(chunk)))
        with store.index.reading() as session:
            for sop, series, study in session.execute(stmt).all():
                missing[sop].series_instance_uid, missing[sop].study_instance_uid = str(series), str(study)


def response(outcomes: list[Outcome], base: str, study: str | None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the PS3.18 Store Instances Response dataset (DICOM JSON)."""
    ok = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    body: dict[str, Any] = {}
    studies = {o.study_instance_uid for o in ok if o.study_instance_uid}
    if study is not None or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study or next(iter(studies))}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": _ui(o.sop_class_uid), "00081155": _ui(o.sop_instance_uid),
             "00081197": {"vr": "US", "Value": [o.failure]}} for o in failed]}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced(o, base) for o in ok]}
    # PS3.18 10.5.3: 202 when some failed or were stored with a warning, 409 when none was stored
    status = 409 if not ok else 202 if failed or any(o.warning is not None for o in ok) else 200
    return status, body


def _referenced(o: Outcome, base: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": _ui(o.sop_class_uid), "00081155": _ui(o.sop_instance_uid),
        "00081190": {"vr": "UR", "Value": [
            f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}/instances/{o.sop_instance_uid}"]}}
    if o.warning is not None:
        item["00081196"] = {"vr": "US", "Value": [o.warning]}
    return item


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
