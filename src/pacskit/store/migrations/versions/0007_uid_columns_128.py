"""UID columns hold up to 128 characters.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

PS3.5 9.1 limits a UID to 64 characters, but legacy modalities send longer ones (and components with
leading zeros, letters), which Orthanc and DCMTK store. pacskit accepts such harmless UIDs up to 128
characters with a warning (``strict_uids`` in the Storage add-in refuses them), so every column that
holds a UID received from a peer is widened from 64 to 128 characters. Nothing is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: table -> (column, nullable)
UID_COLUMNS: dict[str, list[tuple[str, bool]]] = {
    "studies": [("study_instance_uid", False)],
    "series": [("series_instance_uid", False)],
    "instances": [("sop_instance_uid", False), ("sop_class_uid", False), ("transfer_syntax_uid", True)],
    "transaction_log": [("sop_class_uid", True), ("sop_instance_uid", True), ("study_instance_uid", True)],
    "audit_records": [("study_instance_uid", True)],
    "worklist_items": [("study_instance_uid", True)],
    "performed_procedure_steps": [("sop_instance_uid", False)],
    "performed_step_links": [("study_instance_uid", True)],
    "storage_commitment_requests": [("transaction_uid", False)],
    "storage_commitment_items": [("sop_class_uid", False), ("sop_instance_uid", False)],
}


def _alter(old: int, new: int) -> None:
    for table, columns in UID_COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column, nullable in columns:
                batch.alter_column(column, existing_type=sa.String(old), type_=sa.String(new),
                                   existing_nullable=nullable)


def upgrade() -> None:
    _alter(64, 128)


def downgrade() -> None:
    _alter(128, 64)
