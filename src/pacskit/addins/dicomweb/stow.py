"""STOW-RS (PS3.18 10.5): a multipart/related body of Part 10 instances -> the durable ingest.

The body is parsed as it arrives (:class:`MultipartReader`), each part written to a temporary file
beside the blob store; nothing is ingested until the whole body has been read and found well formed,
so a broken boundary, an oversized part or a dropped connection stores nothing. Then every part goes
through :meth:`pacskit.store.DataStore.ingest`, the path C-STORE uses: the same validation, the same
duplicate policy (the Storage add-in's ``duplicate_policy`` unless the DICOMweb add-in sets its own)
and the same statuses, reported as FailureReason of the PS3.18 response:

==========  =======================================================================================
0x0111      duplicate SOP Instance refused (``duplicate_policy = "reject"``)
0xA700      out of resources (disk full, part above the size cap)
0xA900      the dataset's SOP Class / Study Instance UID does not match the request
0xC000      cannot understand (not a Part 10 file, missing or invalid UIDs, nesting too deep)
==========  =======================================================================================

HTTP status (PS3.18 10.5.3): 200 every instance stored, 202 some stored and some failed, 409 none
stored; 400 a malformed body, 413 a part above ``max_part_size``, 415 a part or body of a media type
we do not take (only ``application/dicom`` parts: the metadata + bulk data form is not supported).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from pacskit.addins.dicomweb.common import DICOM, MULTIPART, DicomWebError, parse_media_type
from pacskit.dicom.part10 import read_part10_header

if TYPE_CHECKING:
    from pacskit.store import DataStore

_MAX_HEADER = 16 * 1024


@dataclass(slots=True)
class ReceivedPart:
    path: str
    content_type: str


@dataclass(slots=True)
class MultipartReader:
    """Incremental parser of a multipart/related body into temporary files (RFC 2046 5.1)."""

    boundary: bytes
    temp_dir: str
    max_part_size: int
    max_parts: int
    parts: list[ReceivedPart] = field(default_factory=list)
    _buf: bytearray = field(default_factory=bytearray)
    _state: str = "preamble"  # preamble | headers | body | done
    _out: Any = None
    _written: int = 0

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
            try:
                os.unlink(part.path)
            except FileNotFoundError:
                pass
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
        content_type = DICOM
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                content_type = parse_media_type(value).type
        if content_type != DICOM:
            raise DicomWebError(415, f"part of type {content_type}: only application/dicom parts are accepted")
        fd, path = tempfile.mkstemp(suffix=".stow", dir=self.temp_dir)
        self._out = os.fdopen(fd, "wb")
        self._written = 0
        self.parts.append(ReceivedPart(path, content_type))

    def _write(self, data: bytes | bytearray) -> None:
        self._written += len(data)
        if self._written > self.max_part_size:
            raise DicomWebError(413, f"a part is larger than the limit of {self.max_part_size} bytes")
        self._out.write(data)

    def _end_part(self) -> None:
        self._out.close()
        self._out = None


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a STOW-RS body; 415 for a body that is not multipart/related of DICOM."""
    if not content_type:
        raise DicomWebError(415, "Content-Type missing: multipart/related; type=\"application/dicom\" expected")
    media = parse_media_type(content_type)
    if media.type != MULTIPART:
        raise DicomWebError(415, f"Content-Type {media.type} not accepted: multipart/related; type=\"application/dicom\"")
    kind = media.params.get("type", DICOM).lower()
    if kind != DICOM:
        raise DicomWebError(415, f"multipart/related of {kind} not accepted: only application/dicom")
    boundary = media.params.get("boundary")
    # RFC 2046 allows 70 characters of a small set; Orthanc sends 72 ("uuid-uuid" halves): be liberal
    # with the length and the characters, strict on what would break the framing
    if not boundary or len(boundary) > 200 or not re.fullmatch(r"[\x21-\x7e ]+", boundary):
        raise DicomWebError(400, f"Content-Type has no valid boundary parameter: {content_type[:120]!r}")
    return boundary.encode("ascii")


@dataclass(slots=True)
class Outcome:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str = ""
    failure: int | None = None  # the FailureReason, None when stored
    comment: str = ""


def _uids(path: str) -> tuple[str, str, str, str]:
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
        return tuple(str(ds.get(k, "") or "") for k in  # type: ignore[return-value]
                     ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
    except Exception:  # noqa: BLE001 - not DICOM at all: ingest says why
        return "", "", "", ""


def ingest_part(store: DataStore, part: ReceivedPart, study: str | None, duplicate_policy: str,
                log: Any) -> Outcome:
    """One part through the durable ingest (thread pool); the file is consumed either way."""
    from pacskit.store import IngestStatus, InstanceMismatch, InstanceTooLarge, InvalidInstance

    if study is not None:  # the dataset's Study Instance UID is needed before the ingest
        sop_class, sop_instance, study_uid, series_uid = _uids(part.path)
    else:  # the File Meta is enough for the answer; the study and series come from the index after
        study_uid = series_uid = ""
        try:
            info = read_part10_header(part.path)
            sop_class, sop_instance = info.sop_class_uid, info.sop_instance_uid
        except (ValueError, OSError):
            sop_class = sop_instance = ""
    if study is not None and study_uid != study:
        os.unlink(part.path)
        return Outcome(sop_class, sop_instance, study_uid, series_uid, 0xA900, "Study Instance UID differs from the request's")
    try:
        result = store.ingest(part.path, source_ae=None, duplicate_policy=duplicate_policy)  # type: ignore[arg-type]
    except InvalidInstance as exc:
        status = 0xA900 if isinstance(exc, InstanceMismatch) else 0xA700 if isinstance(exc, InstanceTooLarge) else 0xC000
        log.warning("STOW-RS %s refused (0x%04X): %s", sop_instance or "?", status, exc)
        return Outcome(sop_class, sop_instance, study_uid, series_uid, status, str(exc))
    except ValueError as exc:  # not a Part 10 file
        log.warning("STOW-RS part refused (0xC000): %s", exc)
        return Outcome(sop_class, sop_instance, study_uid, series_uid, 0xC000, str(exc))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("STOW-RS %s refused: disk full", sop_instance)
            return Outcome(sop_class, sop_instance, study_uid, series_uid, 0xA700, "out of resources: disk full")
        raise
    if result.status == IngestStatus.DUPLICATE_REJECTED:
        return Outcome(sop_class, sop_instance, study_uid, series_uid, 0x0111, "duplicate SOP Instance UID refused")
    return Outcome(sop_class, result.sop_instance_uid, study_uid, series_uid)


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
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": _ui(o.sop_class_uid), "00081155": _ui(o.sop_instance_uid),
             "00081190": {"vr": "UR", "Value": [f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}/instances/{o.sop_instance_uid}"]}}
            for o in ok]}
    status = 200 if not failed else 409 if not ok else 202
    return status, body


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
