"""Deleting patients, studies, series and instances: index rows and files together, crash-safely.

A deletion must never leave a row whose file is gone (a *dangling row*: a retrieve fails) nor a
file no row refers to (an *orphan*: disk that nothing frees, and ``pacskit check`` complains). The
two cannot change in one atomic step, so a deletion records its intent durably first:

1. the instances are selected and their blob keys written to an *intent file* in the store's
   deletion journal (``<blobs>/deleting/``), fsynced with its directory, and ``flock``-ed for as
   long as this process works on it;
2. one database transaction per study removes the instance rows, fixes the counts and removes the
   series, study and patient rows left empty (a key that changed meanwhile, by an overwrite, is
   added to the intent file before the commit);
3. the blobs are deleted;
4. the intent file is removed.

A crash (kill -9, power loss) before 2 commits leaves everything in place; after it, the rows are
gone and their files are listed in an intent file nobody holds. :func:`finish_interrupted` (run by
:meth:`pacskit.store.DataStore.recover` at start-up, and by every deletion before it starts)
deletes each listed blob that no row references, then the intent file. It is safe while others
write: an intent file is only finished when its ``flock`` can be taken (its process is gone), and
a blob is only deleted when no row refers to it. ``DataStore.check`` counts listed blobs as
*pending deletion*, not as orphans.

**In a cluster** (several nodes on one PostgreSQL and one object store, :mod:`pacskit.store.cluster`)
a node's local folder is nobody else's business, so a serving node records its intent in the shared
database instead (``cluster_deletions``, keyed by node and intent; :class:`_SharedIntent`), committed
before the row deletions and removed once the blobs are gone. A node that dies mid-deletion leaves
its intent under its node id; the live node that recovers it (lease expired) takes the intent over
and deletes each listed blob no row references (:meth:`pacskit.store.cluster.ClusterNode.finish_deletions`).
The transaction deleting rows checks (``FOR SHARE``) that the intent is still its node's: a node
declared dead while paused, whose intent another node took over, cannot delete rows whose blobs
the other node may already have skipped. A deletion that fails (a blob the object store would not delete) keeps its intent for that same
finishing. ``check`` counts the keys of every node's intents as pending deletion. A process that is
not a serving node (``pacskit`` commands) keeps the intent file.

A deletion is atomic per study: killed while deleting a patient's third study, the first two are
gone, the others are whole.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, or_, select

from pacskit.store.blobs import validate_key
from pacskit.store.ingestlog import fsync_path
from pacskit.store.index.models import Instance, Patient, Series, Study

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pacskit.store.datastore import DataStore, SharedJournal

log = logging.getLogger("pacskit.store.deletion")

Level = Literal["patient", "study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("patient", "study", "series", "instance")

#: folder of the intent files, beside the blobs (FilesystemBlobStore ignores it when listing keys)
JOURNAL_FOLDER = "deleting"
_INTENT_PREFIX = "delete-"
_CHUNK = 500


@dataclass(slots=True)
class StudyDeletion:
    """What a deletion removes (or, in a dry run, would remove) of one study."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    study_date: str | None
    whole_study: bool  # every instance of the study goes (an audit "Study Deleted"), else a part
    series: list[str] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    sop_classes: dict[str, int] = field(default_factory=dict)
    done: bool = False  # its transaction committed

    def to_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid, "patient_id": self.patient_id,
            "patient_name": self.patient_name, "study_date": self.study_date, "whole_study": self.whole_study,
            "series": list(self.series), "instances": self.instances, "bytes": self.bytes,
            "sop_classes": dict(self.sop_classes), "done": self.done,
        }


@dataclass(slots=True)
class DeletionReport:
    """The result of :meth:`Deleter.delete`: what went (or would go, ``dry_run``), what was not found."""

    level: Level
    requested: list[str]
    dry_run: bool
    studies: list[StudyDeletion] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    blobs_deleted: int = 0

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.studies)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.studies)

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level, "requested": list(self.requested), "dry_run": self.dry_run,
            "studies": [s.to_json() for s in self.studies], "not_found": list(self.not_found),
            "instances": self.instances, "bytes": self.bytes, "blobs_deleted": self.blobs_deleted,
        }

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        patients = len({s.patient_id for s in self.studies})
        return (f"{verb} {self.instances} instances ({_size(self.bytes)}) of {len(self.studies)} studies "
                f"of {patients} patients")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class _Row:
    pk: int
    blob_key: str
    size: int
    sop_class_uid: str
    series_uid: str
    study_pk: int


# ------------------------------------------------------------------------------ the intent journal


def journal_folder(store: DataStore) -> str | None:
    """The deletion journal of ``store``'s blobs (``None``: a blob store without a journal, e.g. memory)."""
    ingest = getattr(store.blobs, "journal_dir", None)
    if ingest is None:
        return None
    folder = os.path.join(os.path.dirname(ingest), JOURNAL_FOLDER)
    os.makedirs(folder, exist_ok=True)
    return folder


class _Intent:
    """One intent file, held (``flock``) by this process while the deletion runs."""

    def __init__(self, folder: str, keys: Iterable[str], what: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, f"{_INTENT_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        self.keys: set[str] = set()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        head = json.dumps({"pid": os.getpid(), "at": dt.datetime.now(dt.UTC).isoformat(), "what": what})
        os.write(self._fd, (head + "\n").encode())
        self.add(keys)
        fsync_path(folder, directory=True)

    def add(self, keys: Iterable[str]) -> None:
        """Record more keys, durably (the file is fsynced before this returns)."""
        new = [k for k in keys if k not in self.keys]
        if not new:
            return
        os.write(self._fd, "".join(k + "\n" for k in new).encode("ascii"))
        os.fsync(self._fd)
        self.keys.update(new)

    def close(self) -> None:
        """Every listed blob is deleted: remove the file (a crash before is harmless: nothing left to do)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)


class _SharedIntent:
    """One deletion intent of a cluster node, in the shared database (same interface as :class:`_Intent`)."""

    def __init__(self, journal: SharedJournal, keys: Iterable[str], what: str) -> None:
        self.journal = journal
        self.intent = secrets.token_hex(16)
        self.keys: set[str] = set()
        self.done = False  # every blob deleted: close() forgets the intent; else it stays to be finished
        log.debug("deletion intent %s of node %s: %s", self.intent, journal.node_id, what)
        try:
            self.add(keys)
        except BaseException:
            journal.end_deletion(self.intent, done=False)
            raise

    def add(self, keys: Iterable[str]) -> None:
        """Record more keys, committed before this returns (and so before the rows' deletion commits)."""
        new = [k for k in keys if k not in self.keys]
        if not new:
            return
        self.journal.intend_deletion(self.intent, new)
        self.keys.update(new)

    def fence(self, session: Session) -> None:
        """In the rows' transaction: the intent is still ours (see ``SharedInflight.fence_deletion``)."""
        self.journal.fence_deletion(session, self.intent, len(self.keys))

    def close(self) -> None:
        self.journal.end_deletion(self.intent, done=self.done)


def open_intent(store: DataStore, keys: Sequence[str], what: str) -> _Intent | _SharedIntent | None:
    """The deletion's intent: shared when this process is a cluster node, else the local intent file
    (``None``: a blob store without a journal, e.g. memory)."""
    shared = store.shared_journal
    if shared is not None and shared.node_id is not None:
        return _SharedIntent(shared, keys, what)
    folder = journal_folder(store)
    return _Intent(folder, keys, what) if folder else None


def _intent_keys(path: str) -> list[str]:
    with open(path, "rb") as fh:
        lines = fh.read().decode("ascii", "replace").splitlines()
    keys = []
    for line in lines[1:]:
        try:
            keys.append(validate_key(line.strip()))
        except Exception:
            continue  # a torn last line (crash while appending): that key's rows were not deleted yet
    return keys


def _orphaned_intents(folder: str) -> Iterator[tuple[str, int]]:
    """Intent files nobody holds, each yielded with its ``flock`` taken (the caller closes the fd)."""
    for name in sorted(os.listdir(folder)):
        if not name.startswith(_INTENT_PREFIX):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a deletion in progress
            os.close(fd)
            continue
        yield path, fd


def finish_interrupted(store: DataStore) -> int:
    """Finish the deletions a crash interrupted: delete each journalled blob no row refers to.

    Returns the number of blobs deleted. Safe while other processes ingest or delete (see the module
    docstring); intent files of deletions still running are left alone.
    """
    folder = journal_folder(store)
    if folder is None:
        return 0
    removed = 0
    for path, fd in _orphaned_intents(folder):
        try:
            if not os.path.exists(path):  # finished by someone else between listdir and flock
                continue
            for key in _intent_keys(path):
                if store.blobs.exists(key) and not store.index.is_blob_referenced(key):
                    store.blobs.delete(key)
                    removed += 1
            os.unlink(path)
        finally:
            os.close(fd)
    if removed:
        log.warning("finished an interrupted deletion: %d files removed", removed)
    return removed


def pending_keys(store: DataStore) -> set[str]:
    """Blob keys listed by intent files and a cluster's shared intents (deletions running, or
    interrupted and not finished yet)."""
    keys: set[str] = set() if store.shared_journal is None else store.shared_journal.deleting_keys()
    folder = journal_folder(store)
    if folder is None:
        return keys
    for name in os.listdir(folder):
        if name.startswith(_INTENT_PREFIX):
            try:
                keys.update(_intent_keys(os.path.join(folder, name)))
            except FileNotFoundError:
                pass
    return keys


# ------------------------------------------------------------------------------ selection


def _condition(level: Level, uids: Sequence[str]) -> Any:
    if level == "patient":
        parts = []
        for uid in uids:  # "ID" or "ID^^^ISSUER"-less form "ID|ISSUER": the issuer narrows when given
            pid, _, issuer = uid.partition("|")
            cond = Patient.patient_id == pid
            parts.append(and_(cond, Patient.issuer_of_patient_id == issuer) if issuer else cond)
        return or_(*parts)
    column = {"study": Study.study_instance_uid, "series": Series.series_instance_uid,
              "instance": Instance.sop_instance_uid}[level]
    return column.in_(list(uids))


class Deleter:
    """Deletes from ``store`` (see the module docstring). Thread-safe; one per store is enough.

    ``delete(level, uids)``: ``level`` one of :data:`LEVELS`; ``uids`` Study/Series/SOP Instance UIDs,
    or Patient IDs (``"ID|ISSUER"`` to name the issuer of the patient ID). ``dry_run`` selects and
    reports without changing anything. ``on_study`` is called after each study's transaction
    committed (audit it there).
    """

    def __init__(self, store: DataStore) -> None:
        self.store = store

    def select(self, level: Level, uids: Sequence[str]) -> tuple[dict[int, StudyDeletion], dict[int, list[_Row]], list[str]]:
        """(study pk -> its deletion, study pk -> its instance rows, identifiers that matched nothing)."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
        uids = [u.strip() for u in uids if u.strip()]
        if not uids:
            raise ValueError("nothing to delete: give at least one identifier")
        studies: dict[int, StudyDeletion] = {}
        rows: dict[int, list[_Row]] = {}
        found: set[str] = set()
        seen: set[int] = set()
        key_column = {"patient": Patient.patient_id, "study": Study.study_instance_uid,
                      "series": Series.series_instance_uid, "instance": Instance.sop_instance_uid}[level]
        for start in range(0, len(uids), _CHUNK):
            chunk = uids[start:start + _CHUNK]
            with self.store.index.reading() as s:
                result = s.execute(
                    select(Instance.pk, Instance.blob_key, Instance.size, Instance.sop_class_uid,
                           Series.series_instance_uid, Study.pk, Study.study_instance_uid, Study.study_date,
                           Patient.patient_id, Patient.patient_name, key_column)
                    .join(Series, Instance.series_fk == Series.pk)
                    .join(Study, Series.study_fk == Study.pk)
                    .join(Patient, Study.patient_fk == Patient.pk)
                    .where(_condition(level, chunk))
                    .order_by(Study.pk, Instance.pk)
                )
                for (pk, key, size, sop_class, series_uid, study_pk, study_uid, study_date,
                     patient_id, patient_name, matched) in result:
                    found.add(matched)
                    if pk in seen:  # named twice (a patient ID with two issuers, a repeated UID)
                        continue
                    seen.add(pk)
                    part = studies.get(study_pk)
                    if part is None:
                        part = studies[study_pk] = StudyDeletion(
                            study_uid, patient_id, patient_name, study_date, whole_study=False)
                    rows.setdefault(study_pk, []).append(_Row(pk, key, size, sop_class, series_uid, study_pk))
                    part.instances += 1
                    part.bytes += size
                    part.sop_classes[sop_class] = part.sop_classes.get(sop_class, 0) + 1
                    if series_uid not in part.series:
                        part.series.append(series_uid)
        with self.store.index.reading() as s:
            totals = dict(s.execute(select(Study.pk, Study.num_instances).where(Study.pk.in_(list(studies)))).all())
        for study_pk, part in studies.items():
            part.whole_study = part.instances >= totals.get(study_pk, 0)
        if level == "patient":
            not_found = [u for u in uids if u.partition("|")[0] not in found]
        else:
            not_found = [u for u in uids if u not in found]
        return studies, rows, not_found

    def delete(
        self,
        level: Level,
        uids: Sequence[str],
        *,
        dry_run: bool = False,
        on_study: Callable[[StudyDeletion], None] | None = None,
        reason: str = "",
    ) -> DeletionReport:
        studies, rows, not_found = self.select(level, uids)
        report = DeletionReport(level, list(uids), dry_run, list(studies.values()), not_found)
        if dry_run or not studies:
            return report
        finish_interrupted(self.store)
        all_keys = [r.blob_key for study_rows in rows.values() for r in study_rows]
        intent = open_intent(self.store, all_keys, f"{level} {' '.join(uids)[:200]} {reason}".strip())
        try:
            with self.store.writing():
                for study_pk, study_rows in rows.items():
                    def remove(s: Session, study_rows: list[_Row] = study_rows) -> list[str]:
                        return self._remove(s, study_rows, intent)

                    keys = self.store.index.run_write(remove)
                    self.store.index.sync()  # the rows are gone for good before their files go
                    part = studies[study_pk]
                    part.done = True
                    if on_study is not None:
                        try:
                            on_study(part)
                        except Exception:
                            log.exception("after deleting study %s", part.study_instance_uid)
                    for key in keys:
                        self.store.blobs.delete(key)
                        report.blobs_deleted += 1
                    sync_removals = getattr(self.store.blobs, "sync_removals", None)
                    if sync_removals is not None:  # no deleted file may come back after a power cut
                        sync_removals(keys)
            if isinstance(intent, _SharedIntent):
                intent.done = True
        finally:
            if intent is not None:
                intent.close()
        log.info("%s (%s %s)%s", report.summary(), level, ", ".join(uids)[:300], f": {reason}" if reason else "")
        return report

    def _remove(self, s: Session, study_rows: list[_Row], intent: _Intent | _SharedIntent | None) -> list[str]:
        """One study's rows, in the caller's transaction; returns the blob keys of the rows removed."""
        pks = [r.pk for r in study_rows]
        current: list[tuple[int, str]] = []
        for start in range(0, len(pks), _CHUNK):
            current += [tuple(row) for row in s.execute(  # type: ignore[misc]
                select(Instance.pk, Instance.blob_key).where(Instance.pk.in_(pks[start:start + _CHUNK]))
            ).all()]
        keys = [key for _pk, key in current]
        if intent is not None:
            intent.add(keys)  # an overwrite switched a row to a new file meanwhile: record it first
        self.store.index.remove_instances(s, [pk for pk, _key in current])
        if isinstance(intent, _SharedIntent):  # a cluster: a node that recovered ours must not see them go
            intent.fence(s)
        return keys


__all__ = [
    "JOURNAL_FOLDER",
    "LEVELS",
    "Deleter",
    "DeletionReport",
    "Level",
    "StudyDeletion",
    "finish_interrupted",
    "journal_folder",
    "open_intent",
    "pending_keys",
]
