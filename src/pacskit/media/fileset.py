"""DICOM File-sets (PS3.10, PS3.11): from Part 10 files to one or more volumes, each with its DICOMDIR.

:func:`plan_volumes` does the DICOM part of media creation, without writing a single image:

1. every source file is checked against the application profile (:mod:`pacskit.media.profiles`): a
   file whose transfer syntax the profile allows is used as it is (the media will hold the archive's
   bytes); any other is re-encoded once into the work folder (``stage/``);
2. the instances are ordered patient / study / series / instance number and packed into volumes of
   the profile's capacity: a study is kept on one volume whenever it fits on one, a study larger than
   a volume is split between series and instances;
3. each volume's DICOMDIR is written by pydicom's :class:`~pydicom.fileset.FileSet` from the files'
   *headers only* (read up to the pixel data), so the DICOMDIR records (PATIENT, STUDY, SERIES,
   IMAGE and the other leaf types pydicom knows, with their required keys) and the 8-character
   upper-case File IDs (``PT000000/ST000000/SE000000/IM000000``) are pydicom's.

The result, a list of :class:`Volume`, says which bytes go where; :mod:`pacskit.media.output` writes
it as a folder, an ISO 9660 image or a ZIP file. Memory does not grow with the size of the images
(headers are read one at a time, image bytes are never held); it grows by a few hundred bytes per
instance for the directory records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacskit.media.profiles import EXPLICIT_VR_LE, J2K_LOSSLESS, Profile

log = logging.getLogger("pacskit.media")

#: Bytes reserved on every volume for what is not an instance: the ISO 9660 volume descriptors, path
#: tables and directories (Joliet and Rock Ridge double and grow them), README.TXT, the viewer.
VOLUME_OVERHEAD = 4 * 1024 * 1024
#: Bytes of DICOMDIR counted per instance (an IMAGE record with its share of the upper records).
DICOMDIR_PER_INSTANCE = 512
SECTOR = 2048


class MediaError(Exception):
    """Media creation cannot go on; the message says why in one line."""


class UnusableInstance(MediaError):
    """A source file cannot go on the media (unreadable, missing keys, cannot be re-encoded)."""

    def __init__(self, sop_instance_uid: str, reason: str) -> None:
        super().__init__(f"instance {sop_instance_uid}: {reason}")
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason


class DoesNotFit(MediaError):
    """The instances need more than one volume and splitting is not allowed (or one file alone is
    larger than a volume)."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One stored instance to put on the media: its Part 10 file and size."""

    sop_instance_uid: str
    path: str
    size: int
    #: as the archive's index has them ("" / ``None`` when unknown: then the file's header is read)
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    patient_id: str | None = None
    study_uid: str = ""
    series_uid: str = ""
    instance_number: int | None = None


@dataclass(slots=True)
class MediaFile:
    """One DICOM file of a volume: where it goes (File ID components), where its bytes come from."""

    file_id: tuple[str, ...]
    source: str
    size: int
    sop_instance_uid: str
    #: the stored transfer syntax when the file was re-encoded for the profile, else ``None``
    transcoded_from: str | None = None

    @property
    def relpath(self) -> str:
        return "/".join(self.file_id)


@dataclass(slots=True)
class Volume:
    """One piece of media: a complete file-set (its own DICOMDIR) and the other files at its root."""

    number: int
    total: int
    fileset_id: str
    root: Path
    files: list[MediaFile] = field(default_factory=list)
    #: non-DICOM files at the root: name on the media -> local path (README.TXT, the viewer...)
    extras: dict[str, str] = field(default_factory=dict)
    fileset_uid: str = ""

    @property
    def dicomdir(self) -> Path:
        return self.root / "DICOMDIR"

    @property
    def data_size(self) -> int:
        return sum(f.size for f in self.files) + self.dicomdir.stat().st_size + sum(
            os.path.getsize(p) for p in self.extras.values())


@dataclass(slots=True)
class _Entry:
    """What planning keeps of one instance (no dataset)."""

    uid: str
    path: str
    size: int
    patient: str
    study: str
    series: str
    number: int
    transcoded_from: str | None


def _read_header(path: str) -> Any:
    from pydicom import dcmread

    return dcmread(path, stop_before_pixels=True)


def _encode_for_profile(src: str, dest: str, ts: str, profile: Profile, lossless: bool, uid: str) -> str:
    """Re-encode ``src`` into ``dest`` in a syntax ``profile`` allows; returns that syntax."""
    from pacskit.dicom.transcode import CannotConvert, transcode

    if lossless and profile.allows_j2k_lossless:
        try:
            _compress_j2k_lossless(src, dest)
            return J2K_LOSSLESS
        except _NoCompression as exc:
            log.info("instance %s stays uncompressed: %s", uid, exc)
    try:
        transcode(src, dest, EXPLICIT_VR_LE)
    except CannotConvert as exc:
        raise UnusableInstance(uid, f"cannot re-encode for {profile.id}: {exc}") from exc
    return EXPLICIT_VR_LE


class _NoCompression(Exception):
    pass


def _compress_j2k_lossless(src: str, dest: str) -> None:
    """JPEG 2000 lossless (pylibjpeg-openjpeg through pydicom); :class:`_NoCompression` when the
    instance has no pixel data the encoder takes (then it goes on the media uncompressed)."""
    from pydicom import dcmread

    ds = dcmread(src)
    if "PixelData" not in ds:
        raise _NoCompression("no pixel data")
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.compress(J2K_LOSSLESS, generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001 - a missing plugin, an unsupported pixel format
        raise _NoCompression(str(exc)) from exc
    ds.save_as(dest, enforce_file_format=True)


def _scan(sources: Iterable[SourceFile], profile: Profile, stage: Path, lossless: bool,
          progress: Callable[[str, int], None] | None) -> list[_Entry]:
    entries: list[_Entry] = []
    seen: set[str] = set()
    for n, src in enumerate(sources):
        if src.sop_instance_uid in seen:
            continue
        seen.add(src.sop_instance_uid)
        known = bool(src.transfer_syntax_uid and src.study_uid and src.series_uid and src.patient_id is not None)
        if known:  # the index has the keys: the header is read once, when the DICOMDIR is written
            ts, patient, study, series = src.transfer_syntax_uid, src.patient_id or "", src.study_uid, src.series_uid
            number_value = src.instance_number or 0
        else:
            try:
                ds = _read_header(src.path)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a damaged file
                raise UnusableInstance(src.sop_instance_uid, f"unreadable: {exc}") from exc
            meta = getattr(ds, "file_meta", None)
            ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
            patient, study, series = (str(ds.get(k, "") or "") for k in ("PatientID", "StudyInstanceUID",
                                                                         "SeriesInstanceUID"))
            number = ds.get("InstanceNumber")
            try:
                number_value = int(number) if number not in (None, "") else 0
            except (TypeError, ValueError):
                number_value = 0
        path, size, transcoded_from = src.path, src.size, None
        wants_compression = lossless and profile.allows_j2k_lossless and ts == EXPLICIT_VR_LE
        if ts not in profile.transfer_syntaxes or wants_compression:
            stage.mkdir(parents=True, exist_ok=True)
            dest = str(stage / f"{n:08d}.dcm")
            new_ts = _encode_for_profile(src.path, dest, ts, profile, lossless, src.sop_instance_uid)
            if new_ts == ts:  # nothing gained (lossless asked, no pixel data): keep the stored bytes
                os.unlink(dest)
            else:
                path, size, transcoded_from = dest, os.path.getsize(dest), ts
        entries.append(_Entry(src.sop_instance_uid, path, size, patient, study, series, number_value, transcoded_from))
        if progress is not None:
            progress("scan", len(entries))
    entries.sort(key=lambda e: (e.patient, e.study, e.series, e.number, e.uid))
    return entries


def _cost(entry: _Entry, extra: int = 0) -> int:
    return -(-entry.size // SECTOR) * SECTOR + DICOMDIR_PER_INSTANCE + extra


def _pack(entries: Sequence[_Entry], capacity: int | None, reserved: int, extra: int = 0) -> list[list[_Entry]]:
    """Volumes of at most ``capacity`` bytes (minus ``reserved`` and the overhead), studies kept whole
    where they fit on one volume (first fit, in patient / study order)."""
    if capacity is None:
        return [list(entries)] if entries else []
    room = capacity - VOLUME_OVERHEAD - reserved
    if room <= 0:
        raise DoesNotFit(f"a volume of {capacity} bytes leaves no room for instances")
    studies: list[list[_Entry]] = []
    for e in entries:
        if studies and studies[-1][0].study == e.study and studies[-1][0].patient == e.patient:
            studies[-1].append(e)
        else:
            studies.append([e])
    volumes: list[list[_Entry]] = []
    used: list[int] = []
    for study in studies:  # first fit: a study goes on the first volume with room for all of it
        size = sum(_cost(e, extra) for e in study)
        if size <= room:
            for i in range(len(volumes)):
                if used[i] + size <= room:
                    volumes[i].extend(study)
                    used[i] += size
                    break
            else:
                volumes.append(list(study))
                used.append(size)
            continue
        volumes.append([])  # larger than a volume: split between instances, on volumes of its own
        used.append(0)
        for e in study:
            c = _cost(e, extra)
            if c > room:
                raise DoesNotFit(f"instance {e.uid} ({e.size} bytes) is larger than a volume")
            if used[-1] + c > room:
                volumes.append([])
                used.append(0)
            volumes[-1].append(e)
            used[-1] += c
    return [v for v in volumes if v]


def _fileset_id(base: str, number: int, total: int) -> str:
    """File-set ID (CS, at most 16 characters of A-Z 0-9 _ and space): ``base`` with the volume number."""
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in base.upper() if c.isascii()) or "PACSKIT"
    if total > 1:
        suffix = f"_{number}OF{total}"
        return cleaned[: 16 - len(suffix)] + suffix
    return cleaned[:16]


_BRANCH_LEVELS = (("PATIENT", "PatientID"), ("STUDY", "StudyInstanceUID"), ("SERIES", "SeriesInstanceUID"))


def _fast_fileset() -> object:
    """A pydicom :class:`~pydicom.fileset.FileSet` that adds instances in constant time.

    ``FileSet.add`` compares every new instance with every instance already added and every record with
    its siblings (quadratic: 45 s for one 1,000-image series), and stages a copy of each dataset on
    disk. This subclass adds from a header dataset with pydicom's own record creators
    (``DIRECTORY_RECORDERS``: the record types and their required keys, as ``_recordify`` uses them),
    finds the PATIENT / STUDY / SERIES records by their keys in a dictionary and makes them only for
    the first instance of each (making all four per instance cost ~0.4 ms of every instance), stages
    nothing (the caller puts the files on the media) and writes the DICOMDIR with pydicom's encoder (``_write_dicomdir``: offsets,
    File-set ID / UID, record sequence). The caller guarantees unique SOP Instance UIDs."""
    from pydicom.filebase import DicomFileLike
    from pydicom.fileset import (
        DIRECTORY_RECORDERS,
        FileInstance,
        FileSet,
        RecordNode,
        _four_level_record_type,
        _single_level_record_type,
    )

    def _branch_record(level: str, ds: Any) -> Any:
        """One directory record of ``level`` for ``ds``: what pydicom's ``FileSet._recordify`` makes for
        that level (its record creator, the chaining fields, the character set)."""
        try:
            record = DIRECTORY_RECORDERS[level](ds)
        except ValueError as exc:
            raise ValueError(f"no {level} record: {exc} (PS3.3 F.5)") from exc
        record.OffsetOfTheNextDirectoryRecord = 0
        record.RecordInUseFlag = 0xFFFF
        record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
        record.DirectoryRecordType = level
        if "SpecificCharacterSet" in ds:
            record.SpecificCharacterSet = ds.SpecificCharacterSet
        return record

    class _FastFileSet(FileSet):
        def __init__(self) -> None:
            super().__init__()
            self._branches: dict[tuple[str, ...], RecordNode] = {}

        def add_header(self, ds: Any) -> FileInstance:
            if _single_level_record_type(ds) != "PATIENT":  # one record, no hierarchy
                return self._add_leaf(self._tree, list(self._recordify(ds))[-1])
            parent: RecordNode = self._tree
            path: tuple[str, ...] = ()
            for level, keyword in _BRANCH_LEVELS:
                path += (f"{level}:{ds.get(keyword, '')}",)
                known = self._branches.get(path)
                if known is None:  # the first instance of this patient / study / series
                    known = RecordNode(_branch_record(level, ds))
                    known.parent = parent
                    self._branches[path] = known
                parent = known
            leaf = _branch_record(_four_level_record_type(ds), ds)
            leaf.ReferencedFileID = None
            leaf.ReferencedSOPClassUIDInFile = ds.SOPClassUID
            leaf.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
            leaf.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
            return self._add_leaf(parent, leaf)

        def _add_leaf(self, parent: RecordNode, record: Any) -> FileInstance:
            leaf = RecordNode(record)
            instance = FileInstance(leaf)
            leaf.instance = instance
            leaf.parent = parent
            self._instances.append(instance)
            return instance

        def write_dicomdir(self, root: Path) -> None:
            for instance in self._instances:
                instance.node._record.ReferencedFileID = list(Path(instance.FileID).parts)
            root.mkdir(parents=True, exist_ok=True)
            with open(root / "DICOMDIR", "wb") as fh:
                self._write_dicomdir(DicomFileLike(fh))

    return _FastFileSet()


def _write_dicomdir(entries: Sequence[_Entry], root: Path, fileset_id: str, profile: Profile,
                    fileset_uid: str | None = None) -> tuple[list[MediaFile], str]:
    """Write ``root/DICOMDIR`` for ``entries`` with pydicom's FileSet (fed the headers only); returns
    the files with their File IDs and the File-set UID."""
    fs: Any = _fast_fileset()
    fs.ID = fileset_id
    if fileset_uid:
        fs.UID = fileset_uid
    added = []
    for e in entries:
        try:
            ds = _read_header(e.path)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a damaged file
            raise UnusableInstance(e.uid, f"unreadable: {exc}") from exc
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if ts not in profile.transfer_syntaxes:  # the index said otherwise: never put it on the media
            raise UnusableInstance(e.uid, f"transfer syntax {ts or 'unknown'} not allowed by {profile.id}")
        try:
            added.append((fs.add_header(ds), e))
        except (ValueError, AttributeError, KeyError) as exc:
            raise UnusableInstance(e.uid, f"no DICOMDIR record: {exc}") from exc
    fs.write_dicomdir(root)
    files = [MediaFile(tuple(Path(inst.FileID).parts), e.path, e.size, e.uid, e.transcoded_from) for inst, e in added]
    files.sort(key=lambda f: f.file_id)
    return files, str(fs.UID)


def plan_volumes(
    sources: Iterable[SourceFile],
    profile: Profile,
    work_dir: str | os.PathLike[str],
    *,
    fileset_id: str = "PACSKIT",
    fileset_uid: str | None = None,
    lossless: bool = False,
    allow_split: bool = True,
    capacity: int | None = -1,
    reserved: int = 0,
    per_instance: int = 0,
    progress: Callable[[str, int], None] | None = None,
) -> list[Volume]:
    """Plan the media for ``sources`` (see the module docstring). ``work_dir`` (created; emptied by the
    caller) receives the re-encoded files and each volume's DICOMDIR; it must live until the volumes
    are written. ``fileset_uid``: the File-set UID of a single volume (each of several gets a new one). ``capacity``: bytes per volume (``-1``: the profile's media; ``None``: no limit);
    ``reserved``: bytes per volume kept for extra files (the viewer), ``per_instance``: more bytes
    counted per instance (the viewer's index). Raises :class:`UnusableInstance`,
    :class:`DoesNotFit` (too big and ``allow_split`` is false), :class:`MediaError` (nothing to write).
    """
    work = Path(work_dir)
    entries = _scan(sources, profile, work / "stage", lossless, progress)
    if not entries:
        raise MediaError("no instances to put on the media")
    groups = _pack(entries, profile.capacity if capacity == -1 else capacity, reserved, per_instance)
    if len(groups) > 1 and not allow_split:
        need = sum(e.size for e in entries)
        raise DoesNotFit(f"{len(entries)} instances ({need} bytes) need {len(groups)} volumes of {profile.media_type} "
                         "and splitting is not allowed")
    volumes = []
    for number, group in enumerate(groups, 1):
        fid = _fileset_id(fileset_id, number, len(groups))
        root = work / f"volume{number}"
        files, uid = _write_dicomdir(group, root, fid, profile, fileset_uid if len(groups) == 1 else None)
        volumes.append(Volume(number, len(groups), fid, root, files, fileset_uid=uid))
        if progress is not None:
            progress("dicomdir", number)
    return volumes
