"""The data store facade: the index (database) plus the blob store, and the order of work between them.

The durability contract (docs/store.md): an ingest returns (and the C-STORE is answered) only when the
instance would survive a power cut — its blob's bytes and name are flushed; the index may be derived
data. :meth:`DataStore.ingest` works in this order:

1. read and validate the indexed attributes (UIDs; the dataset's SOP Instance/Class UIDs must equal
   the C-STORE command's), hash the file (SHA-256, streamed);
2. put the blob: rename it into place, ``fdatasync`` the file, fsync the folder (the key is recorded
   in the crash journal first, :mod:`pacskit.store.journal`, and noted as in flight for the durable
   point);
3. one database transaction adds or updates patient / study / series / instance and the counts
   (with SQLite at ``synchronous=NORMAL`` it is not flushed: see :meth:`DataStore.restore_index`);
4. if that transaction fails, the new blob is deleted (unless the commit may have succeeded: then it
   is kept, and is at worst an orphan);
5. overwrite: the new copy went in under a new key in 2, the row is switched to it in 3 and made
   durable, and the old blob is deleted only then: a crash leaves the old or the new copy, never neither.

At start-up :meth:`DataStore.recover` restores the rows a power cut took from the blobs newer than
the index's *durable point*, before anything is answered. A duplicate that is ignored or rejected
never touches the stored copy; the received file is deleted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, Protocol

from sqlalchemy import select, text
from sqlalchemy.engine import URL

from pacskit.store.blobs import (
    KEY_MINUTES,
    BlobNotFound,
    BlobStore,
    FilesystemBlobStore,
    InvalidBlobKey,
    MemoryBlobStore,
    PendingPut,
    current_minute,
    new_key,
    validate_key,
)
from pacskit.dicom.part10 import read_part10_header
from pacskit.store.engine import make_url
from pacskit.dicom.walker import TooDeep
from pacskit.store.index.extract import (
    InstanceAttributes,
    InstanceMismatch,
    InvalidInstance,
    read_index_attributes,
    scan_instance,
    sha256_file,
    sha256_stream,
    uid_deviation,
)
from pacskit.store.ingestlog import LOCAL_DISK_TYPES, MAX_RECORD, fs_type
from pacskit.store.journal import IngestJournal, journal_files, recorded_keys
from pacskit.store.index.database import DUPLICATE_POLICIES, Counts, DuplicatePolicy, Index, IngestStatus
from pacskit.store.index.models import AE, Instance, Patient, Series, Study

log = logging.getLogger("pacskit.store")

_PAGE = 1000
_WALK_BUFFER = 1 << 16  # the received file is walked (element headers, seeks) and hashed through one buffer

#: seconds between two moves of the index's durable point (one small commit each)
DURABLE_POINT_INTERVAL = 1.0

ProblemKind = Literal[
    "missing-blob", "size-mismatch", "hash-mismatch", "unreadable-blob", "invalid-key", "orphan-blob",
    "count-mismatch",
]


class SharedJournal(Protocol):
    """The crash journal of ingests in flight that several nodes share (:class:`pacskit.store.cluster.SharedInflight`).

    ``next_key`` gives a new key already recorded (keys are recorded ahead, in batches); ``begin``
    records a key before its blob is written (free for a key from ``next_key``); ``fence`` runs in
    the transaction that indexes it and removes the record (raising if another node took it), and
    ``fence_statement`` is the same as SQL for the index's lean lane to run in its own transaction; ``end``
    forgets a failed ingest's key; ``keys`` lists every node's keys in flight (for ``check``).

    It also keeps the nodes' deletion intents (:mod:`pacskit.store.deletion`): ``intend_deletion``
    records keys under an intent of this node (``node_id``; ``None``: read only), ``end_deletion``
    forgets it, ``deleting_keys`` lists every node's (for ``check``)."""

    node_id: str | None

    def next_key(self) -> str: ...

    def begin(self, key: str) -> str: ...

    def fence(self, session: Any, key: str) -> None: ...

    def fence_statement(self, key: str) -> tuple[str, dict[str, Any]]: ...

    def end(self, key: str) -> None: ...

    def keys(self) -> set[str]: ...

    def intend_deletion(self, intent: str, keys: list[str]) -> None: ...

    def fence_deletion(self, session: Any, intent: str, count: int) -> None: ...

    def end_deletion(self, intent: str, *, done: bool = True) -> None: ...

    def deleting_keys(self) -> set[str]: ...


class ReceivedFile(Protocol):
    """What :meth:`DataStore.ingest` takes from the engine: a dataset received into a complete Part 10
    file (:class:`pacskit.net.ReceivedDataset` is one; the store does not import the engine)."""

    path: str | None
    offset: int
    transfer_syntax: str
    source_ae: str
    claimed: bool


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What :meth:`DataStore.ingest` did.

    ``instance_id`` is the row of the instance (the existing one for duplicates); ``blob_key`` and
    ``stored_sha256`` describe the copy the index keeps; ``sha256`` and ``size`` the received file.
    """

    status: IngestStatus
    instance_id: int
    sop_instance_uid: str
    sha256: str
    size: int
    blob_key: str
    stored_sha256: str

    @property
    def stored(self) -> bool:
        """The received copy is now the stored one (STORED or OVERWRITTEN)."""
        return self.status in (IngestStatus.STORED, IngestStatus.OVERWRITTEN)

    @property
    def same_content(self) -> bool:
        """The received file is byte-identical to the copy the index keeps."""
        return self.sha256 == self.stored_sha256


class PendingIngest:
    """An ingest begun by :meth:`DataStore.start_ingest`: walked and in place, its blob's flush
    perhaps still on its way (:attr:`flushing`). :meth:`result` must be called exactly once: it waits
    for the flush if needed, commits the row of a large blob (a small one's is committed already),
    settles the ingest (or undoes it when the flush or the transaction failed) and lets a waiting
    reindex in."""

    __slots__ = ("flushing", "_finish", "_gate", "_done")

    def __init__(self, finish: Callable[[], IngestResult] | IngestResult, gate: contextlib.ExitStack,
                 flushing: concurrent.futures.Future[None] | None = None) -> None:
        #: The blob's flush as a future (``None``: nothing that is worth awaiting elsewhere);
        #: :meth:`result` blocks until it is done.
        self.flushing = flushing
        self._finish = finish
        self._gate = gate
        self._done = False

    def result(self) -> IngestResult:
        """What :meth:`DataStore.ingest` returns, or raises (``OSError``: the blob could not be made
        durable, and the instance is not stored)."""
        if self._done:
            raise RuntimeError("PendingIngest.result() was already called")
        self._done = True
        try:
            return self._finish if isinstance(self._finish, IngestResult) else self._finish()
        finally:
            self._gate.close()


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    detail: str
    blob_key: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedCopy:
    """What :meth:`DataStore.verify_instances` found for one indexed instance: ``problem`` is ``None``
    when its blob is present with the size and SHA-256 the index recorded."""

    sop_instance_uid: str
    sop_class_uid: str
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(slots=True)
class CheckReport:
    """Result of :meth:`DataStore.check`: ``ok`` when no problem was found."""

    instances_checked: int = 0
    blobs_seen: int = 0
    problems: list[Problem] = field(default_factory=list)
    in_flight: int = 0  # blobs of ingests in flight (or interrupted: start-up recovery removes them)
    pending_deletion: int = 0  # blobs whose rows a deletion removed: it deletes them (pacskit.store.deletion)

    @property
    def ok(self) -> bool:
        return not self.problems

    def of_kind(self, kind: ProblemKind) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def __str__(self) -> str:
        flight = f" ({self.in_flight} of ingests in flight)" if self.in_flight else ""
        pending = f" ({self.pending_deletion} being deleted)" if self.pending_deletion else ""
        head = f"{self.instances_checked} instances, {self.blobs_seen} blobs{flight}{pending}: "
        if self.ok:
            return head + "no problem"
        return head + f"{len(self.problems)} problems\n" + "\n".join(
            f"  {p.kind}: {p.detail}" for p in self.problems
        )


@dataclass(slots=True)
class ReindexReport:
    """Result of :meth:`DataStore.reindex`."""

    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (blob key, reason): not indexable
    duplicates: list[str] = field(default_factory=list)  # blob keys left out: same SOP Instance UID


class _Gate:
    """Many holders of ``shared()`` (ingests, deletes) or one of ``exclusive()`` (reindex)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @property
    def exclusive_wanted(self) -> bool:
        """An ``exclusive()`` holder is in, or waiting for the shared holders to leave (a glance)."""
        return self._exclusive

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True  # new shared holders wait from now on
            self._cond.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_UID_TAGS = (("sop_class_uid", 0x00080016), ("sop_instance_uid", 0x00080018),
             ("study_instance_uid", 0x0020000D), ("series_instance_uid", 0x0020000E))


def _check_uid_conformance(attrs: InstanceAttributes, strict: bool, source_ae: str | None) -> None:
    """Warn of (or, ``strict``, refuse) UIDs that break PS3.5 9.1 but were safe enough to accept."""
    for name, tag in _UID_TAGS:
        value = getattr(attrs, name)
        deviation = uid_deviation(value)
        if deviation is None:
            continue
        if strict:
            raise InvalidInstance(f"not a valid UID (PS3.5 9.1: {deviation})", tag)
        log.warning("instance %s from %s: %s %s breaks PS3.5 9.1 (%s); accepted (strict_uids refuses it)",
                    attrs.sop_instance_uid, source_ae or "?", name, value, deviation)


def _start_put_is_current(blobs: object) -> bool:
    """Whether ``blobs`` has a ``start_put`` defined no less derived than its ``put_file``: a subclass
    that overrides ``put_file`` alone (a third-party store built on the filesystem one) expects its
    ``put_file`` to see every put, so it is used through ``put_file``."""
    mro = type(blobs).__mro__
    owners = {name: next((i for i, c in enumerate(mro) if name in vars(c)), None) for name in ("start_put", "put_file")}
    start, put = owners["start_put"], owners["put_file"]
    return start is not None and (put is None or start <= put)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class DataStore:
    """Index + blob store. Thread-safe: one instance is shared by every handler thread."""

    def __init__(self, index: Index, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs
        self._gate = _Gate()
        self._journal: IngestJournal | None = None  # created by the first ingest
        self._journal_lock = threading.Lock()
        #: the crash journal shared by several nodes (pacskit.store.cluster.SharedInflight), set by a
        #: server that is one node of a cluster; replaces the local journal for ingests when set
        self.shared_journal: SharedJournal | None = None
        # The durable point (Index.durable_point): new blobs' minutes in flight (key -> minute), and
        # when the point was last moved. See _advance_durable_point.
        self._pending_minutes: dict[str, int] = {}
        self._point_lock = threading.Lock()
        self._point_at = 0.0
        self.moves_durable_point = True
        self._has_start_put = _start_put_is_current(blobs)

    @classmethod
    def open(
        cls,
        url: str | URL,
        blobs: BlobStore,
        *,
        migrate: bool = True,
        recover: bool = True,
        **engine_options: Any,
    ) -> DataStore:
        """Open the index at ``url`` (``sqlite:///index.db``, ``postgresql+psycopg://...``,
        ``mysql+pymysql://...``) over ``blobs``; bring the schema up to date unless ``migrate=False``,
        then (``recover``) remove what interrupted ingests left. Processes that share a store while
        others ingest must pass ``recover=False``: recovery is for when nobody else is writing.

        ``engine_options`` go to :func:`pacskit.store.engine.make_engine` (``sqlite_synchronous``,
        ``pool_size``, ...).
        """
        u = make_url(url)
        if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
            os.makedirs(os.path.dirname(os.path.abspath(u.database)), exist_ok=True)
            if getattr(blobs, "iter_keys_since", None) is not None:
                # The durability contract (docs/store.md): the blobs are flushed before an instance is
                # acknowledged, the index is derived data restored from them at start-up, so its
                # commits need not be flushed one by one.
                engine_options.setdefault("sqlite_synchronous", "NORMAL")
        index = Index.open(u, **engine_options)
        try:
            if migrate:
                index.migrate()
        except BaseException:
            index.close()
            raise
        store = cls(index, blobs)
        # Only the store's one writer process moves the durable point: a process that shares the
        # index with others (serve --workers) cannot see their ingests in flight.
        store.moves_durable_point = recover
        if migrate and recover:
            store.recover()
        return store

    def close(self) -> None:
        """Close the index, the crash journal and the blob store; each is closed even when an earlier
        one fails (a dying disk), so that no file stays open; the first error is raised."""
        close_blobs = getattr(self.blobs, "close", None)  # the ingest log's checkpoint (FilesystemBlobStore)
        steps = [self.index.close, *([self._journal.close] if self._journal is not None else []),
                 *([close_blobs] if close_blobs is not None else [])]
        error: BaseException | None = None
        for step in steps:
            try:
                step()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> DataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DataStore({self.index!r}, {self.blobs!r})"

    def prepare_ingest(self, timeout: float = 5.0) -> None:
        """Make ready what the first ingest would otherwise do without (a server calls this before it
        listens): the filesystem blob store's ingest log (:mod:`pacskit.store.ingestlog`)."""
        prepare = getattr(self.blobs, "prepare_ingest", None)
        if prepare is not None:
            prepare(timeout)

    def ingest_is_brief(self, size: int | None = None, duplicate_policy: DuplicatePolicy = "keep-first") -> bool:
        """Whether :meth:`start_ingest` (of a file of ``size`` bytes, if known) and the
        :meth:`PendingIngest.result` after its :attr:`~PendingIngest.flushing` wait only on this
        machine, briefly: blobs in a folder on a local disk (or in memory) and the index in SQLite on
        a local disk or in a PostgreSQL / MariaDB server on this machine, so that the waits are a
        local database commit and a small blob's share of the ingest log's flush, each well under a
        millisecond. The Storage add-in then runs C-STOREs on the event loop's thread even while
        other associations share it (:class:`pacskit.services.InlineHandler` ``brief``): with eight
        associations that halves the CPU per small instance on SQLite and takes a third off on
        PostgreSQL, at an equal or better rate (docs/store.md).

        A file larger than an ingest log record (:data:`~pacskit.store.ingestlog.MAX_RECORD`) pays
        its own flushes (file and folder, 0.5 ms and more): it is brief only when they run on the
        blob store's threads while the index transaction does and the caller awaits ``flushing``
        (:meth:`_defers_durability`: SQLite, no overwrite), not when the index's commit must wait
        for them (PostgreSQL). False with a database server on another machine (a commit is a
        network round trip, and concurrent commits share the server's log flush only when they come
        from several threads), with an object store (a PUT is a network round trip), in a cluster,
        and with blobs or index on FUSE or a network file system (each file operation is a round
        trip to a program or a server)."""
        if self.shared_journal is not None:
            return False
        if size is not None and size > MAX_RECORD and not self._defers_durability(duplicate_policy):
            return False
        if isinstance(self.blobs, FilesystemBlobStore):
            if not self.blobs.on_local_disk:
                return False
        elif not isinstance(self.blobs, MemoryBlobStore):
            return False
        return self._index_on_this_machine

    @functools.cached_property
    def _index_on_this_machine(self) -> bool:
        url = self.index.engine.url
        if self.index.backend == "sqlite":
            database = url.database
            return (database in (None, "", ":memory:")
                    or fs_type(os.path.dirname(os.path.abspath(database))) in LOCAL_DISK_TYPES)
        host = url.host or str(url.query.get("host") or "")  # psycopg: ?host=/run/postgresql (a socket)
        return host in ("", "localhost", "::1") or host.startswith(("127.", "/"))

    def ingest_would_queue(self) -> bool:
        """Whether an ingest begun now would wait behind other work of this process: a reindex holds
        (or waits for) the store, or another thread is in the index's write lock. A caller on an
        event loop then ingests from a thread, so that the loop's other work goes on meanwhile."""
        return self._gate.exclusive_wanted or self.index.writer_busy()

    @property
    def temp_dir(self) -> str:
        """Where incoming files should be written: on the blob store's filesystem when it has one."""
        return self.blobs.temp_dir or tempfile.gettempdir()

    # ingest -----------------------------------------------------------------------------------------

    def ingest(
        self,
        source: ReceivedFile | str | os.PathLike[str],
        *,
        source_ae: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        duplicate_policy: DuplicatePolicy = "keep-first",
        offset: int | None = None,
        strict_uids: bool = False,
    ) -> IngestResult:
        """Store a complete Part 10 file and index it. See the module docstring.

        The same as :meth:`start_ingest` followed by :meth:`PendingIngest.result`: it returns once
        the instance is durable and findable.

        ``source`` is what the engine received (a :class:`pacskit.net.ReceivedDataset`: its dataset
        offset, transfer syntax and calling AE are used as they are, the File Meta is not read again,
        and the file is taken over in this one step: ``claimed`` is set, the engine will not touch
        it), or the path of a Part 10 file (its File Meta gives those; ``source_ae`` and ``offset``
        may be given).

        UIDs that break PS3.5 9.1 harmlessly (a leading zero, a letter, up to 128 characters) are
        accepted with a warning, or refused (:class:`InvalidInstance`) with ``strict_uids``; see
        :func:`~pacskit.store.index.extract.check_uid` for what is always refused.

        The file is consumed: kept as the blob, or deleted (duplicate ignored/rejected, invalid
        instance, failure). ``expected_*`` are the UIDs of the C-STORE command; ``offset`` is where
        the dataset starts (``ReceivedDataset.offset``) if known. Raises :class:`InvalidInstance`
        (the instance cannot be indexed: answer 0xA900/0xC000-class failures), ``OSError`` (the blob
        could not be written) or SQLAlchemy errors (the database failed).
        """
        return self.start_ingest(source, source_ae=source_ae, expected_sop_instance_uid=expected_sop_instance_uid,
                                 expected_sop_class_uid=expected_sop_class_uid, duplicate_policy=duplicate_policy,
                                 offset=offset, strict_uids=strict_uids).result()

    def start_ingest(
        self,
        source: ReceivedFile | str | os.PathLike[str],
        *,
        source_ae: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        duplicate_policy: DuplicatePolicy = "keep-first",
        offset: int | None = None,
        strict_uids: bool = False,
    ) -> PendingIngest:
        """:meth:`ingest` up to the wait for the blob's flush: the file is walked and hashed and put in
        place (or refused: the same exceptions as :meth:`ingest`); a small blob's row is committed
        while its flush runs, and a large blob's flush is on its way on the blob store's threads
        (its row is committed by ``result`` once the blob is durable). The caller must call
        :meth:`PendingIngest.result` exactly once; a caller on an event loop first awaits
        :attr:`PendingIngest.flushing` (when not ``None``), so that the loop serves other
        connections while the disk works, and ``result`` then waits only for a local commit. Until
        ``result`` returns the instance is not to be acknowledged: it may not survive a power cut
        yet, and a reindex waits for it."""
        if duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicate_policy must be one of {DUPLICATE_POLICIES}, not {duplicate_policy!r}")
        received: tuple[int, str, str | None] | None = None  # (offset, transfer syntax, source AE)
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
        else:
            if source.path is None:
                raise ValueError("the dataset was received in memory, not in a Part 10 file")
            path = source.path
            source.claimed = True  # from here on the file is ours, whatever happens to it
            received = (source.offset, source.transfer_syntax, source.source_ae or None)
            source_ae = source_ae if source_ae is not None else received[2]
        gate = contextlib.ExitStack()
        gate.enter_context(self._gate.shared())  # a running reindex() finishes first; held until result()
        try:
            return self._ingest(path, source_ae, expected_sop_instance_uid,
                                expected_sop_class_uid, duplicate_policy, offset, strict_uids, received, gate)
        except BaseException:
            gate.close()
            raise

    def _ingest(self, path: str, source_ae: str | None, expected_sop_instance_uid: str | None,
                expected_sop_class_uid: str | None, duplicate_policy: DuplicatePolicy,
                offset: int | None, strict_uids: bool,
                received: tuple[int, str, str | None] | None, gate: contextlib.ExitStack) -> PendingIngest:
        slot: int | str | None = None
        key: str | None = None
        pending: PendingPut | None = None
        try:
            if received is None:  # a file from elsewhere: its File Meta says where and how
                header = read_part10_header(path)
                received = (header.dataset_offset, header.transfer_syntax, header.source_ae)
            dataset_offset, transfer_syntax, meta_source_ae = received
            with open(path, "rb", buffering=_WALK_BUFFER) as fh:  # one open: walked, then hashed
                try:  # one walk: nesting guarded before pydicom sees anything, indexed values collected
                    attrs = scan_instance(path, offset if offset is not None else dataset_offset,
                                          transfer_syntax, meta_source_ae, fh=fh)
                except TooDeep as exc:
                    raise InvalidInstance(str(exc), exc.tag) from None
                self._check_expected(attrs, expected_sop_instance_uid, expected_sop_class_uid)
                _check_uid_conformance(attrs, strict_uids, source_ae)
                if self._defers_durability(duplicate_policy):
                    # The blob's flush starts now and runs while the hash, the duplicate check and
                    # the index transaction do; it is waited for before the answer (docs/store.md,
                    # "The durability contract"). ``fh`` still reads the file after its rename.
                    key = self._new_blob_key()
                    slot = self._journal_begin(key)
                    pending = self.blobs.start_put(path, key_hint=key)
                fh.seek(0)
                sha, size = sha256_stream(fh)
            if duplicate_policy != "overwrite" and self.index.prechecks_duplicates:  # the transaction re-checks
                known = self.index.find_instance(attrs.sop_instance_uid)
                if known is not None:
                    if pending is not None:
                        self._abandon(pending, slot)
                    _unlink(path)
                    status = (IngestStatus.DUPLICATE_IGNORED if duplicate_policy == "keep-first"
                              else IngestStatus.DUPLICATE_REJECTED)
                    return PendingIngest(IngestResult(status, known[0], attrs.sop_instance_uid, sha, size, known[1],
                                                      known[2]), gate)
            if pending is None:
                key = self._new_blob_key()
                slot = self._journal_begin(key)
                key = self.blobs.put_file(path, key_hint=key)
        except BaseException:
            _unlink(path)
            if pending is not None:
                self._abandon(pending, slot)
            else:
                self._journal_end(slot)
                self._blob_settled(key)
            raise
        assert key is not None  # set by the put above (or it raised)
        stored: str = key
        ae = (source_ae or attrs.source_ae or "").strip()[:AE] or None
        received_at = dt.datetime.now(dt.UTC)
        shared = self.shared_journal if isinstance(slot, str) else None

        def record(s: Any) -> Any:
            if shared is not None:  # a cluster: our in-flight record must still be ours (see cluster.py)
                shared.fence(s, stored)
            return self.index.record_instance(
                s, attrs, blob_key=stored, size=size, sha256=sha, received_at=received_at,
                source_ae=ae, policy=duplicate_policy,
            )

        def commit(flushed: bool) -> Any:
            """The index transaction; if it fails, the new blob is undone and its error raised."""
            try:
                # an instance of a known series: its own lean transaction (None: the general path decides)
                rec = self.index.append_instance(attrs, blob_key=stored, size=size, sha256=sha, received_at=received_at,
                                                 source_ae=ae, fence=shared.fence_statement(stored) if shared else None)
                return rec if rec is not None else self.index.run_write_shared(record)
            except BaseException:
                # The transaction failed: its own error is the one to report.
                if pending is not None and not flushed:
                    try:
                        pending.wait()
                    except OSError:
                        pass
                self._discard_new_blob(stored)
                if pending is not None:
                    self._sync_removal(stored)
                self._journal_end(slot, False)
                self._blob_settled(stored)
                raise

        def finish(rec: Any, flushed: bool) -> IngestResult:
            duplicate = rec.status in (IngestStatus.DUPLICATE_IGNORED, IngestStatus.DUPLICATE_REJECTED)
            try:
                if pending is not None and not flushed:
                    self._finish_put(pending, attrs.sop_instance_uid)
            finally:
                if pending is not None and duplicate:
                    self.blobs.delete(stored)  # lost a race with a concurrent copy of the same instance
                    self._sync_removal(stored)
                self._journal_end(slot, True)
                self._blob_settled(stored)
            if duplicate and pending is None:
                self.blobs.delete(stored)  # lost a race with a concurrent copy of the same instance
            elif rec.replaced_blob_key is not None:
                # Start-up restores lost rows of new blobs with "keep-first": an overwrite is made
                # durable before it is answered and before the old copy goes.
                self.index.sync()
                self._delete_quietly(rec.replaced_blob_key)
            self._advance_durable_point()
            return IngestResult(rec.status, rec.instance_id, attrs.sop_instance_uid, sha, size,
                                rec.blob_key, rec.sha256)

        # a third-party store's pending put written before PendingPut.flushing existed has none
        flushing = getattr(pending, "flushing", None)
        if pending is None or flushing is None:
            rec = commit(flushed=False)  # a small blob's flush overlaps the transaction
            return PendingIngest(lambda: finish(rec, flushed=False), gate)
        large: PendingPut = pending

        def flushed_then_committed() -> IngestResult:
            # A large blob's row is committed only once the blob is durable: start-up judges the
            # rows of deferred flushes by their blobs' content only up to an ingest log record's
            # size (remove_unbacked_rows), and hashing every large blob of the last minutes there
            # would be slow. Its flush overlaps the hash instead, and the caller's other work.
            try:
                large.wait()
            except BaseException as exc:
                log.error("blob %s of %s could not be made durable (%s)", stored, attrs.sop_instance_uid, exc)
                self._undo_put(stored, slot)
                raise
            return finish(commit(flushed=True), flushed=True)

        return PendingIngest(flushed_then_committed, gate, flushing)

    def _abandon(self, pending: PendingPut, slot: int | str | None) -> None:
        """Undo a started put whose instance is not indexed (a duplicate, a failure before the row):
        its flush is waited for (it holds the ingest log's segment), then the blob is deleted (the
        log's tombstone keeps start-up from bringing it back; if the tombstone is lost to a power
        cut, start-up finds the blob a duplicate, or without a row it can take, and deletes it)."""
        try:
            pending.wait()
        except OSError:
            pass
        self._undo_put(pending.key, slot)

    def _undo_put(self, key: str, slot: int | str | None) -> None:
        """Delete the blob ``key`` of an instance that is not indexed, durably, and end its journal
        entry (after its put's ``wait`` returned or raised)."""
        self._delete_quietly(key)
        self._sync_removal(key)
        self._journal_end(slot)
        self._blob_settled(key)

    def _sync_removal(self, key: str) -> None:
        """Make the deletion of a blob whose log record was flushed durable before its key stops being
        in flight: else a power cut could take the tombstone, start-up would rewrite the blob from
        the record, and, its minute being behind the durable point by then, nobody would look at it
        again (an orphan for ``check``)."""
        sync = getattr(self.blobs, "sync_removals", None)
        if sync is None:
            return
        try:
            sync([key])
        except OSError as exc:
            log.error("deletion of blob %s not made durable (%s): start-up may bring it back", key, exc)

    def _defers_durability(self, duplicate_policy: DuplicatePolicy) -> bool:
        """Whether this ingest may overlap its blob's flush with its index transaction: only where
        start-up finds a row whose blob did not survive and removes it
        (:meth:`remove_unbacked_rows`, which looks at the rows from the durable point on). So: a
        store with ``start_put``, an index whose commits are not durable one by one (SQLite at
        ``synchronous=NORMAL``; PostgreSQL's commit would make the row durable with nothing to undo
        it) in the process that moves the durable point, no cluster journal, and no overwrite (the
        old copy goes only once the new row is durable)."""
        return (duplicate_policy != "overwrite" and self._has_start_put and self.moves_durable_point
                and self.shared_journal is None and not self.index.durable_commits)

    def _finish_put(self, pending: PendingPut, sop_instance_uid: str) -> None:
        """Wait until the blob of ``pending``, whose row is committed, is durable. If it cannot be
        made durable, the ingest fails (it is not acknowledged) and the row and blob are removed, so
        nothing refers to a blob a power cut could take."""
        try:
            pending.wait()
        except BaseException as exc:
            log.error("blob %s of %s could not be made durable (%s): its row is removed", pending.key,
                      sop_instance_uid, exc)
            try:
                self._unindex(sop_instance_uid, pending.key)
            except Exception as again:  # start-up removes it if the blob did not survive
                log.error("cannot remove the row of %s: %s", sop_instance_uid, again)
            raise

    def _unindex(self, sop_instance_uid: str, key: str) -> None:
        """Remove the row of ``sop_instance_uid`` if it still refers to ``key``, then its blob."""
        def remove(s: Any) -> None:
            found = s.scalar(select(Instance.blob_key).where(Instance.sop_instance_uid == sop_instance_uid))
            if found == key:
                self.index.remove_instance(s, sop_instance_uid)

        self.index.run_write(remove)
        self._delete_quietly(key)

    # the durable point (docs/store.md, "The durability contract") -------------------------------------

    def _new_blob_key(self) -> str:
        """A new blob key, noted as in flight until :meth:`_blob_settled` (its row committed or its
        blob gone): the durable point never passes the minute of a blob whose row is not committed.
        A cluster's shared journal hands out keys it recorded ahead (no round trip per ingest)."""
        shared = self.shared_journal
        fresh = shared.next_key() if shared is not None else new_key()
        with self._point_lock:
            self._pending_minutes[fresh] = current_minute()
        return fresh

    def _blob_settled(self, key: str | None) -> None:
        if key is not None:
            with self._point_lock:
                self._pending_minutes.pop(key, None)

    def _advance_durable_point(self, *, force: bool = False) -> None:
        """Move the index's durable point to the oldest minute whose blobs may still lack a committed
        row (at most once every :data:`DURABLE_POINT_INTERVAL` seconds, unless ``force``).

        The point is written in a commit of its own after the rows it covers; SQLite's WAL is read back
        in order after a crash, so if the point survived a power cut, so did every row before it, and
        start-up re-reads only the blobs of the minutes from the point on (``iter_keys_since``)."""
        if not self.moves_durable_point or self.index.durable_commits:
            return
        now = time.monotonic()
        with self._point_lock:
            if not force and now - self._point_at < DURABLE_POINT_INTERVAL:
                return
            self._point_at = now
            point = min([current_minute(), *self._pending_minutes.values()])
        try:
            self.index.set_durable_point(point)
        except Exception as exc:  # the next ingest tries again; start-up then re-reads a little more
            log.debug("durable point not recorded: %s", exc)

    def remove_unbacked_rows(self) -> int:
        """Remove the rows a power cut left without their blob; returns how many.

        An ingest may overlap its blob's flush with its index transaction (:meth:`BlobStore.start_put`),
        so a row can reach stable storage before its blob (a WAL checkpoint syncs it), and a power cut
        in between leaves a row whose blob is missing or torn. Such an instance was never
        acknowledged: its answer waited for the blob's flush. The rows that can be in that state are
        those of blobs made since the durable point (the point never passes a blob still in flight),
        so only they are looked at: the blob must exist with the recorded size and, for the small
        ones whose flush is deferred (up to :data:`pacskit.store.ingestlog.MAX_RECORD`), the
        recorded SHA-256. A row that fails is removed (its counts too) and its torn blob deleted.
        Run by :meth:`recover` after the ingest log's replay (which brings back every blob whose
        record was flushed) and before :meth:`restore_index`."""
        since = getattr(self.blobs, "iter_keys_since", None)
        if self.index.durable_commits or since is None:
            return 0
        point = self.index.durable_point()
        if not point:  # no point yet: no ingest has deferred a flush (they run after a recovery set one)
            return 0
        from pacskit.store.ingestlog import MAX_RECORD

        now = current_minute()
        if now - point >= KEY_MINUTES - 2 or point > now + 1:
            prefixes = None  # a point too old to name the minutes by their keys: every row is looked at
        else:
            prefixes = [f"{m % KEY_MINUTES:04x}" for m in range(point - 1, now + 2)]
        # keys are lower-case hex: the keys of a minute are those from its prefix up to prefix + "g"
        conditions = ([Instance.blob_key.is_not(None)] if prefixes is None else
                      [(Instance.blob_key >= p) & (Instance.blob_key < p + "g") for p in prefixes])
        bad: list[tuple[str, str, str]] = []
        for condition in conditions:
            with self.index.reading() as s:
                rows = s.execute(select(Instance.sop_instance_uid, Instance.blob_key, Instance.size,
                                        Instance.sha256).where(condition)).all()
            for uid, key, size, sha in rows:
                problem = self._verify_copy(uid, key, size, sha, size <= MAX_RECORD)
                if problem is not None:
                    bad.append((uid, key, problem.detail))
        for uid, key, why in bad:
            log.warning("%s was never acknowledged (%s): its row is removed", uid, why)
            self._unindex(uid, key)
        if bad:
            self.index.sync()
        return len(bad)

    def restore_index(self) -> int:
        """Index the blobs whose rows a power cut took from the index; returns how many.

        Where commits are not durable one by one (SQLite with ``synchronous=NORMAL``, the default
        over a filesystem blob store), the last transactions may be lost while their blobs, flushed
        before each C-STORE was answered, survive. This reads the blobs newer than the index's
        durable point that have no row, in the order they were written, and indexes each as ingest
        would ("keep-first"); one that does not parse to its end (its bytes were never flushed: it
        was never acknowledged) is deleted. Run by :meth:`recover` before anything is answered."""
        since = getattr(self.blobs, "iter_keys_since", None)
        if self.index.durable_commits or since is None:
            return 0
        point = self.index.durable_point()
        listed = since(point) if point else None
        keys = list(listed) if listed is not None else list(self.blobs.iter_keys())
        unindexed: list[str] = []
        for start in range(0, len(keys), _PAGE):
            batch = keys[start:start + _PAGE]
            with self.index.reading() as s:
                known = set(s.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(batch))))
            unindexed.extend(k for k in batch if k not in known)
        order: list[tuple[int, str]] = []
        mtime_ns = getattr(self.blobs, "mtime_ns", None)  # a store with iter_keys_since has it
        for key in unindexed:
            try:
                order.append((mtime_ns(key) if mtime_ns is not None else 0, key))
            except FileNotFoundError:
                continue
        order.sort()
        restored = dropped = 0
        for mtime, key in order:
            path = self.blobs.path(key)
            assert path is not None
            try:
                header = read_part10_header(path)
                attrs = scan_instance(path, header.dataset_offset, header.transfer_syntax, header.source_ae)
                with open(path, "rb", buffering=0) as fh:
                    sha, size = sha256_stream(fh)  # type: ignore[arg-type]
            except Exception as exc:  # cut short by the power cut: never acknowledged
                log.warning("blob %s is incomplete (%s): deleted, it was never acknowledged", key, exc)
                self.blobs.delete(key)
                dropped += 1
                continue
            when = dt.datetime.fromtimestamp(mtime / 1e9, dt.UTC)
            ae = (attrs.source_ae or "").strip()[:AE] or None
            try:
                rec = self.index.run_write(functools.partial(
                    self.index.record_instance, a=attrs, blob_key=key, size=size, sha256=sha, received_at=when,
                    source_ae=ae, policy="keep-first"))
            except InvalidInstance as exc:
                log.warning("blob %s cannot be indexed (%s): deleted, it was never acknowledged", key, exc)
                self.blobs.delete(key)
                dropped += 1
                continue
            if rec.status == IngestStatus.DUPLICATE_IGNORED:  # a duplicate's copy the crash left
                self.blobs.delete(key)
                dropped += 1
                continue
            restored += 1
        if restored or dropped:
            log.warning("restored %d index rows from blobs newer than the index's durable point"
                        " (%d incomplete or duplicate blobs deleted)", restored, dropped)
        self.index.set_durable_point(current_minute())
        self.index.sync()
        return restored

    # crash journal (pacskit.store.journal) ---------------------------------------------------------

    def _journal_begin(self, key: str) -> int | str | None:
        if self.shared_journal is not None:
            return self.shared_journal.begin(key)
        journal = self._journal
        if journal is None:
            folder = self.blobs.journal_dir
            if folder is None:
                return None
            with self._journal_lock:
                if self._journal is None:
                    self._journal = IngestJournal(folder)
                journal = self._journal
        return journal.begin(key)

    def _journal_end(self, slot: int | str | None, committed: bool = False) -> None:
        if isinstance(slot, str):  # the shared journal: a committed ingest's record went with its commit
            if not committed and self.shared_journal is not None:
                self.shared_journal.end(slot)
            return
        if slot is not None and self._journal is not None:
            self._journal.end(slot)

    def recover(self) -> int:
        """Delete blobs an interrupted ingest left without an index row; returns how many.

        Only while nobody else writes to the store (see :mod:`pacskit.store.journal`)."""
        from pacskit.store.deletion import finish_interrupted

        # First the small blobs a power cut took, rewritten from the ingest log (pacskit.store.ingestlog),
        # then the deletions a crash interrupted (their rows are gone, durably: their blobs must not
        # be restored), then the rows a power cut took (restore_index), then the blobs of ingests
        # that were in flight and could not be indexed.
        replay_log = getattr(self.blobs, "replay_log", None)
        if replay_log is not None:
            replay_log()
        removed = finish_interrupted(self)
        self.remove_unbacked_rows()
        self.restore_index()
        folder = self.blobs.journal_dir
        if folder is None:
            return removed
        own = self._journal.path if self._journal is not None else None
        for path in journal_files(folder, skip=own):
            for key in recorded_keys(path):
                try:
                    validate_key(key)
                except Exception:
                    continue
                if self.blobs.exists(key) and not self.index.is_blob_referenced(key):
                    self.blobs.delete(key)
                    removed += 1
            _unlink(path)  # every key in it is resolved (a slot file of a process that is gone)
        if removed:
            log.warning("removed %d blobs of interrupted ingests (never acknowledged)", removed)
        return removed

    @staticmethod
    def _check_expected(a: InstanceAttributes, sop_instance_uid: str | None, sop_class_uid: str | None) -> None:
        if sop_instance_uid is not None and sop_instance_uid != a.sop_instance_uid:
            raise InstanceMismatch(
                f"the dataset's SOP Instance UID {a.sop_instance_uid} differs from the request's "
                f"Affected SOP Instance UID {sop_instance_uid}:",
                0x00080018,
            )
        if sop_class_uid is not None and sop_class_uid != a.sop_class_uid:
            raise InstanceMismatch(
                f"the dataset's SOP Class UID {a.sop_class_uid} differs from the request's "
                f"Affected SOP Class UID {sop_class_uid}:",
                0x00080016,
            )

    def _discard_new_blob(self, key: str) -> None:
        """Delete a blob whose transaction failed, unless the commit might have gone through."""
        try:
            referenced = self.index.is_blob_referenced(key)
        except Exception:
            log.error("cannot tell whether blob %s was committed: kept (at worst an orphan)", key)
            return
        if not referenced:
            self._delete_quietly(key)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except OSError as exc:
            log.error("cannot delete blob %s (left as an orphan): %s", key, exc)

    # reading ----------------------------------------------------------------------------------------

    def get_instance(self, sop_instance_uid: str) -> Instance | None:
        """The instance row, with ``.series``, ``.series.study`` and ``.series.study.patient`` loaded."""
        return self.index.get_instance(sop_instance_uid)

    def open_instance(self, sop_instance_uid: str) -> BinaryIO:
        """The stored Part 10 file of an instance (``KeyError`` if unknown, ``BlobNotFound`` if lost)."""
        found = self.index.find_instance(sop_instance_uid)
        if found is None:
            raise KeyError(sop_instance_uid)
        return self.blobs.open(found[1])

    def instance_path(self, sop_instance_uid: str) -> str | None:
        """Local path of an instance's file (None if unknown or the blob store has no paths)."""
        found = self.index.find_instance(sop_instance_uid)
        return self.blobs.path(found[1]) if found is not None else None

    def counts(self) -> Counts:
        """Number of patients, studies, series and instances."""
        return self.index.counts()

    def count(self, level: Literal["patients", "studies", "series", "instances"] = "instances") -> int:
        return self.index.count(level)

    # deleting ---------------------------------------------------------------------------------------

    def delete_instance(self, sop_instance_uid: str) -> bool:
        """Remove an instance (empty series/study/patient rows go too), crash-safely: see
        :mod:`pacskit.store.deletion`, which also deletes whole patients, studies and series."""
        from pacskit.store.deletion import Deleter

        return Deleter(self).delete("instance", [sop_instance_uid]).instances > 0

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold off :meth:`reindex` while changing rows and blobs together (as ingest does)."""
        with self._gate.shared():
            yield

    # maintenance ------------------------------------------------------------------------------------

    def _iter_rows(self) -> Iterator[tuple[int, str, str, int, str, dt.datetime, str | None]]:
        """Every instance row, a page at a time (short read transactions)."""
        last = 0
        while True:
            with self.index.reading() as s:
                rows = s.execute(
                    select(Instance.pk, Instance.sop_instance_uid, Instance.blob_key, Instance.size,
                           Instance.sha256, Instance.received_at, Instance.source_ae)
                    .where(Instance.pk > last)
                    .order_by(Instance.pk)
                    .limit(_PAGE)
                ).all()
            if not rows:
                return
            for row in rows:
                yield tuple(row)  # type: ignore[misc]
            last = rows[-1][0]

    def _blob_digest(self, key: str, verify_hash: bool) -> tuple[str | None, int]:
        size = None if verify_hash else self.blobs.size(key)
        if size is not None:
            return None, size
        path = self.blobs.path(key)
        if path is not None:
            with open(path, "rb", buffering=0) as fh:
                return sha256_stream(fh)  # type: ignore[arg-type]
        with self.blobs.open(key) as fh:
            return sha256_stream(fh)

    def _verify_copy(self, uid: str, key: str, size: int, sha: str, verify_hash: bool) -> Problem | None:
        """The one test of a stored copy (used by :meth:`check` and :meth:`verify_instances`)."""
        try:
            digest, actual = self._blob_digest(key, verify_hash)
        except InvalidBlobKey:
            return Problem("invalid-key", f"{uid}: invalid blob key {key!r}", key, uid)
        except (BlobNotFound, FileNotFoundError):
            return Problem("missing-blob", f"{uid}: blob {key} is missing", key, uid)
        except OSError as exc:
            return Problem("unreadable-blob", f"{uid}: blob {key}: {exc}", key, uid)
        if actual != size:
            return Problem("size-mismatch", f"{uid}: blob {key} has {actual} bytes, the index says {size}", key, uid)
        if digest is not None and digest != sha:
            return Problem("hash-mismatch", f"{uid}: blob {key} has SHA-256 {digest}, the index says {sha}", key, uid)
        return None

    def verify_instances(self, sop_instance_uids: Iterable[str]) -> dict[str, VerifiedCopy]:
        """Re-read the stored copy of each instance and compare it with the index, as :meth:`check`
        does for the whole archive: the blob must exist with the recorded size and SHA-256.

        Returns one :class:`VerifiedCopy` per UID found in the index (absent UIDs are left out). Reads
        every file in full (streamed): meant for storage commitment, where a row alone proves nothing.
        """
        wanted = list(dict.fromkeys(sop_instance_uids))
        out: dict[str, VerifiedCopy] = {}
        for start in range(0, len(wanted), _PAGE):
            batch = wanted[start : start + _PAGE]
            with self.index.reading() as s:
                rows = s.execute(
                    select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.blob_key, Instance.size,
                           Instance.sha256).where(Instance.sop_instance_uid.in_(batch))
                ).all()
            for uid, sop_class, key, size, sha in rows:
                out[uid] = VerifiedCopy(uid, sop_class, self._verify_copy(uid, key, size, sha, True))
        return out

    def check(self, *, verify_hash: bool = True, progress: Callable[[int, int], None] | None = None) -> CheckReport:
        """Compare the index and the blobs; report every difference (nothing is changed).

        Every row must have its blob with the recorded size and (``verify_hash``) SHA-256; every blob
        must have a row; the per-level counts and ModalitiesInStudy must match the rows. Only reads:
        safe while a server ingests. A blob without a row that an ingest journal records is counted in
        ``in_flight``, not reported: its ingest is in flight (or a crash interrupted it, and start-up
        recovery removes it; it was never acknowledged).
        """
        report = CheckReport()
        referenced: set[str] = set()
        total = self.index.count("instances") if progress is not None else 0  # ``progress(done, total)``: rows
        for _pk, uid, key, size, sha, _at, _ae in self._iter_rows():
            report.instances_checked += 1
            if progress is not None:
                progress(report.instances_checked, max(total, report.instances_checked))
            referenced.add(key)
            problem = self._verify_copy(uid, key, size, sha, verify_hash)
            if problem is not None:
                report.problems.append(problem)
        candidates = []
        for key in self.blobs.iter_keys():
            report.blobs_seen += 1
            if key not in referenced:
                candidates.append(key)
        # Read after the listing: an ingest journals its key before its blob appears, and ends the
        # record only once its row is committed (referenced, below) or its blob deleted (gone, below).
        # A deletion lists its keys before it removes their rows (pacskit.store.deletion).
        from pacskit.store.deletion import pending_keys

        in_flight = self._journalled_keys() if candidates else set()
        deleting = pending_keys(self) if candidates else set()
        for key in candidates:  # re-check: rows committed while we were listing are not orphans
            if self.index.is_blob_referenced(key):
                continue
            maybe_in_flight = getattr(self.blobs, "maybe_in_flight", None)  # stores older than it lack it
            if key in in_flight or (maybe_in_flight is not None and maybe_in_flight(key)):
                # an ingest in flight (its row is not committed yet), or one a crash interrupted: never
                # acknowledged, and start-up recovery deletes it. Not an orphan. A store shared by
                # several nodes also counts its recent blobs here: other nodes journal their own.
                report.in_flight += 1
                continue
            if key in deleting:  # a deletion's committed intent: finished at the next start or delete
                report.pending_deletion += 1
                continue
            if self.blobs.exists(key):  # an ingest that failed meanwhile deleted it
                report.problems.append(Problem("orphan-blob", f"blob {key} has no index row", key))
        report.problems.extend(self._check_counts())
        return report

    def delete_orphans(self, report: CheckReport) -> list[str]:
        """Delete the orphan blobs a :meth:`check` of this store reported; returns their keys.

        An orphan was never acknowledged (a C-STORE is answered after its row commits) or lost its
        row to a delete whose blob deletion failed: nothing refers to it. Each is checked again
        first: still no row, not in an ingest journal, not possibly another node's ingest in flight
        (:meth:`BlobStore.maybe_in_flight`). Safe while servers ingest."""
        keys = [p.blob_key for p in report.problems if p.kind == "orphan-blob" and p.blob_key is not None]
        if not keys:
            return []
        in_flight = self._journalled_keys()
        maybe_in_flight = getattr(self.blobs, "maybe_in_flight", None)
        deleted: list[str] = []
        for key in keys:
            if key in in_flight or self.index.is_blob_referenced(key):
                continue
            if maybe_in_flight is not None and maybe_in_flight(key):
                continue
            self.blobs.delete(key)
            deleted.append(key)
            log.warning("deleted orphan blob %s (no index row)", key)
        return deleted

    def _journalled_keys(self) -> set[str]:
        """Blob keys the ingest journals (every process's) record as in flight right now."""
        keys: set[str] = set() if self.shared_journal is None else self.shared_journal.keys()
        folder = self.blobs.journal_dir
        if folder is None:
            return keys
        for path in journal_files(folder):
            keys.update(recorded_keys(path))
        return keys

    def _check_counts(self) -> list[Problem]:
        from sqlalchemy import func

        problems: list[Problem] = []
        with self.index.reading() as s:
            per_series = dict(s.execute(
                select(Instance.series_fk, func.count()).group_by(Instance.series_fk)).all())
            series_rows = s.execute(
                select(Series.pk, Series.study_fk, Series.series_instance_uid, Series.num_instances,
                       Series.modality)).all()
            studies = s.execute(
                select(Study.pk, Study.patient_fk, Study.study_instance_uid, Study.num_series,
                       Study.num_instances, Study.modalities_in_study)).all()
            patients = s.execute(select(Patient.pk, Patient.patient_id, Patient.num_studies)).all()
        study_series: dict[int, int] = {}
        study_instances: dict[int, int] = {}
        study_modalities: dict[int, set[str]] = {}
        for pk, study_fk, uid, n, modality in series_rows:
            actual = per_series.get(pk, 0)
            if n != actual:
                problems.append(Problem("count-mismatch", f"series {uid}: {n} instances recorded, {actual} found"))
            study_series[study_fk] = study_series.get(study_fk, 0) + 1
            study_instances[study_fk] = study_instances.get(study_fk, 0) + actual
            if modality:
                study_modalities.setdefault(study_fk, set()).add(modality)
        patient_studies: dict[int, int] = {}
        for pk, patient_fk, uid, n_series, n_instances, modalities in studies:
            patient_studies[patient_fk] = patient_studies.get(patient_fk, 0) + 1
            if n_series != study_series.get(pk, 0) or n_instances != study_instances.get(pk, 0):
                problems.append(Problem(
                    "count-mismatch",
                    f"study {uid}: {n_series} series / {n_instances} instances recorded, "
                    f"{study_series.get(pk, 0)} / {study_instances.get(pk, 0)} found"))
            expected = "\\".join(sorted(study_modalities.get(pk, ()))) or None
            if modalities != expected and not (expected and modalities and expected.startswith(modalities)):
                problems.append(Problem(
                    "count-mismatch", f"study {uid}: ModalitiesInStudy {modalities!r}, series say {expected!r}"))
        for pk, pid, n in patients:
            if n != patient_studies.get(pk, 0):
                problems.append(Problem(
                    "count-mismatch", f"patient {pid!r}: {n} studies recorded, {patient_studies.get(pk, 0)} found"))
        return problems

    def reindex(self, *, progress: Callable[[int, int], None] | None = None) -> ReindexReport:
        """Rebuild the whole index from the blobs, in one transaction (readers see old or new).

        Blobs are indexed in the order they were received (as the old index recorded, else file
        modification time), so "first received wins" for patient/study/series attributes is
        reproduced. What the files cannot tell (reception time, calling AE) is carried over from the
        old rows by blob key; for blobs the old index did not know, the file's modification time and
        the file meta's Source AE Title are used. Two blobs with one SOP Instance UID (a crash during
        an overwrite): the one the old index referred to wins, else the later one; the other is
        listed in ``duplicates`` and left in place (an orphan for :meth:`check`).

        Writers of this process wait for the rebuild (and on PostgreSQL those of every process: the
        tables are locked; on SQLite the database is). On MariaDB, stop other processes' ingests
        first: InnoDB has no table lock that lives inside a transaction.
        """
        def rebuild(s: Any) -> ReindexReport:
            if self.index.backend == "postgresql":  # other processes' writers wait for us
                s.execute(text("LOCK TABLE patients, studies, series, instances IN SHARE ROW EXCLUSIVE MODE"))
            old: dict[str, tuple[dt.datetime, str | None]] = {
                key: (at, ae) for key, at, ae in s.execute(
                    select(Instance.blob_key, Instance.received_at, Instance.source_ae))
            }
            order = self._reception_order(old)
            report = ReindexReport()
            self.index.clear(s)
            for n, (when, key) in enumerate(order):
                if progress is not None:  # ``progress(done, total)``: blobs read
                    progress(n, len(order))
                try:
                    attrs, sha, size = self._read_blob(key)
                except (InvalidInstance, OSError, BlobNotFound) as exc:
                    report.skipped.append((key, str(exc)))
                    continue
                ae = old[key][1] if key in old else attrs.source_ae
                existing = s.scalars(
                    select(Instance).where(Instance.sop_instance_uid == attrs.sop_instance_uid)
                ).one_or_none()
                policy: DuplicatePolicy = "overwrite"
                if existing is not None and existing.blob_key in old and key not in old:
                    policy = "keep-first"
                try:
                    rec = self.index.record_instance(
                        s, attrs, blob_key=key, size=size, sha256=sha, received_at=when,
                        source_ae=(ae or "")[:AE] or None, policy=policy,
                    )
                except InvalidInstance as exc:
                    report.skipped.append((key, str(exc)))
                    continue
                if rec.status == IngestStatus.DUPLICATE_IGNORED:
                    report.duplicates.append(key)
                    continue
                if rec.replaced_blob_key is not None:
                    report.duplicates.append(rec.replaced_blob_key)
                    report.indexed -= 1
                report.indexed += 1
                if n % 500 == 499:
                    s.flush()
                    s.expunge_all()
            if progress is not None:
                progress(len(order), len(order))
            return report

        with self._gate.exclusive():
            return self.index.run_write(rebuild, attempts=3)

    def _reception_order(self, old: dict[str, tuple[dt.datetime, str | None]]) -> list[tuple[dt.datetime, str]]:
        order: list[tuple[dt.datetime, str]] = []
        for key in self.blobs.iter_keys():
            if key in old:
                when = old[key][0]
            else:
                path = self.blobs.path(key)
                try:
                    when = (dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.UTC)
                            if path else dt.datetime.now(dt.UTC))
                except FileNotFoundError:
                    continue
            order.append((when, key))
        order.sort()
        return order

    def _read_blob(self, key: str) -> tuple[InstanceAttributes, str, int]:
        validate_key(key)
        path = self.blobs.path(key)
        if path is not None:
            attrs = read_index_attributes(path)
            sha = sha256_file(path)
            return attrs, sha, os.path.getsize(path)
        with self.blobs.open(key) as fh:
            sha, size = sha256_stream(fh)
            fh.seek(0)
            attrs = read_index_attributes(fh)
        return attrs, sha, size
