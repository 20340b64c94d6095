"""The index schema: Patient / Study / Series / Instance (SQLAlchemy 2.0 typed models).

One row per DICOM entity, with the attributes C-FIND matches on, indexed where a study-level query
needs them. Values are stored decoded (Unicode) whatever the Specific Character Set of the instance;
the raw Specific Character Set is kept per instance. The blob (the Part 10 file, byte-for-byte as
received) is referenced by an opaque key, never by a path built from UIDs or patient data.

Portability (SQLite, PostgreSQL, MariaDB/MySQL):

* String lengths follow the DICOM VR maximums (UI 64, LO 64, SH 16, CS 16, AE 16, DA 8, TM 16 so
  fractional seconds fit). PN is 324: the standard allows 64 characters per component group and three
  groups (194), but we follow the common "5 components x 64 + 4 separators" reading so values from
  non-conformant senders that decode longer still fit. Longer values are truncated at extraction.
* MariaDB: tables are ``utf8mb4`` with the binary collation ``utf8mb4_bin``: DICOM identifiers are
  case-sensitive (a case-insensitive default collation would merge PatientID ``abc`` and ``ABC``) and
  the normalised name column is compared as code points, like SQLite's BINARY and PostgreSQL's "C".
  Indexed columns stay within the 767-byte key limit of old row formats (64 chars x 4 bytes); the
  324-character name column is indexed on a 191-character prefix there.
* PostgreSQL: the normalised name column uses the "C" collation so a B-tree index serves prefix
  ranges (see :func:`starts_with`) whatever the database locale.
* Primary keys are BIGINT (INTEGER on SQLite, where only INTEGER PRIMARY KEY auto-increments).
* Timestamps are UTC, stored naive (microseconds kept: ``DATETIME(6)`` on MariaDB) and returned aware.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    and_,
    text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# VR maximum lengths (characters), PS3.5 table 6.2-1.
UI = 64
#: UID columns: PS3.5 allows 64 characters, but UIDs up to 128 from legacy devices are stored (migration 0007)
UID_COLUMN = 128
LO = 64
PN = 324
SH = 16
CS = 16
AE = 16
DA = 8
TM = 16
DT = 26
CHARSET = 64  # Specific Character Set, raw, up to four CS values joined with '\'
MODALITIES = 255  # ModalitiesInStudy, derived: distinct series modalities joined with '\'
BLOB_KEY = 64
SHA256_HEX = 64

#: MariaDB/MySQL table options: 4-byte UTF-8, case- and accent-sensitive comparisons.
#: Both prefixes: the ``mariadb`` dialect (``mariadb+pymysql://``) ignores ``mysql_`` options.
MYSQL_TABLE_ARGS: dict[str, Any] = {
    f"{prefix}_{option}": value
    for prefix in ("mysql", "mariadb")
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"), ("engine", "InnoDB"))
}
#: Index prefix used on MariaDB/MySQL for long text columns (191 x 4 bytes fits a 767-byte key).
MYSQL_INDEX_PREFIX = 191

PK = BigInteger().with_variant(Integer(), "sqlite")
SEARCH_STRING = String(PN).with_variant(postgresql.VARCHAR(PN, collation="C"), "postgresql")

naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime, stored naive-UTC (portable: SQLite and MariaDB have no time zones)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UTCDateTime needs an aware datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)


class Patient(Base):
    """A patient, identified by PatientID within IssuerOfPatientID.

    ``patient_id`` is NULL when the instances carry no PatientID: such patients are never merged (NULLs
    are distinct in the unique constraint on every backend), each study gets its own. The issuer is ''
    when absent, so that (PatientID, no issuer) is unique.
    """

    __tablename__ = "patients"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    patient_id: Mapped[str | None] = mapped_column(String(LO))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(LO), default="", server_default="")
    patient_name: Mapped[str | None] = mapped_column(String(PN))
    #: upper-case, NFC, trailing empty components dropped, '^' and '=' kept: for prefix matching
    patient_name_search: Mapped[str | None] = mapped_column(SEARCH_STRING)
    patient_birth_date: Mapped[str | None] = mapped_column(String(DA))
    patient_sex: Mapped[str | None] = mapped_column(String(CS))
    num_studies: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    studies: Mapped[list[Study]] = relationship(back_populates="patient")

    __table_args__ = (
        UniqueConstraint("patient_id", "issuer_of_patient_id"),
        Index(
            "ix_patients_patient_name_search",
            "patient_name_search",
            mysql_length=MYSQL_INDEX_PREFIX,
            mariadb_length=MYSQL_INDEX_PREFIX,
        ),
        MYSQL_TABLE_ARGS,
    )

    def __repr__(self) -> str:
        return f"Patient(pk={self.pk}, patient_id={self.patient_id!r}, name={self.patient_name!r})"


class Study(Base):
    __tablename__ = "studies"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    patient_fk: Mapped[int] = mapped_column(PK, ForeignKey("patients.pk"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN), unique=True)
    study_date: Mapped[str | None] = mapped_column(String(DA), index=True)
    study_time: Mapped[str | None] = mapped_column(String(TM))
    accession_number: Mapped[str | None] = mapped_column(String(SH), index=True)
    study_id: Mapped[str | None] = mapped_column(String(SH))
    referring_physician_name: Mapped[str | None] = mapped_column(String(PN))
    #: search form of the referring physician's name, like ``Patient.patient_name_search`` (migration 0002)
    referring_physician_name_search: Mapped[str | None] = mapped_column(SEARCH_STRING)
    study_description: Mapped[str | None] = mapped_column(String(LO))
    #: distinct Modality of the study's series, sorted, joined with '\' (kept up to date)
    modalities_in_study: Mapped[str | None] = mapped_column(String(MODALITIES))
    num_series: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    num_instances: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")

    __table_args__ = (MYSQL_TABLE_ARGS,)

    def __repr__(self) -> str:
        return f"Study(pk={self.pk}, uid={self.study_instance_uid!r})"


class Series(Base):
    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    study_fk: Mapped[int] = mapped_column(PK, ForeignKey("studies.pk"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN), unique=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(CS))
    series_description: Mapped[str | None] = mapped_column(String(LO))
    body_part_examined: Mapped[str | None] = mapped_column(String(CS))
    num_instances: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")

    __table_args__ = (MYSQL_TABLE_ARGS,)

    def __repr__(self) -> str:
        return f"Series(pk={self.pk}, uid={self.series_instance_uid!r})"


class SeriesRequest(Base):
    """One item of a series' Request Attributes Sequence (0040,0275): the request it answers.

    The indexed keys of the sequence, one row per item, so C-FIND sequence matching is one EXISTS
    over this table (PS3.4 C.2.2.2.6: a series matches when one of its items matches every key)."""

    __tablename__ = "series_requests"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    series_fk: Mapped[int] = mapped_column(PK, ForeignKey("series.pk"), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(SH))
    requested_procedure_id: Mapped[str | None] = mapped_column(String(SH))
    scheduled_procedure_step_id: Mapped[str | None] = mapped_column(String(SH))

    __table_args__ = (MYSQL_TABLE_ARGS,)


class Instance(Base):
    __tablename__ = "instances"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    series_fk: Mapped[int] = mapped_column(PK, ForeignKey("series.pk"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_COLUMN), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_COLUMN))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    acquisition_datetime: Mapped[str | None] = mapped_column(String(DT))
    #: AcquisitionDateTime without its UTC offset: what DT range matching compares (see datetime_key)
    acquisition_datetime_key: Mapped[str | None] = mapped_column(String(DT))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(UID_COLUMN))
    specific_character_set: Mapped[str | None] = mapped_column(String(CHARSET))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(SHA256_HEX))
    blob_key: Mapped[str] = mapped_column(String(BLOB_KEY), unique=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    source_ae: Mapped[str | None] = mapped_column(String(AE))

    series: Mapped[Series] = relationship(back_populates="instances")

    __table_args__ = (MYSQL_TABLE_ARGS,)

    def __repr__(self) -> str:
        return f"Instance(pk={self.pk}, uid={self.sop_instance_uid!r}, blob={self.blob_key!r})"


_DT_PATTERN = re.compile(r"\A(\d{4}(?:\d{2}){0,5})(?:\.(\d{1,6}))?([+-]\d{4})?\Z")
_DT_EARLIEST = "0101000000"  # what a partial DT leaves out, at its earliest: month, day, hours, minutes, seconds


def datetime_key(value: str | None) -> str | None:
    """The form of a DT value that matching compares, or ``None`` when ``value`` is not a valid DT.

    The value's earliest instant written in full, ``YYYYMMDDHHMMSS.FFFFFF``, without its UTC offset:
    ``2024`` -> ``20240101000000.000000``, ``20240105103000.5+0100`` -> ``20240105103000.500000``. A
    partial value stands for its earliest instant, as partial times do (PS3.4 C.2.2.2.5), and keys of
    one width compare as strings, in SQL as here. No time zone adjustment is done (the extended
    negotiation byte for it is answered 0): values are compared as written."""
    if not value:
        return None
    m = _DT_PATTERN.match(value.strip())
    if m is None:
        return None
    whole, frac = m.group(1), m.group(2)
    if frac is not None and len(whole) != 14:
        return None  # a fraction only after the seconds
    full = whole + _DT_EARLIEST[len(whole) - 4:]
    try:
        dt.datetime(int(full[:4]), int(full[4:6]), int(full[6:8]), int(full[8:10]), int(full[10:12]),
                    min(int(full[12:14]), 59))  # a leap second (60) is a valid DT second
    except ValueError:
        return None
    return f"{full}.{(frac or '').ljust(6, '0')}"


def normalise_person_name(value: str | None) -> str | None:
    """The search form of a PN value: NFC, upper-case, trailing empty components and groups dropped.

    ``'Doe^John^^^'`` and ``'DOE^JOHN'`` give ``'DOE^JOHN'``; ``'Yamada^Tarou=山田^太郎='`` keeps its
    groups. C-FIND prefix matching normalises the query the same way and uses :func:`starts_with`.
    """
    if value is None:
        return None
    groups = [g.strip().rstrip("^").rstrip() for g in unicodedata.normalize("NFC", value).split("=")]
    while groups and not groups[-1]:
        groups.pop()
    text = "=".join(groups).upper()
    return text[:PN] or None


def starts_with(column: Any, prefix: str) -> ColumnElement[bool]:
    """``column`` starts with ``prefix``, as a range that a B-tree index serves on every backend.

    Correct for the binary collations the search columns use (SQLite BINARY, PostgreSQL "C",
    MariaDB utf8mb4_bin): code-point order, so [prefix, prefix with its last character + 1) is exactly
    the set of strings starting with prefix. Unlike LIKE, no escaping of ``%``/``_`` is needed.
    """
    if not prefix:
        return column.is_not(None)
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return column.startswith(prefix, autoescape=True)
    nxt = 0xE000 if last == 0xD7FF else last + 1  # skip the surrogates: they are not valid text
    upper = prefix[:-1] + chr(nxt)
    return and_(column >= prefix, column < upper)
