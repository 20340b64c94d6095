"""Record-keeping tables: transaction_log, log_records, audit_records (pacskit.store.records).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

No foreign keys to the index tables: records outlive the instances they name.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_DATETIME = sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
TABLE_ARGS = {
    f"{prefix}_{option}": value
    for prefix in ("mysql", "mariadb")
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"), ("engine", "InnoDB"))
}


def upgrade() -> None:
    op.create_table(
        "transaction_log",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("server_ae", sa.String(16), nullable=False),
        sa.Column("association_id", sa.BigInteger(), nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("called_ae", sa.String(16), nullable=False),
        sa.Column("peer_address", sa.String(64), nullable=True),
        sa.Column("service", sa.String(16), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("move_destination", sa.String(16), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error_comment", sa.String(64), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=True),
        sa.Column("warnings", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name="pk_transaction_log"),
        **TABLE_ARGS,
    )
    for column in ("at", "calling_ae", "service", "study_instance_uid", "patient_id"):
        op.create_index(f"ix_transaction_log_{column}", "transaction_log", [column])

    op.create_table(
        "log_records",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("logger", sa.String(128), nullable=False),
        sa.Column("message", LONG_TEXT, nullable=False),
        sa.Column("process", sa.Integer(), nullable=False),
        sa.Column("addin", sa.String(64), nullable=True),
        sa.Column("association_id", sa.BigInteger(), nullable=True),
        sa.Column("calling_ae", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("pk", name="pk_log_records"),
        **TABLE_ARGS,
    )
    for column in ("at", "level"):
        op.create_index(f"ix_log_records_{column}", "log_records", [column])

    op.create_table(
        "audit_records",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("event_id", sa.String(16), nullable=False),
        sa.Column("event_name", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(16), nullable=True),
        sa.Column("event_action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("requestor", sa.String(128), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("xml", LONG_TEXT, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_audit_records"),
        **TABLE_ARGS,
    )
    for column in ("at", "event_id"):
        op.create_index(f"ix_audit_records_{column}", "audit_records", [column])


def downgrade() -> None:
    op.drop_table("audit_records")
    op.drop_table("log_records")
    op.drop_table("transaction_log")
