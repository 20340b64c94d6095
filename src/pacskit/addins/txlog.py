"""Transaction log add-in: every DIMSE operation the server answers, written to the database.

One row per operation (table ``transaction_log``, :class:`pacskit.store.TransactionLogEntry`): when,
who (calling / called AE, association number), from where (peer address), what (service, SOP class),
which UIDs (SOP instance; study and patient where known), the final status (and Error Comment), the
duration, the dataset bytes received and sent, and for C-MOVE / C-GET the sub-operation counts.
``pacskit log`` reads it back with filters.

Off the DIMSE path: the add-in observes the engine's ``operation-completed`` spy event (emitted only
because someone listens) and its observer does one ``put_nowait`` of the event into a bounded queue —
nothing is parsed or written on the event loop. One writer thread takes batches, finds the UIDs and
inserts the batch in one transaction:

* C-STORE: study and patient come from the index (one query per batch, for the stored instances);
* C-FIND / C-MOVE / C-GET: from the identifier (PatientID, StudyInstanceUID, SOPInstanceUID keys
  when they hold a single value); a study without PatientID gets its patient from the index;
* N-services: the SOP instance of the command.

When the queue is full (the database is slower than the operations for longer than the queue lasts)
the operation is not logged: it is counted in :attr:`TransactionLogAddIn.dropped` (for the admin API)
and a warning is logged (at most every 10 s). The DIMSE operation itself is never delayed.

Retention: rows older than ``retention_days`` are deleted by the writer thread every
``purge_interval`` seconds (and once at start); ``retention_days = 0`` keeps everything.

Options::

    [addins.txlog]
    retention_days = 90
    purge_interval = 3600
    queue_size = 10000
    batch_size = 500
    linger = 1.0        # seconds the writer waits to fill a batch
    database_url = ""   # default: the server's database
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import Field
from sqlalchemy import Engine, delete

from pacskit.services import AddIn, AddInOptions
from pacskit.net import SpyEvent
from pacskit.net import events as ev
from pacskit.records.background import BatchWriter
from pacskit.store.engine import WRITE_OPTION

log = logging.getLogger("pacskit.addin.txlog")

_IDENTIFIER_SERVICES = frozenset({"C-FIND", "C-MOVE", "C-GET"})
_SUBOPS = (("completed", "NumberOfCompletedSuboperations"), ("failed", "NumberOfFailedSuboperations"),
           ("warnings", "NumberOfWarningSuboperations"))


class TxLogOptions(AddInOptions):
    retention_days: float = Field(90.0, ge=0, description="delete entries older than this many days (0: keep all)")
    purge_interval: float = Field(3600.0, gt=0, description="seconds between retention purges")
    queue_size: int = Field(10_000, ge=1, description="operations waiting to be written before new ones are dropped")
    batch_size: int = Field(500, ge=1, description="operations written per database transaction")
    linger: float = Field(1.0, ge=0, le=10, description="seconds the writer waits to fill a batch (fewer transactions)")
    database_url: str = Field("", description="SQLAlchemy URL of the log database; empty: the server's database")


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:limit] or None


def _single_uid(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None or value == "":
        return None
    if not isinstance(value, str):  # multi-valued (a list of UIDs): not one study/patient
        try:
            values = list(value)
        except TypeError:
            return _text(value, 64)
        return _text(values[0], 64) if len(values) == 1 else None
    return None if "\\" in value or "*" in value or "?" in value else _text(value, 64)


class TransactionLog:
    """The recorder behind the add-in: queue, writer thread, retention. Usable on its own (tests,
    embedding): call :meth:`observe` with ``operation-completed`` events.

    ``start_writer=False`` leaves the writer thread stopped until :meth:`start` (so a test can fill the
    queue deterministically).
    """

    def __init__(
        self,
        engine: Engine,
        server_ae: str,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        retention_days: float = 90.0,
        purge_interval: float = 3600.0,
        linger: float = 0.0,
        start_writer: bool = True,
    ) -> None:
        # SQLite: BEGIN IMMEDIATE, so the insert waits for the write lock instead of failing to upgrade
        self.engine = engine.execution_options(**{WRITE_OPTION: True}) if engine.dialect.name == "sqlite" else engine
        self.server_ae = server_ae
        self.retention_days = retention_days
        self.writer: BatchWriter[SpyEvent] = BatchWriter(
            "txlog",
            self._write,
            queue_size=queue_size,
            batch_size=batch_size,
            idle=self.purge if retention_days > 0 else None,
            idle_interval=purge_interval,
            linger=linger,
            logger=log,
        )
        if start_writer:
            self.start()

    @property
    def dropped(self) -> int:
        """Operations not logged because the queue was full."""
        return self.writer.dropped

    def start(self) -> None:
        self.writer.start()

    def observe(self, event: SpyEvent) -> None:
        """The ``operation-completed`` observer: one non-blocking put."""
        self.writer.submit(event)

    def flush(self, timeout: float = 10.0) -> bool:
        return self.writer.flush(timeout)

    def close(self) -> None:
        self.writer.close()

    def purge(self, now: dt.datetime | None = None) -> int:
        """Delete entries older than ``retention_days``; returns how many."""
        from pacskit.store.records import TransactionLogEntry

        if self.retention_days <= 0:
            return 0
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=self.retention_days)
        with self.engine.begin() as conn:
            removed = conn.execute(delete(TransactionLogEntry).where(TransactionLogEntry.at < cutoff)).rowcount
        if removed:
            log.info("transaction log: %d entries older than %g days purged", removed, self.retention_days)
        return int(removed or 0)

    # ------------------------------------------------------------------ writer thread

    def _write(self, events: Sequence[SpyEvent]) -> None:
        from pacskit.store.records import TransactionLogEntry

        rows = [self._row(event) for event in events]
        self._fill_from_index(rows)
        with self.engine.begin() as conn:
            conn.execute(TransactionLogEntry.__table__.insert(), rows)

    def _row(self, event: SpyEvent) -> dict[str, Any]:
        d = event.detail
        assoc = event.assoc
        command = d["command"]
        service = d["service"]
        status = d["status"]
        final = d.get("final_elements") or {}
        row: dict[str, Any] = {
            "at": dt.datetime.fromtimestamp(d["started"], dt.UTC),
            "server_ae": self.server_ae,
            "association_id": getattr(assoc, "id", 0),
            "calling_ae": _text(getattr(assoc, "remote_ae_title", ""), 16) or "",
            "called_ae": _text(getattr(assoc, "local_ae_title", ""), 16) or "",
            "peer_address": _address(getattr(assoc, "peer_address", None)),
            "service": service[:16],
            "message_id": int(command.get("MessageID", 0) or 0),
            "sop_class_uid": _text(command.get("AffectedSOPClassUID") or command.get("RequestedSOPClassUID")
                                   or d.get("abstract_syntax"), 64),
            "sop_instance_uid": _text(command.get("AffectedSOPInstanceUID") or command.get("RequestedSOPInstanceUID"), 64),
            "study_instance_uid": None,
            "patient_id": None,
            "move_destination": _text(command.get("MoveDestination"), 16),
            "status": status,
            "error_comment": _text(final.get("ErrorComment"), 64),
            "duration_ms": round(float(d["duration"]) * 1000.0, 3),
            "bytes_received": int(d.get("bytes_received") or 0),
            "bytes_sent": int(d.get("bytes_sent") or 0),
            "completed": None,
            "failed": None,
            "warnings": None,
        }
        for column, keyword in _SUBOPS:
            if final.get(keyword) is not None:
                row[column] = int(final[keyword])
        identifier = d.get("identifier")
        if service in _IDENTIFIER_SERVICES and identifier:
            ds = _decode(identifier, d.get("transfer_syntax", ""))
            if ds is not None:
                row["patient_id"] = _single_uid(ds, "PatientID")
                row["study_instance_uid"] = _single_uid(ds, "StudyInstanceUID")
                row["sop_instance_uid"] = row["sop_instance_uid"] or _single_uid(ds, "SOPInstanceUID")
        return row

    def _fill_from_index(self, rows: list[dict[str, Any]]) -> None:
        """Study and patient of stored instances, from the index (if this database holds one)."""
        from pacskit.store.index.locate import instances_to_studies, studies_to_patients

        wanted = {r["sop_instance_uid"] for r in rows if r["service"] == "C-STORE" and r["sop_instance_uid"]}
        studies = {r["study_instance_uid"] for r in rows if r["study_instance_uid"] and not r["patient_id"]}
        if not wanted and not studies:
            return
        try:
            with self.engine.connect() as conn:
                found = instances_to_studies(conn, wanted)
                patients = studies_to_patients(conn, studies)
        except Exception:  # a log database without the index tables: UIDs stay unknown
            log.debug("transaction log: study/patient lookup failed", exc_info=True)
            return
        for row in rows:
            hit = found.get(row["sop_instance_uid"]) if row["service"] == "C-STORE" else None
            if hit is not None:
                row["study_instance_uid"], row["patient_id"] = hit[0], _text(hit[1], 64)
            elif row["study_instance_uid"] and not row["patient_id"]:
                row["patient_id"] = _text(patients.get(row["study_instance_uid"]), 64)


def _address(peer: Any) -> str | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"[:64]
    return None if peer is None else str(peer)[:64]


def _decode(data: bytes, transfer_syntax: str) -> Any:
    from pacskit.net import ReceivedDataset

    try:
        return ReceivedDataset(transfer_syntax, data=data, size=len(data)).decode()
    except Exception:
        return None


class TransactionLogAddIn(AddIn):
    name = "txlog"
    description = "Transaction log: every DIMSE operation written to the database (pacskit log)"
    Options = TxLogOptions
    options: TxLogOptions

    recorder: TransactionLog | None = None

    @property
    def dropped(self) -> int:
        """Operations not logged because the queue was full (for the admin API's statistics)."""
        return self.recorder.dropped if self.recorder is not None else 0

    async def start(self) -> None:
        engine = self._engine()
        self.recorder = TransactionLog(
            engine,
            self.base.settings.ae_title,
            queue_size=self.options.queue_size,
            batch_size=self.options.batch_size,
            retention_days=self.options.retention_days,
            purge_interval=self.options.purge_interval,
            linger=self.options.linger,
        )
        self.base.events.subscribe(ev.OPERATION_COMPLETED, self.recorder.observe)

    def _engine(self) -> Engine:
        """The log database. On SQLite an engine of our own with ``synchronous=NORMAL``: a log
        transaction then costs no fsync of its own (the next commit of the index, which fsyncs the
        shared WAL, makes it durable) and holds the single write lock for less time — with FULL
        every log batch was one more fsync in the ingest's way. An application crash loses nothing
        committed; a power failure may lose the last batch. Other backends: the store's engine."""
        from pacskit.store import Index
        from pacskit.store.engine import backend_name

        url = self.options.database_url
        store = self.base.store
        index_engine = getattr(getattr(store, "index", None), "engine", None)
        if not url and index_engine is not None:
            if backend_name(index_engine.url) != "sqlite" or index_engine.url.database in (None, "", ":memory:"):
                self._own_engine = None
                return index_engine  # type: ignore[no-any-return]
            index = Index.open(index_engine.url, sqlite_synchronous="NORMAL", pool_size=1)
        else:
            index = Index.open(url or self.base.settings.database_url,
                               **({"sqlite_synchronous": "NORMAL"} if (url or "").startswith("sqlite") else {}))
            index.migrate()
        self._own_engine = index.engine
        return index.engine

    async def stop(self) -> None:
        if self.recorder is None:
            return
        self.base.events.unsubscribe(ev.OPERATION_COMPLETED, self.recorder.observe)
        self.recorder.close()
        if self.recorder.dropped:
            self.base.log.warning("transaction log: %d operations were not logged (queue full)", self.recorder.dropped)
        own = getattr(self, "_own_engine", None)
        if own is not None:
            own.dispose()
        self.recorder = None
