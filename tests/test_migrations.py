"""Schema migrations: the newest revision is exactly the schema the code declares, on SQLite
and PostgreSQL, and a database in any other state is refused with what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ROOT
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

from nba.migrations import BASELINE, SchemaError, _config, current_revision, ensure_schema, head_revision, upgrade
from nba.store import open_engine


def test_the_newest_revision_is_the_declared_schema(database_url: str) -> None:
    engine = open_engine(database_url)  # empty: created at the newest revision
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_an_older_database_is_refused_until_upgraded_and_keeps_its_rows(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:  # a database the first release made, with a row
        command.upgrade(_config(conn), BASELINE)
        conn.exec_driver_sql("INSERT INTO policy_sets (version, content_hash, created_at, created_by, comment, files) "
                             "VALUES (1, 'hash-1', '2026-11-23 00:00:00', '', '', '{}')")
    with engine.begin() as conn:  # as if it had been migrated by a newer nba
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'old'")
    engine.dispose()
    with pytest.raises(SchemaError, match="newer than this nba"):
        open_engine(database_url)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{BASELINE}'")
    if BASELINE != head_revision():
        with pytest.raises(SchemaError, match="nba db upgrade"):
            ensure_schema(engine)
    assert upgrade(engine) == (BASELINE, head_revision())
    ensure_schema(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM policy_sets").scalar() == 1
    engine.dispose()


def test_a_database_from_before_migrations_is_stamped_by_db_upgrade(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:  # what versions before migrations made: the baseline's tables, unstamped
        command.upgrade(_config(conn), BASELINE)
        conn.exec_driver_sql("DROP TABLE alembic_version")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE contact_events DROP COLUMN origin")  # added in place back then
    with pytest.raises(SchemaError, match="before schema migrations: run `nba db upgrade`"):
        ensure_schema(engine)
    engine.dispose()
    done = subprocess.run([sys.executable, "-m", "nba", "db", "upgrade", "--database-url", database_url],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert head_revision() in done.stdout
    engine = open_engine(database_url)
    assert "origin" in {c["name"] for c in inspect(engine).get_columns("contact_events")}
    engine.dispose()


def test_serve_refuses_an_outdated_database_naming_the_command(database_url: str, tmp_path) -> None:
    engine = open_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'zzzz'")
    engine.dispose()
    done = subprocess.run([sys.executable, "-m", "nba", "serve", "--database-url", database_url, "--port", "0",
                           "--metrics-port", "-1", "--workers", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "revision zzzz" in done.stderr and "Traceback" not in done.stderr
