"""instances.acquisition_datetime (DT range matching) and series_requests (sequence matching).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

AcquisitionDateTime (0008,002A) is kept as received, and without its UTC offset in
``acquisition_datetime_key``, which C-FIND range matching compares (``pacskit.store.index.models.datetime_key``).
``series_requests`` holds the indexed keys of each item of a series' Request Attributes Sequence
(AccessionNumber, RequestedProcedureID, ScheduledProcedureStepID), one row per item.

The values are in the files, not in the index: instances and series indexed before this revision have
none until ``pacskit reindex`` reads them again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pacskit.store.index.models import MYSQL_TABLE_ARGS, PK

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("acquisition_datetime", sa.String(26), nullable=True))
        batch.add_column(sa.Column("acquisition_datetime_key", sa.String(26), nullable=True))
    op.create_table(
        "series_requests",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("series_fk", PK, nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=True),
        sa.Column("requested_procedure_id", sa.String(16), nullable=True),
        sa.Column("scheduled_procedure_step_id", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("pk", name="pk_series_requests"),
        sa.ForeignKeyConstraint(["series_fk"], ["series.pk"], name="fk_series_requests_series_fk_series"),
        **MYSQL_TABLE_ARGS,
    )
    op.create_index("ix_series_requests_series_fk", "series_requests", ["series_fk"])


def downgrade() -> None:
    op.drop_index("ix_series_requests_series_fk", table_name="series_requests")
    op.drop_table("series_requests")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("acquisition_datetime_key")
        batch.drop_column("acquisition_datetime")
