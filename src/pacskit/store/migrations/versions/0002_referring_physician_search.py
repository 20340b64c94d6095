"""studies.referring_physician_name_search: the normalised search form of ReferringPhysicianName.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

C-FIND matches person names case-insensitively on their search form (NFC, upper case, trailing empty
components dropped: ``pacskit.store.index.models.normalise_person_name``), like ``patients.patient_name_search``.
Existing rows are filled in here, a batch at a time. No index: queries by referring physician are
filtered together with other keys.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from pacskit.store.index.models import normalise_person_name

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SEARCH = sa.String(324).with_variant(postgresql.VARCHAR(324, collation="C"), "postgresql")
BATCH = 5000


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("referring_physician_name_search", SEARCH, nullable=True))
    conn = op.get_bind()
    studies = sa.table("studies", sa.column("pk", sa.BigInteger()), sa.column("referring_physician_name", sa.String()),
                       sa.column("referring_physician_name_search", sa.String()))
    last = 0
    while True:
        rows = conn.execute(
            sa.select(studies.c.pk, studies.c.referring_physician_name)
            .where(studies.c.pk > last, studies.c.referring_physician_name.is_not(None))
            .order_by(studies.c.pk).limit(BATCH)
        ).all()
        if not rows:
            break
        conn.execute(
            studies.update().where(studies.c.pk == sa.bindparam("k")).values(
                referring_physician_name_search=sa.bindparam("v")),
            [{"k": pk, "v": normalise_person_name(name)} for pk, name in rows],
        )
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("referring_physician_name_search")
