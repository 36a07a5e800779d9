"""Alembic environment of the job store.

``spaceport.jobs.store.upgrade_database`` runs it on an open connection (``config.attributes["connection"]``).
For hand use (``alembic revision --autogenerate``) it connects to ``sqlalchemy.url`` or $SPACEPORT_DATABASE_URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from spaceport.jobs.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001 - an SQLAlchemy Connection
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from spaceport.jobs.store import normalize_database_url

    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("SPACEPORT_DATABASE_URL")
    if not url:
        raise SystemExit("set sqlalchemy.url or SPACEPORT_DATABASE_URL to the job store's database")
    engine = create_engine(normalize_database_url(url))
    with engine.begin() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the job store's migrations run online only (they are applied by `spaceport serve`)")
run_migrations_online()
