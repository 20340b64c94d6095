"""Workflow tables: Modality Worklist scheduled procedure steps and MPPS instances.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``worklist_items`` (one row per scheduled procedure step, the matching keys of PS3.4 K.6 as columns and
the whole entry as DICOM JSON), ``worklist_station_aes`` (the values of Scheduled Station AE Title),
``performed_procedure_steps`` (MPPS instances) and ``performed_step_links`` (which scheduled steps an
MPPS performs). See ``pacskit.store.workflow.models``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_DATETIME = sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SEARCH = sa.String(324).with_variant(postgresql.VARCHAR(324, collation="C"), "postgresql")
JSON_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
TABLE_ARGS = {
    f"{prefix}_{option}": value
    for prefix in ("mysql", "mariadb")
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"), ("engine", "InnoDB"))
}


def upgrade() -> None:
    op.create_table(
        "worklist_items",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(64), nullable=True),
        sa.Column("patient_name", sa.String(324), nullable=True),
        sa.Column("patient_name_search", SEARCH, nullable=True),
        sa.Column("patient_birth_date", sa.String(8), nullable=True),
        sa.Column("patient_sex", sa.String(16), nullable=True),
        sa.Column("accession_number", sa.String(16), nullable=True),
        sa.Column("referring_physician_name", sa.String(324), nullable=True),
        sa.Column("referring_physician_name_search", SEARCH, nullable=True),
        sa.Column("requesting_physician", sa.String(324), nullable=True),
        sa.Column("requesting_physician_search", SEARCH, nullable=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("requested_procedure_id", sa.String(16), nullable=True),
        sa.Column("requested_procedure_description", sa.String(64), nullable=True),
        sa.Column("requested_procedure_priority", sa.String(16), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("sps_start_date", sa.String(8), nullable=True),
        sa.Column("sps_start_time", sa.String(16), nullable=True),
        sa.Column("scheduled_performing_physician_name", sa.String(324), nullable=True),
        sa.Column("scheduled_performing_physician_name_search", SEARCH, nullable=True),
        sa.Column("sps_id", sa.String(16), nullable=True),
        sa.Column("sps_description", sa.String(64), nullable=True),
        sa.Column("sps_status", sa.String(16), nullable=True),
        sa.Column("scheduled_station_name", sa.String(16), nullable=True),
        sa.Column("sps_location", sa.String(16), nullable=True),
        sa.Column("dataset", JSON_TEXT, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_worklist_items"),
        **TABLE_ARGS,
    )
    op.create_index("ix_worklist_items_patient_id", "worklist_items", ["patient_id"])
    op.create_index("ix_worklist_items_accession_number", "worklist_items", ["accession_number"])
    op.create_index("ix_worklist_items_sps_start_date", "worklist_items", ["sps_start_date"])
    op.create_index("ix_worklist_items_sps_id", "worklist_items", ["sps_id"])
    op.create_index(
        "ix_worklist_items_patient_name_search", "worklist_items", ["patient_name_search"],
        mysql_length=191, mariadb_length=191,
    )

    op.create_table(
        "worklist_station_aes",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("item_fk", PK, nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_worklist_station_aes"),
        sa.ForeignKeyConstraint(["item_fk"], ["worklist_items.pk"], name="fk_worklist_station_aes_item_fk_worklist_items",
                                ondelete="CASCADE"),
        **TABLE_ARGS,
    )
    op.create_index("ix_worklist_station_aes_item_fk", "worklist_station_aes", ["item_fk"])
    op.create_index("ix_worklist_station_aes_ae_title", "worklist_station_aes", ["ae_title"])

    op.create_table(
        "performed_procedure_steps",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("patient_name", sa.String(324), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("performed_station_ae_title", sa.String(16), nullable=True),
        sa.Column("pps_id", sa.String(16), nullable=True),
        sa.Column("pps_start_date", sa.String(8), nullable=True),
        sa.Column("pps_start_time", sa.String(16), nullable=True),
        sa.Column("pps_end_date", sa.String(8), nullable=True),
        sa.Column("pps_end_time", sa.String(16), nullable=True),
        sa.Column("dataset", JSON_TEXT, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_performed_procedure_steps"),
        sa.UniqueConstraint("sop_instance_uid", name="uq_performed_procedure_steps_sop_instance_uid"),
        **TABLE_ARGS,
    )
    op.create_index("ix_performed_procedure_steps_status", "performed_procedure_steps", ["status"])

    op.create_table(
        "performed_step_links",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("performed_fk", PK, nullable=False),
        sa.Column("worklist_fk", PK, nullable=True),
        sa.Column("accession_number", sa.String(16), nullable=True),
        sa.Column("requested_procedure_id", sa.String(16), nullable=True),
        sa.Column("sps_id", sa.String(16), nullable=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("pk", name="pk_performed_step_links"),
        sa.ForeignKeyConstraint(["performed_fk"], ["performed_procedure_steps.pk"],
                                name="fk_performed_step_links_performed_fk_performed_procedure_steps",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["worklist_fk"], ["worklist_items.pk"],
                                name="fk_performed_step_links_worklist_fk_worklist_items", ondelete="SET NULL"),
        sa.UniqueConstraint("performed_fk", "worklist_fk", name="uq_performed_step_links_performed_fk_worklist_fk"),
        **TABLE_ARGS,
    )
    op.create_index("ix_performed_step_links_performed_fk", "performed_step_links", ["performed_fk"])
    op.create_index("ix_performed_step_links_worklist_fk", "performed_step_links", ["worklist_fk"])


def downgrade() -> None:
    op.drop_table("performed_step_links")
    op.drop_table("performed_procedure_steps")
    op.drop_table("worklist_station_aes")
    op.drop_table("worklist_items")
