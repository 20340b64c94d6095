"""The storage commitment add-in's tables: requests waiting for (or done with) their N-EVENT-REPORT.

A request is written before its N-ACTION is answered with Success, so that a restart never forgets a
commitment the requester was promised (PS3.4 J.3.2). Its items are the Referenced SOP Sequence in the
order received; ``failure_reason`` is filled when the store has been checked (0 = committed), and is
kept as it was across retries of the report, so every attempt reports the same result.

States: ``pending`` (not reported yet; resumed at start-up), ``reported`` (the requester answered the
N-EVENT-REPORT with Success), ``failed`` (every attempt to report failed; kept for the operator).
Migration 0004 creates these tables.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pacskit.store.index.models import AE, MYSQL_TABLE_ARGS, PK, UID_COLUMN, Base, UTCDateTime

STATE_PENDING = "pending"
STATE_REPORTED = "reported"
STATE_FAILED = "failed"
ERROR_TEXT = 255


class CommitmentRequest(Base):
    """One N-ACTION (Request Storage Commitment) and what became of its report."""

    __tablename__ = "storage_commitment_requests"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    transaction_uid: Mapped[str] = mapped_column(String(UID_COLUMN), index=True)
    #: calling AE title of the requester: where a report on a new association goes (AE registry)
    requester_ae: Mapped[str] = mapped_column(String(AE))
    state: Mapped[str] = mapped_column(String(16), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: when the store was checked (the items' failure reasons are set), None before
    checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reported_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: attempts to send the report so far (on the same association or a new one)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(String(ERROR_TEXT), nullable=True)

    items: Mapped[list[CommitmentItem]] = relationship(
        back_populates="request", order_by="CommitmentItem.pk", cascade="all, delete-orphan"
    )

    __table_args__ = (MYSQL_TABLE_ARGS,)

    def __repr__(self) -> str:
        return f"CommitmentRequest(pk={self.pk}, transaction={self.transaction_uid!r}, state={self.state!r})"


class CommitmentItem(Base):
    """One Referenced SOP Sequence item of a request."""

    __tablename__ = "storage_commitment_items"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    request_fk: Mapped[int] = mapped_column(PK, ForeignKey("storage_commitment_requests.pk", name="fk_storage_commitment_items_request_fk"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_COLUMN))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN))
    #: None: not checked yet; 0: committed; else the Failure Reason (0008,1197) reported
    failure_reason: Mapped[int | None] = mapped_column(Integer, nullable=True)

    request: Mapped[CommitmentRequest] = relationship(back_populates="items")

    __table_args__ = (MYSQL_TABLE_ARGS,)
