"""Alembic environment of the pacskit index (run programmatically by ``Index.migrate``).

The connection comes from ``config.attributes["connection"]`` (the index's engine); when run from the
alembic command line instead, ``sqlalchemy.url`` of the config is used. The version table is
``pacskit_store_version`` so that other pacskit components can keep their own migration histories
in the same database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from pacskit.store.index.models import Base

VERSION_TABLE = "pacskit_store_version"

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE via copy on SQLite
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from pacskit.store.engine import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
