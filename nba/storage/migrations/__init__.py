"""Schema migrations (Alembic), and the check every process makes when it opens the database.

A database is in one of four states:

* empty: created at the newest revision on first use, so the embedded default and a fresh
  PostgreSQL database need no step of their own;
* at the newest revision this code knows: used as it is;
* older (or made by a version of nba from before migrations): refused at start, naming
  ``nba db upgrade``, because several replicas upgrading on their own would race, and an
  operator should choose when a migration runs (``make serve`` runs it first, for the
  embedded default);
* newer than this code: refused, since an older nba could misread what a newer one wrote.

Migrations and first creation hold a lock (PostgreSQL: an advisory lock; SQLite: a lock file
beside the database), so processes starting together do not create the tables twice.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

import nba.storage.tables  # noqa: F401 - declares the tables
from nba.errors import SchemaError

__all__ = ["SchemaError", "current_revision", "ensure_schema", "head_revision", "revisions", "upgrade"]

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent
#: the first revision: what a database made before migrations is taken to be
BASELINE = "0001"
#: any constant: PostgreSQL advisory locks are keyed by a 64-bit number
_PG_LOCK_KEY = 0x6E62615F6D6967  # "nba_mig"
_TABLES = {"decisions", "feedback", "contact_events", "offer_counters", "policy_sets", "policy_activations", "model_snapshots"}


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "nba/storage/migrations/versions holds no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _state(conn: Connection) -> tuple[str | None, bool]:
    """The revision stamped in the database, and whether any of our tables exist."""
    tables = set(inspect(conn).get_table_names())
    return MigrationContext.configure(conn).get_current_revision(), bool(tables & _TABLES)


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection holding the migration lock, inside a transaction."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        handle = None
        if database and database != ":memory:":
            handle = open(f"{database}.migrate-lock", "w")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            if handle is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
        yield conn


def revisions() -> list[str]:
    """Every revision, oldest first (``BASELINE`` first, ``head_revision()`` last)."""
    return [script.revision for script in reversed(list(ScriptDirectory.from_config(_config()).walk_revisions()))]


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Brings the database to the newest revision (or to ``target``, an older one: for
    tests of the migrations themselves); returns (before, after).

    A database made before migrations existed is first given the columns later versions
    added without a migration, then stamped as the baseline, then upgraded."""
    head = head_revision() if target == "head" else target
    with _locked(engine) as conn:
        before, has_tables = _state(conn)
        if before is None and has_tables:
            _add_legacy_columns(conn)
            command.stamp(_config(conn), BASELINE)
            log.warning("stamped a database made before migrations", extra={"revision": BASELINE})
            before = BASELINE
        if before not in (None, head) and before not in _known():
            raise SchemaError(
                f"the database is at revision {before}, which this nba does not know: "
                f"it was migrated by a newer version (this one needs {head})"
            )
        command.upgrade(_config(conn), target)
    return before, head


def ensure_schema(engine: Engine) -> None:
    """Creates an empty database at the newest revision, accepts one already there, and
    refuses any other with a message that says what to do."""
    head = head_revision()
    with engine.connect() as conn:
        revision, has_tables = _state(conn)
    if revision == head:
        return
    url = engine.url.render_as_string(hide_password=True)
    if revision is None and not has_tables:
        with _locked(engine) as conn:
            revision, has_tables = _state(conn)  # another process may have created it meanwhile
            if revision is None and not has_tables:
                command.upgrade(_config(conn), "head")
                log.info("created the database schema", extra={"revision": head})
        return
    if revision is None:
        raise SchemaError(
            f"the database {url} was made by a version of nba from before schema migrations: "
            "run `nba db upgrade` once, then start again"
        )
    if revision not in _known():
        raise SchemaError(
            f"the database {url} is at revision {revision}, newer than this nba knows "
            f"(it needs {head}): run the newer version, or restore a backup"
        )
    raise SchemaError(
        f"the database {url} is at revision {revision}; this nba needs {head}: "
        "run `nba db upgrade` (with the same --database-url), then start again"
    )


def _known() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def _baseline_columns() -> dict[str, list[str]]:
    """The columns of every table at the baseline revision, which a database made before
    migrations is stamped as (the newest schema may have renamed or added columns since)."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), BASELINE)
            inspector = inspect(conn)
            return {t: [c["name"] for c in inspector.get_columns(t)] for t in inspector.get_table_names() if t in _TABLES}
    finally:
        engine.dispose()


def _add_legacy_columns(conn: Connection) -> None:
    """Columns of the baseline that versions before migrations added in place (all with
    constant defaults)."""
    inspector = inspect(conn)
    for name, columns in _baseline_columns().items():
        if not inspector.has_table(name):
            continue
        table = SQLModel.metadata.tables[name]
        existing = {c["name"] for c in inspector.get_columns(name)}
        for column_name in columns:
            if column_name in existing:
                continue
            column = table.columns.get(column_name)
            if column is None:
                raise SchemaError(f"table {name} lacks column {column_name}, which cannot be added in place")
            default: Any = getattr(column.default, "arg", None)
            if not isinstance(default, (bool, int, float, str)):
                raise SchemaError(f"table {table.name} lacks column {column.name}, which cannot be added in place")
            kind = column.type.compile(dialect=conn.dialect)
            if isinstance(default, bool):
                literal = ("TRUE" if default else "FALSE") if conn.dialect.name == "postgresql" else str(int(default))
            else:
                literal = repr(default)
            conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind} NOT NULL DEFAULT {literal}')
            # The default only filled the existing rows: the declared schema has none (new rows
            # get theirs from the code), and a stamped database must be the declared schema.
            # SQLite cannot drop a default in place; batch mode copies the table.
            with Operations(MigrationContext.configure(conn)).batch_alter_table(table.name) as batch:
                batch.alter_column(column.name, server_default=None, existing_type=column.type, existing_nullable=False)
