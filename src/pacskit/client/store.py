"""StoreScu: send files, folders and datasets to a Storage SCP (PS3.4 Annex B).

How one call goes:

1. **Collect.** Paths are walked (folders recursively, sorted); each file's File Meta Information is
   read with :func:`~pacskit.dicom.part10.read_part10` (no pydicom, pixel data never parsed); a
   small file is read whole in the same read and its bytes kept for the send (up to
   :data:`KEEP_READ_BYTES` per call), so that it is read once.
   Files found in folders that are not Part 10, or are not storable (DICOMDIR), are *skipped* and
   listed in the report; such a file named explicitly is a failure.
2. **Propose.** Per SOP class: one presentation context per transfer syntax the instances are encoded
   in (so they can go as stored), plus an uncompressed fallback (Explicit / Implicit VR Little Endian).
   More than 128 contexts are split over consecutive associations, grouped by SOP class.
3. **Send.** An instance whose own transfer syntax was accepted is sent as stored: from the bytes kept
   at collect, or read whole (a small file) while the C-STORE before it is answered, or streamed from
   disk (a big one). If only
   the fallback was accepted it is re-encoded by :func:`pacskit.dicom.transcode.transcode` (decoded with
   pydicom, pixel data decompressed if needed, which needs pydicom's pixel data plugins for the syntax;
   files above its 256 MiB cap are refused) into a temporary file that is streamed and deleted.
   ``associations=N`` spreads the instances over N parallel associations.
4. **Report.** :class:`StoreReport`: every instance with its status (or why it was not sent), split
   into ``succeeded``, ``warnings`` and ``failed``.

Events (``scu.on(kind, handler)``): ``before-associate`` (:class:`AssociationRequest`, editable),
``sent`` (:class:`StoreEvent`, when the instance is handed to the association, just before its
C-STORE-RQ is written), ``response`` (:class:`StoreEvent` with
its ``result``), ``progress`` (:class:`StoreProgress`, after each response).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from pacskit.client._scu import Scu, log, run_sync
from pacskit.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
)
from pacskit.net import Association, CommandField, NetError, PresentationContext, RequestedContext
from pacskit.dicom.status import status_category
from pacskit.dicom.codec import encode_dataset
from pacskit.net.dimse import PRIORITY_MEDIUM
from pacskit.dicom.part10 import WHOLE_FILE_LIMIT, Part10Info, read_part10, read_part10_header

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Instance", "InstanceResult", "StoreEvent", "StoreProgress", "StoreReport", "StoreScu", "StoreSource", "proposed_contexts"]

StoreSource = Union[str, "os.PathLike[str]", "Dataset"]

_FALLBACK = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
_NOT_STORABLE = {"1.2.840.10008.1.3.10": "a DICOMDIR (Media Storage Directory) is not stored over the network"}
_MAX_CONTEXTS = 128
#: Bytes of small files one :meth:`StoreScu.store` call keeps from reading their File Meta (the read
#: that finds what to propose): each of those files is then read once, not twice. The files beyond it
#: are read again when sent (ahead of their turn, see :class:`_ReadAhead`).
KEEP_READ_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Instance:
    """One thing to send: a file (streamed) or a pydicom Dataset. ``data``: the file's dataset bytes,
    when they were read with its File Meta (a small file, while :data:`KEEP_READ_BYTES` allows); they
    are dropped once sent."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path | None = None
    dataset: Dataset | None = None
    offset: int = 0
    size: int = 0
    data: bytes | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else f"dataset {self.sop_instance_uid}"


@dataclass(slots=True)
class InstanceResult:
    """The outcome for one instance. ``status`` is ``None`` when no C-STORE-RSP came (see ``message``)."""

    instance: Instance
    status: int | None
    error_comment: str = ""
    message: str = ""
    sent_transfer_syntax: str = ""

    @property
    def category(self) -> str:
        """``Success``, ``Warning`` or ``Failure`` (not sent counts as Failure)."""
        return "Failure" if self.status is None else status_category(self.status)

    @property
    def converted(self) -> bool:
        return bool(self.sent_transfer_syntax) and self.sent_transfer_syntax != self.instance.transfer_syntax

    def describe(self) -> str:
        what = f"0x{self.status:04X} {self.category}" if self.status is not None else "not sent"
        extra = "; ".join(x for x in (self.error_comment, self.message) if x)
        return f"{self.instance.label}: {what}" + (f" ({extra})" if extra else "")


@dataclass(repr=False)
class StoreReport:
    """Every instance's outcome, plus the files that were skipped and the error that ended a transfer.

    Its ``repr`` is the :meth:`summary`, not every result: ``asyncio.run`` formats the repr of the
    task that returned the report when it restores the SIGINT handler (CPython 3.11), which with a
    field-by-field repr costs milliseconds per 1,000 instances."""

    results: list[InstanceResult] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    error: NetError | None = None  # the association failure that stopped (part of) the transfer

    @property
    def succeeded(self) -> list[InstanceResult]:
        return [r for r in self.results if r.category == "Success"]

    @property
    def warnings(self) -> list[InstanceResult]:
        return [r for r in self.results if r.category == "Warning"]

    @property
    def failed(self) -> list[InstanceResult]:
        return [r for r in self.results if r.category not in ("Success", "Warning")]

    @property
    def ok(self) -> bool:
        """Everything was sent and acknowledged with Success or Warning."""
        return not self.failed and self.error is None

    def __repr__(self) -> str:
        return f"<StoreReport {self.summary()}" + (f"; error: {self.error}>" if self.error is not None else ">")

    def summary(self) -> str:
        counts = {"Success": 0, "Warning": 0}
        for r in self.results:
            category = r.category
            counts[category] = counts.get(category, 0) + 1
        failed = len(self.results) - counts["Success"] - counts["Warning"]
        text = f"{counts['Success']} succeeded, {counts['Warning']} with warnings, {failed} failed"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (not DICOM)"
        return text


@dataclass(slots=True)
class StoreEvent:
    """``sent`` / ``response``: the instance, its index in this call, the context it uses."""

    instance: Instance
    index: int
    context: PresentationContext | None
    result: InstanceResult | None = None


@dataclass(slots=True)
class StoreProgress:
    """``progress``: instances answered so far and bytes sent (file sizes; converted ones as encoded)."""

    done: int
    total: int
    bytes_done: int
    bytes_total: int


class StoreScu(Scu):
    """Storage SCU. Example::

        scu = StoreScu("STORESCP@127.0.0.1:11112")
        report = scu.store_sync(["study/"])          # or: await scu.store([...])
        print(report.summary())

    ``associations``: how many parallel associations one call uses (default 1).
    """

    EVENTS = ("before-associate", "sent", "response", "progress")

    def __init__(self, remote: Any, *, associations: int = 1, priority: int = PRIORITY_MEDIUM, **kwargs: Any) -> None:
        super().__init__(remote, **kwargs)
        if associations < 1:
            raise ValueError("associations must be at least 1")
        self.associations = associations
        self.priority = priority

    # ------------------------------------------------------------------ public API

    async def store(self, sources: StoreSource | Iterable[StoreSource]) -> StoreReport:
        """Send every instance in ``sources`` (files, folders, Datasets). Raises the engine's
        ``ConnectionFailed`` / ``AssociationRejected`` / ``NetTimeout`` if an association cannot be
        opened; failures after that are recorded in the report (``report.error``)."""
        report = StoreReport()
        instances = list(self._collect(sources, report))
        total_bytes = sum(i.size for i in instances)
        progress = StoreProgress(0, len(instances), 0, total_bytes)  # per call: one scu may run several
        index = 0
        for batch, contexts in _batches(instances):
            if report.error is not None:  # an earlier association failed: the rest is reported, not sent
                report.results.extend(InstanceResult(inst, None, message=str(report.error)) for inst in batch)
                continue
            numbered = [(index + n, inst) for n, inst in enumerate(batch)]
            index += len(batch)
            await self._send_batch(numbered, contexts, report, progress)
        return report

    def store_sync(self, sources: StoreSource | Iterable[StoreSource]) -> StoreReport:
        """:meth:`store` for plain scripts (not inside a running event loop)."""
        return run_sync(self.store(sources))

    # ------------------------------------------------------------------ collect and propose

    def _collect(self, sources: StoreSource | Iterable[StoreSource], report: StoreReport) -> Iterator[Instance]:
        if isinstance(sources, (str, os.PathLike)) or _is_dataset(sources):
            sources = [sources]  # type: ignore[list-item]
        budget = KEEP_READ_BYTES
        for source in sources:  # type: ignore[union-attr]
            if _is_dataset(source):
                yield _dataset_instance(source)  # type: ignore[arg-type]
                continue
            path = source if isinstance(source, Path) else Path(source)  # type: ignore[arg-type]
            files = _walk(path) if os.path.isdir(path) else (path,)
            for file in files:
                inst = _file_instance(file, report, named=file is path, keep=budget > 0)
                if inst is not None:
                    budget -= len(inst.data or b"")
                    yield inst

    # ------------------------------------------------------------------ send

    async def _send_batch(
        self, batch: list[tuple[int, Instance]], contexts: list[RequestedContext], report: StoreReport, progress: StoreProgress
    ) -> None:
        queue: asyncio.Queue[tuple[int, Instance]] = asyncio.Queue()
        for item in batch:
            queue.put_nowait(item)
        workers = min(self.associations, len(batch))
        # Each worker opens its own association and starts at once (a peer that serves one association
        # at a time answers the others later, and they find the queue empty). An association that
        # cannot be opened only matters if none could: then nothing was sent and the error is raised.
        outcomes = await asyncio.gather(*(self._worker(contexts, queue, report, progress) for _ in range(workers)), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if len(errors) == len(outcomes):
            raise errors[0]
        for error in errors:
            if not isinstance(error, NetError):
                raise error
            # This one could not be opened; the associations that were took its share of the queue.
            log.warning("one of %d associations to %s could not be opened: %s", workers, self.remote.title, error)
        # Left over when associations failed mid-way: reported with the failure that stopped them.
        self._drain(queue, report, str(report.error) if report.error else "not sent")

    async def _worker(
        self, contexts: list[RequestedContext], queue: asyncio.Queue[tuple[int, Instance]], report: StoreReport, p: StoreProgress
    ) -> None:
        assoc = await self.associate(contexts)
        loop = asyncio.get_running_loop()
        ahead = _ReadAhead(queue.get_nowait(), loop) if not queue.empty() else None
        try:
            while ahead is not None:
                current, preread = ahead.item, ahead.take()
                index, inst = current
                # The next instance is taken now and its bytes are read while this one's C-STORE is
                # answered: the peer's work and ours overlap instead of taking turns.
                ahead = _ReadAhead(queue.get_nowait(), loop) if not queue.empty() else None
                try:
                    result = await self._send_one(assoc, index, inst, preread)
                except NetError as exc:
                    report.results.append(InstanceResult(inst, None, message=str(exc)))
                    if ahead is not None:  # taken from the queue: reported with the failure, as the rest
                        ahead.cancel()
                        report.results.append(InstanceResult(ahead.item[1], None, message=str(exc)))
                    report.error = report.error or exc
                    assoc.abort()  # the other associations (if any) go on with the queue
                    return
                report.results.append(result)
                p.done += 1
                p.bytes_done += inst.size
                if self.events.wants("progress"):
                    self.events.notify("progress", StoreProgress(p.done, p.total, p.bytes_done, p.bytes_total))
            await assoc.release()
        except NetError as exc:  # release failed: every instance was answered already
            report.error = report.error or exc
        finally:
            if not (assoc.is_released or assoc.is_aborted):
                assoc.abort()

    @staticmethod
    def _drain(queue: asyncio.Queue[tuple[int, Instance]], report: StoreReport, message: str) -> None:
        while not queue.empty():
            _, inst = queue.get_nowait()
            report.results.append(InstanceResult(inst, None, message=message))

    async def _send_one(self, assoc: Association, index: int, inst: Instance, preread: bytes | None = None) -> InstanceResult:
        """C-STORE ``inst``; ``preread`` is its dataset bytes when :class:`_ReadAhead` read them."""
        ctx, convert = _choose_context(assoc, inst)
        if ctx is None:
            return InstanceResult(
                inst, None, message=f"the peer accepted no presentation context for {_uid_name(inst.sop_class_uid)} "
                f"in {_uid_name(inst.transfer_syntax)} or an uncompressed transfer syntax"
            )
        data: Any
        converted: str | None = None  # a temporary file holding the re-encoded instance
        if convert:
            try:
                data = await asyncio.get_running_loop().run_in_executor(None, _convert, inst, ctx.transfer_syntax)
            except Exception as exc:
                return InstanceResult(
                    inst, None,
                    message=f"cannot convert from {_uid_name(inst.transfer_syntax)} to "
                    f"{_uid_name(ctx.transfer_syntax)}: {exc}",
                )
            if isinstance(data, tuple):
                converted = data[0]
        elif preread is not None:
            data = preread
        elif inst.path is not None:
            data = (inst.path, inst.offset, inst.size)
        else:
            assert inst.dataset is not None
            data = encode_dataset(inst.dataset, ctx.transfer_syntax)
        if self.events.wants("sent"):
            self.events.notify("sent", StoreEvent(inst, index, ctx))
        rsp = None
        try:
            async for rsp, received in assoc.request(
                CommandField.C_STORE_RQ, inst.sop_class_uid, data, context=ctx,
                AffectedSOPInstanceUID=inst.sop_instance_uid, Priority=self.priority,
            ):
                if received is not None:
                    received.discard()
        finally:
            if converted is not None:
                os.unlink(converted)
        assert rsp is not None
        result = InstanceResult(
            inst, rsp.status, error_comment=str(rsp.get("ErrorComment", "") or ""),
            message="converted" if convert else "", sent_transfer_syntax=ctx.transfer_syntax,
        )
        if self.events.wants("response"):
            self.events.notify("response", StoreEvent(inst, index, ctx, result))
        return result


# ---------------------------------------------------------------------- helpers


class _ReadAhead:
    """The next instance of a worker, and its dataset bytes: those kept when its File Meta was read
    (:data:`KEEP_READ_BYTES`), or else read by a callback of the event loop.

    The callback is scheduled before the current C-STORE is written, so it runs right after the
    write, while the peer may still be busy with that instance. Only files small enough to be sent
    whole are read ahead (:data:`~pacskit.dicom.part10.WHOLE_FILE_LIMIT`); a bigger one, a Dataset,
    or a file that cannot be read in full (``None``: the send streams it and reports any error as it
    always does) are sent as before."""

    __slots__ = ("item", "_data", "_handle")

    def __init__(self, item: tuple[int, Instance], loop: asyncio.AbstractEventLoop) -> None:
        self.item = item
        inst = item[1]
        self._data: bytes | None = inst.data
        inst.data = None  # handed over: dropped once sent
        small = self._data is None and inst.path is not None and 0 < inst.size <= WHOLE_FILE_LIMIT
        self._handle: asyncio.Handle | None = loop.call_soon(self._read) if small else None

    def _read(self) -> None:
        self._handle = None
        inst = self.item[1]
        assert inst.path is not None
        try:
            fd = os.open(inst.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                data = os.pread(fd, inst.size, inst.offset)
            finally:
                os.close(fd)
        except OSError:
            return
        if len(data) == inst.size:
            self._data = data

    def take(self) -> bytes | None:
        """The bytes read (reading them now if the loop has not run the callback yet), or ``None``."""
        if self._handle is not None:
            self._handle.cancel()
            self._read()
        return self._data

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _is_dataset(obj: Any) -> bool:
    pydicom_dataset = sys.modules.get("pydicom.dataset")  # no Dataset can exist before pydicom is imported
    return pydicom_dataset is not None and isinstance(obj, pydicom_dataset.Dataset)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def _file_instance(path: Path, report: StoreReport, named: bool = False, keep: bool = False) -> Instance | None:
    """A file found in a folder that cannot be sent is *skipped* (folders hold READMEs and DICOMDIRs);
    a file the caller named is a *failure* (a typo must not pass as success). ``keep``: a small
    file is read whole, and its dataset bytes kept for the send."""
    reason = ""
    data: bytes | None = None
    try:
        info, data = read_part10(path, whole_below=WHOLE_FILE_LIMIT if keep else 0)
        reason = _NOT_STORABLE.get(info.sop_class_uid, "") or _empty_meta_uid(info)
    except (ValueError, OSError) as exc:
        reason = str(exc).removeprefix(f"{path}: ")
    if reason:
        if named:
            report.results.append(InstanceResult(Instance("", "", "", path=path), None, message=reason))
        else:
            report.skipped.append((path, reason))
        return None
    return Instance(
        info.sop_class_uid, info.sop_instance_uid, info.transfer_syntax, path=path,
        offset=info.dataset_offset, size=info.file_size - info.dataset_offset, data=data or None,
    )


def _empty_meta_uid(info: Part10Info) -> str:
    """Why a file cannot be proposed and sent (its File Meta has an empty UID), or ``""``. Proposed as
    is, an empty abstract syntax makes a peer such as Orthanc abort the association, and with it the
    rest of the batch."""
    for value, name in ((info.sop_class_uid, "Media Storage SOP Class UID (0002,0002)"),
                        (info.sop_instance_uid, "Media Storage SOP Instance UID (0002,0003)"),
                        (info.transfer_syntax, "Transfer Syntax UID (0002,0010)")):
        if not value.strip():
            return f"file meta information has an empty {name}"
    return ""


def _dataset_instance(ds: Dataset) -> Instance:
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or EXPLICIT_VR_LITTLE_ENDIAN) if meta is not None else EXPLICIT_VR_LITTLE_ENDIAN
    if ts in UNCOMPRESSED_TRANSFER_SYNTAXES:
        ts = EXPLICIT_VR_LITTLE_ENDIAN  # we encode it ourselves: any uncompressed syntax will do
    return Instance(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, dataset=ds)


def proposed_contexts(instances: Sequence[Instance]) -> list[RequestedContext]:
    """The contexts :class:`StoreScu` proposes for ``instances``: per SOP class, one per transfer
    syntax in use (exact match, no conversion), then the uncompressed fallback."""
    by_class: dict[str, list[str]] = {}
    for inst in instances:
        syntaxes = by_class.setdefault(inst.sop_class_uid, [])
        if inst.transfer_syntax not in syntaxes:
            syntaxes.append(inst.transfer_syntax)
    out: list[RequestedContext] = []
    for sop_class, syntaxes in by_class.items():
        out.extend(RequestedContext(sop_class, [ts]) for ts in syntaxes)
        fallback = [ts for ts in _FALLBACK if ts not in syntaxes]
        if fallback:
            out.append(RequestedContext(sop_class, fallback))
    return out


def _batches(instances: list[Instance]) -> Iterator[tuple[list[Instance], list[RequestedContext]]]:
    """Split by SOP class so that no association proposes more than 128 contexts."""
    if not instances:
        return
    groups: dict[str, list[Instance]] = {}
    for inst in instances:
        groups.setdefault(inst.sop_class_uid, []).append(inst)
    batch: list[Instance] = []
    contexts: list[RequestedContext] = []
    for members in groups.values():
        ctx = proposed_contexts(members)
        if contexts and len(contexts) + len(ctx) > _MAX_CONTEXTS:
            yield batch, contexts
            batch, contexts = [], []
        batch.extend(members)
        contexts.extend(ctx)
    yield batch, contexts


def _choose_context(assoc: Association, inst: Instance) -> tuple[PresentationContext | None, bool]:
    fallback: PresentationContext | None = None
    for pc in assoc.contexts.values():
        if not pc.accepted or pc.abstract_syntax != inst.sop_class_uid or not pc.as_scu:
            continue
        if pc.transfer_syntax == inst.transfer_syntax:
            return pc, False
        if pc.transfer_syntax in UNCOMPRESSED_TRANSFER_SYNTAXES and (
            fallback is None or pc.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
        ):
            fallback = pc
    if fallback is not None and inst.dataset is not None and inst.transfer_syntax in UNCOMPRESSED_TRANSFER_SYNTAXES:
        return fallback, False  # a Dataset we encode anyway: no conversion involved
    return fallback, fallback is not None


def _convert(inst: Instance, transfer_syntax: str) -> bytes | tuple[str, int, int]:
    """Re-encode ``inst`` in ``transfer_syntax`` (off the event loop).

    Files go through :func:`pacskit.dicom.transcode.transcode` (the one conversion pacskit has: byte
    order swaps, decompression keeping the SOP Instance UID, a size cap) into a temporary file that is
    then streamed like any other and deleted; returns ``(path, offset, size)``. A Dataset with
    compressed pixel data is decompressed and encoded in memory; returns the bytes.
    """
    if inst.dataset is None:
        import tempfile

        from pacskit.dicom.transcode import CannotConvert, transcode

        assert inst.path is not None
        fd, tmp = tempfile.mkstemp(prefix="pacskit-scu-", suffix=".dcm")
        os.close(fd)
        try:
            transcode(inst.path, tmp, transfer_syntax)
            info = read_part10_header(tmp)
        except BaseException as exc:
            os.unlink(tmp)
            if isinstance(exc, CannotConvert):
                raise ValueError(str(exc)) from exc
            raise
        return tmp, info.dataset_offset, info.file_size - info.dataset_offset
    from copy import deepcopy

    ds = deepcopy(inst.dataset)  # the caller's Dataset is left as it was
    ds.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
    return encode_dataset(ds, transfer_syntax)


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else uid
