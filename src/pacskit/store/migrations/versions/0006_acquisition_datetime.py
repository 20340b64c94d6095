"""instances.acquisition_datetime (+ its matching form): DT range matching at IMAGE level.

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-01

AcquisitionDateTime (0008,002A) is kept as received, and without its UTC offset in
``acquisition_datetime_key``, which C-FIND range matching compares (``pacskit.store.models.datetime_key``).
The values are in the files, not in the index: instances indexed before this revision have none until
``pacskit reindex`` reads them again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("acquisition_datetime", sa.String(26), nullable=True))
        batch.add_column(sa.Column("acquisition_datetime_key", sa.String(26), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("acquisition_datetime_key")
        batch.drop_column("acquisition_datetime")
