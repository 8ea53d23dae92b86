"""Alembic's environment for nba: the connection comes from ``nba.storage.migrations.upgrade`` (or
``nba db upgrade``), the target is the tables ``nba.storage.tables`` declares."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import nba.storage.tables  # noqa: F401 - declares the tables

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite alters tables by copying them: Alembic's batch mode does that for us
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
