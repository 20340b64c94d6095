"""The audit trail of one server: stores every message in the database and sends it to a syslog
collector, spooling on disk while the collector is unreachable.

Nothing here runs on the DIMSE path. :meth:`AuditTrail.emit` queues a built message for two writer
threads (:class:`~pacskit.records.background.BatchWriter`):

* **database**: inserts into ``audit_records`` (one transaction per batch; ``database_linger`` seconds
  to fill a batch, so a busy server does not commit once per query);
* **syslog** (when configured): RFC 5424 (``MSGID`` ``IHE+RFC-3881``, facility authpriv, severity
  notice, as IHE ATNA ITI-20 asks) over TLS (RFC 5425) or UDP (RFC 5426). A message that cannot be
  sent (connection refused, TLS failure, timeout) is written to the spool folder, one file per
  message, in order; while the spool holds anything, new messages join it behind the older ones.
  Every ``retry_interval`` seconds the writer sends the spool oldest first and deletes each file once
  sent. The spool survives restarts (it is re-sent by the next run). Above ``max_spool`` files new
  messages are not spooled but counted in :attr:`AuditTrail.dropped` (they are still in the
  database).

UDP cannot tell that nobody listens, except through an ICMP "port unreachable" that a connected
socket reports on a later send; use TLS where delivery matters.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pacskit.audit.messages import AuditMessage, AuditSource
from pacskit.records.background import BatchWriter
from pacskit.records.syslog import FACILITIES, SEVERITIES, SyslogSender, format_message

log = logging.getLogger("pacskit.audit")

SYSLOG_MSGID = "IHE+RFC-3881"


class AuditTrail:
    """See the module docstring. ``engine`` (SQLAlchemy) and ``sender`` are both optional."""

    def __init__(
        self,
        source: AuditSource,
        *,
        engine: Any = None,
        sender: SyslogSender | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        queue_size: int = 10_000,
        retry_interval: float = 10.0,
        max_spool: int = 100_000,
        database_linger: float = 0.0,
        app_name: str = "pacskit",
        start: bool = True,
    ) -> None:
        if sender is not None and spool_dir is None:
            raise ValueError("a syslog sender needs a spool folder")
        self.source = source
        self.engine = engine
        if engine is not None and engine.dialect.name == "sqlite":
            from pacskit.store.engine import WRITE_OPTION

            self.engine = engine.execution_options(**{WRITE_OPTION: True})
        self.sender = sender
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.max_spool = max_spool
        self.app_name = app_name
        self.hostname = socket.gethostname()
        self._seq = itertools.count()
        self._spool_lock = threading.Lock()
        self._spool_dropped = 0
        self._unreachable_logged = False
        self.sent = 0
        self._db: BatchWriter[AuditMessage] | None = (
            BatchWriter("audit-db", self._store, queue_size=queue_size, linger=database_linger, logger=log)
            if engine is not None
            else None
        )
        self._syslog: BatchWriter[bytes] | None = None
        if sender is not None:
            assert self.spool_dir is not None
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._syslog = BatchWriter("audit-syslog", self._send, queue_size=queue_size, idle=self._retry_spool,
                                       idle_interval=retry_interval, logger=log)
        if start:
            self.start()

    # ------------------------------------------------------------------ API

    def start(self) -> None:
        for writer in self._writers():
            writer.start()

    def emit(self, message: AuditMessage) -> bool:
        """Queue ``message`` for the database and the collector; never blocks. ``False`` if dropped."""
        ok = True
        if self._db is not None:
            ok = self._db.submit(message) and ok
        if self._syslog is not None:
            ok = self._syslog.submit(self.syslog_bytes(message)) and ok
        return ok

    def syslog_bytes(self, message: AuditMessage) -> bytes:
        """The RFC 5424 message carrying ``message`` (as sent and as spooled)."""
        return format_message(
            message.xml,
            facility=FACILITIES["authpriv"],
            severity=SEVERITIES["notice"],
            timestamp=message.at,
            hostname=self.hostname,
            app_name=self.app_name,
            msgid=SYSLOG_MSGID,
        )

    @property
    def dropped(self) -> int:
        """Messages lost: queue full (database or syslog) or spool full."""
        return sum(w.dropped for w in self._writers()) + self._spool_dropped

    @property
    def spooled(self) -> int:
        """Messages waiting in the spool for the collector."""
        return len(self._spool_files())

    def flush(self, timeout: float = 10.0) -> bool:
        return all(w.flush(timeout) for w in self._writers())

    def retry_spool(self) -> int:
        """Send the spool now (the writer also does so every ``retry_interval``); returns how many were sent."""
        if self._syslog is None:
            return 0
        return self._retry_spool()

    def close(self) -> None:
        for writer in self._writers():
            writer.close()
        if self.sender is not None:
            self.sender.close()

    def _writers(self) -> list[BatchWriter[Any]]:
        return [w for w in (self._db, self._syslog) if w is not None]

    # ------------------------------------------------------------------ database

    def _store(self, batch: Sequence[AuditMessage]) -> None:
        from pacskit.store.records import AuditRecord

        rows = [
            {
                "at": m.at,
                "event_id": m.event_id.code,
                "event_name": m.event_id.meaning[:64],
                "event_type": m.event_type.code if m.event_type else None,
                "event_action": m.action,
                "outcome": m.outcome,
                "requestor": (m.requestor or None) and m.requestor[:128],
                "patient_id": (m.patient_id or None) and m.patient_id[:64],
                "study_instance_uid": (m.study_instance_uid or None) and m.study_instance_uid[:64],
                "xml": m.xml,
            }
            for m in batch
        ]
        with self.engine.begin() as conn:
            conn.execute(AuditRecord.__table__.insert(), rows)

    # ------------------------------------------------------------------ syslog + spool

    def _spool_files(self) -> list[Path]:
        if self.spool_dir is None:
            return []
        return sorted(p for p in self.spool_dir.iterdir() if p.suffix == ".syslog")

    def _send(self, batch: Sequence[bytes]) -> None:
        assert self.sender is not None
        for data in batch:
            if self._spool_files():
                self._spool(data)  # keep the order: older messages go first
                continue
            try:
                self.sender.send(data)
                self.sent += 1
                self._unreachable_logged = False
            except OSError as exc:
                if not self._unreachable_logged:
                    log.warning("audit collector %s:%d unreachable (%s); spooling to %s", self.sender.host,
                                self.sender.port, exc, self.spool_dir)
                    self._unreachable_logged = True
                self._spool(data)

    def _spool(self, data: bytes) -> None:
        assert self.spool_dir is not None
        with self._spool_lock:
            if len(self._spool_files()) >= self.max_spool:
                self._spool_dropped += 1
                return
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
            name = f"{stamp}-{next(self._seq):09d}.syslog"
            tmp = self.spool_dir / (name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.spool_dir / name)

    def _retry_spool(self) -> int:
        assert self.sender is not None
        sent = 0
        with self._spool_lock:
            for path in self._spool_files():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                try:
                    self.sender.send(data)
                except OSError:
                    break
                path.unlink(missing_ok=True)
                sent += 1
                self.sent += 1
        if sent:
            self._unreachable_logged = False
            log.info("audit collector reachable again: %d spooled messages sent", sent)
        return sent
