"""cluster_deletions: the deletion intents of cluster nodes, shared.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A deletion on a cluster node (pacskit.store.deletion, pacskit.store.cluster) records the blob keys it
frees here, keyed by node and intent, instead of an intent file in the node's local folder: a node
that dies mid-deletion leaves its intent where the node that recovers it finds and finishes it.
Created on every backend so that one schema serves all; empty on a single node.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TABLE_ARGS = {
    f"{prefix}_{option}": value
    for prefix in ("mysql", "mariadb")
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"), ("engine", "InnoDB"))
}


def upgrade() -> None:
    op.create_table(
        "cluster_deletions",
        sa.Column("node_id", sa.String(32), nullable=False),
        sa.Column("intent", sa.String(32), nullable=False),
        sa.Column("blob_key", sa.String(80), nullable=False),
        sa.Column("recorded_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("node_id", "intent", "blob_key", name="pk_cluster_deletions"),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("cluster_deletions")
