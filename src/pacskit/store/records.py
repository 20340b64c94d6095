"""Record-keeping tables beside the index: transaction log, log records, audit trail (migration 0005).

They share the index database (and its Alembic history) so that one ``database.url`` keeps a server's
whole state, and every backend the index supports holds them too. Nothing here references the
patient/study tables by foreign key: records outlive the instances they mention (a study may be
deleted; its audit trail must stay).

* :class:`TransactionLogEntry` — one row per DIMSE operation a server answered (the transaction log
  add-in, ``pacskit log``).
* :class:`LogRecord` — log lines of the ``database`` logging destination.
* :class:`AuditRecord` — PS3.15 A.5 audit messages (the audit add-in): the XML as sent, plus the
  columns an operator filters on.

Timestamps are UTC (:class:`~pacskit.store.index.models.UTCDateTime`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from pacskit.store.index.models import AE, LO, MYSQL_TABLE_ARGS, PK, UID_COLUMN, Base, UTCDateTime

#: long text: TEXT is 64 KiB on MariaDB, too small for an audit message with a large query
LONG_TEXT = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
ADDRESS = 64  # "host:port", IPv6 included
SERVICE = 16


class TransactionLogEntry(Base):
    """One DIMSE operation: who, from where, what, which UIDs, outcome, duration, bytes."""

    __tablename__ = "transaction_log"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    #: when handling of the request began
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    server_ae: Mapped[str] = mapped_column(String(AE))
    association_id: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str] = mapped_column(String(AE), index=True)
    called_ae: Mapped[str] = mapped_column(String(AE))
    peer_address: Mapped[str | None] = mapped_column(String(ADDRESS))
    service: Mapped[str] = mapped_column(String(SERVICE), index=True)
    message_id: Mapped[int] = mapped_column(Integer)
    sop_class_uid: Mapped[str | None] = mapped_column(String(UID_COLUMN))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_COLUMN))
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_COLUMN), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(LO), index=True)
    move_destination: Mapped[str | None] = mapped_column(String(AE))
    #: the final DIMSE status sent; NULL when the association broke before one was sent
    status: Mapped[int | None] = mapped_column(Integer)
    error_comment: Mapped[str | None] = mapped_column(String(LO))
    duration_ms: Mapped[float] = mapped_column(Float)
    bytes_received: Mapped[int] = mapped_column(BigInteger)
    bytes_sent: Mapped[int] = mapped_column(BigInteger)
    #: C-MOVE / C-GET sub-operations: completed, failed, warning (from the final response)
    completed: Mapped[int | None] = mapped_column(Integer)
    failed: Mapped[int | None] = mapped_column(Integer)
    warnings: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class LogRecord(Base):
    """A log line of the ``database`` destination (see docs/logging.md)."""

    __tablename__ = "log_records"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    level: Mapped[str] = mapped_column(String(8), index=True)
    logger: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(LONG_TEXT)
    process: Mapped[int] = mapped_column(Integer)
    addin: Mapped[str | None] = mapped_column(String(64))
    association_id: Mapped[int | None] = mapped_column(BigInteger)
    calling_ae: Mapped[str | None] = mapped_column(String(AE))

    __table_args__ = (MYSQL_TABLE_ARGS,)


class AuditRecord(Base):
    """One PS3.15 A.5 audit message, kept whether or not a syslog collector is configured."""

    __tablename__ = "audit_records"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    #: EventID code (DCM), e.g. "110112" for Query
    event_id: Mapped[str] = mapped_column(String(16), index=True)
    event_name: Mapped[str] = mapped_column(String(64))
    #: EventTypeCode code when the message has one (e.g. "110120" Application Start)
    event_type: Mapped[str | None] = mapped_column(String(16))
    event_action: Mapped[str] = mapped_column(String(1))
    #: EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure, 12 major failure
    outcome: Mapped[int] = mapped_column(Integer)
    #: the requesting participant's UserID (a calling AE title, a user name...)
    requestor: Mapped[str | None] = mapped_column(String(128))
    patient_id: Mapped[str | None] = mapped_column(String(LO))
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_COLUMN))
    xml: Mapped[str] = mapped_column(LONG_TEXT)

    __table_args__ = (MYSQL_TABLE_ARGS,)


def status_condition(column: Any, wanted: int | str) -> Any:
    """SQL condition for a status code or category (PS3.7 C.1, as :func:`pacskit.net.status_category`)."""
    from sqlalchemy import and_, not_, or_

    if isinstance(wanted, int):
        return column == wanted
    warning = or_(column.in_((0x0001, 0x0107, 0x0116)), and_(column >= 0xB000, column <= 0xBFFF))
    if wanted == "success":
        return column == 0
    if wanted == "cancel":
        return column == 0xFE00
    if wanted == "warning":
        return warning
    # failure: anything else, and operations that never got a final status
    return or_(column.is_(None), not_(or_(column == 0, column == 0xFE00, column.in_((0xFF00, 0xFF01)), warning)))


__all__ = ["AuditRecord", "LogRecord", "TransactionLogEntry", "status_condition"]
