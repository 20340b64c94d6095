"""mpps_forwards: the MPPS add-in's forwarding queue, durable.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

Each N-CREATE / N-SET the MPPS add-in accepts is written here, once per ``forward_to`` destination,
in the transaction that stores the step (pacskit.store.workflow.models.MppsForward); it was an
in-memory queue whose messages a stop lost.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_DATETIME = sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
JSON_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
TABLE_ARGS = {
    f"{prefix}_{option}": value
    for prefix in ("mysql", "mariadb")
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"), ("engine", "InnoDB"))
}


def upgrade() -> None:
    op.create_table(
        "mpps_forwards",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(16), nullable=False),
        sa.Column("service", sa.String(16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(128), nullable=False),
        sa.Column("dataset", JSON_TEXT, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_mpps_forwards"),
        **TABLE_ARGS,
    )
    op.create_index("ix_mpps_forwards_state_destination", "mpps_forwards", ["state", "destination", "pk"])


def downgrade() -> None:
    op.drop_table("mpps_forwards")
