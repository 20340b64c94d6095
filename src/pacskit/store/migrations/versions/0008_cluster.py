"""cluster_nodes / cluster_inflight / cluster_ae_titles: the state several nodes share.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

Used only when several pacskit nodes share this database (``[cluster]``, see pacskit.store.cluster):
the nodes' leases, the blob keys of ingests in flight (the shared crash journal), the shared AE
registry, the routing add-in's shared forward queue and the claims of add-ins' work items. Created on every backend so that one schema serves all; empty on a single node.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
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
        "cluster_nodes",
        sa.Column("node_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("lease_until", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("node_id", name="pk_cluster_nodes"),
        **TABLE_ARGS,
    )
    op.create_index("ix_cluster_nodes_lease_until", "cluster_nodes", ["lease_until"])
    op.create_table(
        "cluster_inflight",
        sa.Column("blob_key", sa.String(80), nullable=False),
        sa.Column("node_id", sa.String(32), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("blob_key", name="pk_cluster_inflight"),
        **TABLE_ARGS,
    )
    op.create_index("ix_cluster_inflight_node_id", "cluster_inflight", ["node_id"])
    op.create_table(
        "cluster_ae_titles",
        sa.Column("title", sa.String(16), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("title", name="pk_cluster_ae_titles"),
        **TABLE_ARGS,
    )
    op.create_table(
        "cluster_forward_jobs",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64), nullable=True),
        sa.Column("instance_pk", sa.BigInteger(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(128), nullable=False),
        sa.Column("study_instance_uid", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cluster_forward_jobs"),
        **TABLE_ARGS,
    )
    op.create_index("ix_cluster_forward_jobs_destination_state_id", "cluster_forward_jobs",
                    ["destination", "state", "id"])
    op.create_table(
        "cluster_forward_routed",
        sa.Column("instance_pk", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("instance_pk", name="pk_cluster_forward_routed"),
        **TABLE_ARGS,
    )
    op.create_table(
        "cluster_forward_destinations",
        sa.Column("destination", sa.String(16), nullable=False),
        sa.Column("node_name", sa.String(64), nullable=False),
        sa.Column("lease_until", UTC_DATETIME, nullable=False),
        sa.Column("watermark", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("destination", name="pk_cluster_forward_destinations"),
        **TABLE_ARGS,
    )
    op.create_table(
        "cluster_claims",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("item", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("node_name", sa.String(64), nullable=False),
        sa.Column("claimed_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("kind", "item", name="pk_cluster_claims"),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("cluster_claims")
    op.drop_table("cluster_forward_destinations")
    op.drop_table("cluster_forward_routed")
    op.drop_index("ix_cluster_forward_jobs_destination_state_id", table_name="cluster_forward_jobs")
    op.drop_table("cluster_forward_jobs")
    op.drop_table("cluster_ae_titles")
    op.drop_index("ix_cluster_inflight_node_id", table_name="cluster_inflight")
    op.drop_table("cluster_inflight")
    op.drop_index("ix_cluster_nodes_lease_until", table_name="cluster_nodes")
    op.drop_table("cluster_nodes")
