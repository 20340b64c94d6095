"""storage_commitment_requests / storage_commitment_items: pending storage commitment reports.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

The Storage Commitment add-in writes each N-ACTION here before answering it, and resumes the requests
still ``pending`` at start-up (see pacskit.store.workflow.commitment_models).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_DATETIME = sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TABLE_ARGS = {
    f"{prefix}_{option}": value
    for prefix in ("mysql", "mariadb")
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"), ("engine", "InnoDB"))
}


def upgrade() -> None:
    op.create_table(
        "storage_commitment_requests",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("transaction_uid", sa.String(64), nullable=False),
        sa.Column("requester_ae", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("checked_at", UTC_DATETIME, nullable=True),
        sa.Column("reported_at", UTC_DATETIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("pk", name="pk_storage_commitment_requests"),
        **TABLE_ARGS,
    )
    op.create_index("ix_storage_commitment_requests_transaction_uid", "storage_commitment_requests", ["transaction_uid"])
    op.create_index("ix_storage_commitment_requests_state", "storage_commitment_requests", ["state"])
    op.create_table(
        "storage_commitment_items",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("request_fk", PK, nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("failure_reason", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name="pk_storage_commitment_items"),
        sa.ForeignKeyConstraint(
            ["request_fk"], ["storage_commitment_requests.pk"],
            name="fk_storage_commitment_items_request_fk"  # PostgreSQL: names <= 63 characters,
        ),
        **TABLE_ARGS,
    )
    op.create_index("ix_storage_commitment_items_request_fk", "storage_commitment_items", ["request_fk"])


def downgrade() -> None:
    op.drop_table("storage_commitment_items")
    op.drop_table("storage_commitment_requests")
