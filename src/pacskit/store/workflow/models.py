"""Workflow tables: Modality Worklist scheduled procedure steps and Modality Performed Procedure Steps.

Migration ``0003``. One :class:`WorklistItem` row per *scheduled procedure step*: the attributes of the
imaging service request, the requested procedure and the patient, plus one item of the Scheduled
Procedure Step Sequence. A worklist entry whose Scheduled Procedure Step Sequence holds several items
becomes several rows (each answers a C-FIND on its own, as worklist SCPs usually do).

The columns hold the matching keys of PS3.4 K.6 (decoded Unicode, like the index); ``dataset`` holds the
whole entry in the DICOM JSON model (PS3.18 F.2), so that any return key is answered, not only the
columns. The columns are derived from ``dataset`` whenever a row is written (:mod:`pacskit.store.workflow.worklist`),
never edited on their own. Scheduled Station AE Title is multi-valued (``AA32\\AA33``): its values are
rows of :class:`WorklistStationAE`, so that single-value and wildcard matching test each value.

:class:`PerformedProcedureStep` keeps one MPPS instance (its state, the attributes modalities send,
the whole dataset as DICOM JSON); :class:`PerformedStepLink` links it to the scheduled steps it
performs (from its Scheduled Step Attributes Sequence).

The portability rules of :mod:`pacskit.store.index.models` apply (VR lengths, ``utf8mb4_bin`` on MariaDB,
``C`` collation for the person-name search columns on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pacskit.store.index.models import (
    AE,
    CS,
    DA,
    LO,
    MYSQL_INDEX_PREFIX,
    MYSQL_TABLE_ARGS,
    PK,
    PN,
    SEARCH_STRING,
    SH,
    TM,
    UID_COLUMN,
    Base,
    UTCDateTime,
)

#: the DICOM JSON of an entry: TEXT, LONGTEXT on MariaDB (TEXT is 64 KiB there)
JSON_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


class WorklistItem(Base):
    """One scheduled procedure step of the Modality Worklist."""

    __tablename__ = "worklist_items"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    # patient
    patient_id: Mapped[str | None] = mapped_column(String(LO), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(LO))
    patient_name: Mapped[str | None] = mapped_column(String(PN))
    patient_name_search: Mapped[str | None] = mapped_column(SEARCH_STRING)
    patient_birth_date: Mapped[str | None] = mapped_column(String(DA))
    patient_sex: Mapped[str | None] = mapped_column(String(CS))
    # imaging service request / requested procedure
    accession_number: Mapped[str | None] = mapped_column(String(SH), index=True)
    referring_physician_name: Mapped[str | None] = mapped_column(String(PN))
    referring_physician_name_search: Mapped[str | None] = mapped_column(SEARCH_STRING)
    requesting_physician: Mapped[str | None] = mapped_column(String(PN))
    requesting_physician_search: Mapped[str | None] = mapped_column(SEARCH_STRING)
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_COLUMN))
    requested_procedure_id: Mapped[str | None] = mapped_column(String(SH))
    requested_procedure_description: Mapped[str | None] = mapped_column(String(LO))
    requested_procedure_priority: Mapped[str | None] = mapped_column(String(CS))
    # the scheduled procedure step (one item of the Scheduled Procedure Step Sequence)
    modality: Mapped[str | None] = mapped_column(String(CS))
    sps_start_date: Mapped[str | None] = mapped_column(String(DA), index=True)
    sps_start_time: Mapped[str | None] = mapped_column(String(TM))
    scheduled_performing_physician_name: Mapped[str | None] = mapped_column(String(PN))
    scheduled_performing_physician_name_search: Mapped[str | None] = mapped_column(SEARCH_STRING)
    sps_id: Mapped[str | None] = mapped_column(String(SH), index=True)
    sps_description: Mapped[str | None] = mapped_column(String(LO))
    sps_status: Mapped[str | None] = mapped_column(String(CS))
    scheduled_station_name: Mapped[str | None] = mapped_column(String(SH))
    sps_location: Mapped[str | None] = mapped_column(String(SH))
    #: the whole entry (this step's item only in its Scheduled Procedure Step Sequence), DICOM JSON
    dataset: Mapped[str] = mapped_column(JSON_TEXT)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    station_aes: Mapped[list[WorklistStationAE]] = relationship(
        back_populates="item", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        Index(
            "ix_worklist_items_patient_name_search",
            "patient_name_search",
            mysql_length=MYSQL_INDEX_PREFIX,
            mariadb_length=MYSQL_INDEX_PREFIX,
        ),
        MYSQL_TABLE_ARGS,
    )

    def __repr__(self) -> str:
        return f"WorklistItem(pk={self.pk}, accession={self.accession_number!r}, sps_id={self.sps_id!r})"


class WorklistStationAE(Base):
    """One value of a step's Scheduled Station AE Title (0040,0001)."""

    __tablename__ = "worklist_station_aes"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    item_fk: Mapped[int] = mapped_column(PK, ForeignKey("worklist_items.pk", ondelete="CASCADE"), index=True)
    ae_title: Mapped[str] = mapped_column(String(AE), index=True)

    item: Mapped[WorklistItem] = relationship(back_populates="station_aes")

    __table_args__ = (MYSQL_TABLE_ARGS,)


class PerformedProcedureStep(Base):
    """One Modality Performed Procedure Step SOP instance (N-CREATE'd, then N-SET)."""

    __tablename__ = "performed_procedure_steps"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN), unique=True)
    #: IN PROGRESS, COMPLETED or DISCONTINUED
    status: Mapped[str] = mapped_column(String(CS), index=True)
    calling_ae: Mapped[str | None] = mapped_column(String(AE))
    patient_id: Mapped[str | None] = mapped_column(String(LO))
    patient_name: Mapped[str | None] = mapped_column(String(PN))
    modality: Mapped[str | None] = mapped_column(String(CS))
    performed_station_ae_title: Mapped[str | None] = mapped_column(String(AE))
    pps_id: Mapped[str | None] = mapped_column(String(SH))
    pps_start_date: Mapped[str | None] = mapped_column(String(DA))
    pps_start_time: Mapped[str | None] = mapped_column(String(TM))
    pps_end_date: Mapped[str | None] = mapped_column(String(DA))
    pps_end_time: Mapped[str | None] = mapped_column(String(TM))
    #: the MPPS attributes as last set, DICOM JSON
    dataset: Mapped[str] = mapped_column(JSON_TEXT)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    links: Mapped[list[PerformedStepLink]] = relationship(
        back_populates="performed", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (MYSQL_TABLE_ARGS,)

    def __repr__(self) -> str:
        return f"PerformedProcedureStep(uid={self.sop_instance_uid!r}, status={self.status!r})"


class PerformedStepLink(Base):
    """An MPPS performs this scheduled step (a worklist row; NULL once that row is removed)."""

    __tablename__ = "performed_step_links"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    performed_fk: Mapped[int] = mapped_column(
        PK, ForeignKey("performed_procedure_steps.pk", ondelete="CASCADE"), index=True
    )
    worklist_fk: Mapped[int | None] = mapped_column(
        PK, ForeignKey("worklist_items.pk", ondelete="SET NULL"), index=True
    )
    accession_number: Mapped[str | None] = mapped_column(String(SH))
    requested_procedure_id: Mapped[str | None] = mapped_column(String(SH))
    sps_id: Mapped[str | None] = mapped_column(String(SH))
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_COLUMN))

    performed: Mapped[PerformedProcedureStep] = relationship(back_populates="links")

    __table_args__ = (UniqueConstraint("performed_fk", "worklist_fk"), MYSQL_TABLE_ARGS)


#: states of an :class:`MppsForward`: waiting to be sent (or retried), or given up after every attempt
FORWARD_QUEUED = "queued"
FORWARD_FAILED = "failed"


class MppsForward(Base):
    """One N-CREATE or N-SET the MPPS add-in owes a ``forward_to`` destination (migration ``0010``).

    Written in the transaction that stores the step, so an accepted N-CREATE / N-SET is never
    forgotten by a stop or a crash; deleted once the destination answered; kept as ``failed`` after
    the last attempt, for the operator. Sent in ``pk`` order per destination (an N-SET never
    overtakes its N-CREATE)."""

    __tablename__ = "mpps_forwards"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(AE))
    #: N-CREATE or N-SET
    service: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN))
    #: the attribute list (N-CREATE) or modification list (N-SET) as received, DICOM JSON
    dataset: Mapped[str] = mapped_column(JSON_TEXT)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_mpps_forwards_state_destination", "state", "destination", "pk"), MYSQL_TABLE_ARGS)
