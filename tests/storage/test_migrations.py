"""Schema migrations, on SQLite and PostgreSQL: a database made by the first revision and full
of data is upgraded through every later revision, one at a time, keeping every row; at the
newest, the schema is exactly what the code declares (Alembic's autogenerate comparison finds
no difference) and the code reads the old rows back. A database in any other state is
refused with what to do."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ROOT
from sqlalchemy import MetaData, create_engine, inspect, select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from nba.records import ContactEvent
from nba.storage.engine import open_engine
from nba.storage.migrations import BASELINE, SchemaError, current_revision, ensure_schema, head_revision, revisions, upgrade
from nba.storage.store import Store

AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
FEATURES = {"customer.age": 41.0, "customer.tags": ["a"], "customer.notes": {}}
OFFERS = [
    {
        "offer_id": "gold-card",
        "slot": 1,
        "propensity": 0.6,
        "score": 1.5,
        "fallback": False,
        "treatment": "",
        "group": "cards",
        "name": "Gold",
    }
]

#: rows of every table as the first revision (0001) made them (that revision never changes);
#: ids come from the tables' own sequences, as they do in use (all 1 in a new database)
FIRST_REVISION_ROWS: dict[str, list[dict[str, Any]]] = {
    "policy_sets": [
        {
            "content_hash": "h" * 64,
            "created_at": AT,
            "created_by": "alice",
            "comment": "first",
            "files": {"set.yaml": "channels: [web]\n"},
        }
    ],
    "policy_activations": [{"version": 1, "activated_at": AT, "actor": "alice", "source": "api", "comment": ""}],
    "decisions": [
        {
            "decision_id": "d-1",
            "request_id": "r-1",
            "customer_id": "c-1",
            "channel": "web",
            "created_at": AT,
            "policy_version": "1-hhhhhhhhhhhh",
            "model_version": "linear-igw/0",
            "features": FEATURES,
            "candidates": {},
            "offers": OFFERS,
            "closed": False,
        }
    ],
    "feedback": [
        {
            "event_id": "e-1",
            "decision_id": "d-1",
            "offer_id": "gold-card",
            "outcome": "accepted",
            "reward": 1.0,
            "stage": 4,
            "applied": True,
            "pair_reward": 1.0,
            "previous_reward": None,
            "late": False,
            "occurred_at": AT,
            "received_at": AT,
        }
    ],
    "contact_events": [
        {
            "customer_id": "c-1",
            "at": AT.timestamp(),
            "origin": "host:1",
            "kind": "decided",
            "offer_id": "gold-card",
            "group": "cards",
            "channel": "web",
        }
    ],
    "offer_counters": [{"offer_id": "gold-card", "kind": "decided", "hour": int(AT.timestamp() // 3600), "count": 3}],
    "model_snapshots": [
        {"created_at": AT, "signature": "old", "model_version": "linear-igw/1", "last_feedback_id": 1, "state": b"\x80\x04N."}
    ],
}


def rows(engine: Engine) -> dict[str, dict[tuple, dict[str, Any]]]:
    """Every row of every table, by primary key."""
    metadata = MetaData()
    metadata.reflect(engine)
    out: dict[str, dict[tuple, dict[str, Any]]] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            key = [c.name for c in table.primary_key.columns]
            out[table.name] = {tuple(r[k] for k in key): dict(r) for r in conn.execute(select(table)).mappings()}
    return out


def table_columns(engine: Engine) -> dict[str, list[tuple[str, str]]]:
    inspector = inspect(engine)
    return {t: [(c["name"], str(c["type"])) for c in inspector.get_columns(t)] for t in inspector.get_table_names()}


def differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, SQLModel.metadata)


def test_a_full_database_of_the_first_revision_upgrades_to_the_declared_schema_keeping_every_row(database_url: str) -> None:
    engine = create_engine(database_url)
    assert upgrade(engine, BASELINE) == (None, BASELINE)
    metadata = MetaData()
    metadata.reflect(engine)
    assert set(FIRST_REVISION_ROWS) == {t for t in metadata.tables if t != "alembic_version"}  # all of 0001
    with engine.begin() as conn:
        for name, table_rows in FIRST_REVISION_ROWS.items():
            conn.execute(metadata.tables[name].insert(), table_rows)
    before = rows(engine)

    for revision in revisions()[1:]:  # one step at a time: each must keep what the last one held
        kept, columns = rows(engine), table_columns(engine)
        assert upgrade(engine, revision)[1] == revision
        after, reshaped = rows(engine), table_columns(engine)
        for table, by_key in kept.items():
            if table == "alembic_version":
                continue
            assert table in after and len(after[table]) == len(by_key), (revision, table)  # no row lost or added
            if reshaped[table] == columns[table]:  # a table the revision did not reshape keeps every value
                assert after[table] == by_key, (revision, table)
            # a reshaped one is checked below through the code, for what its rows mean
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    ensure_schema(engine)  # accepted as it is
    engine.dispose()

    # The code reads what the first revision stored.
    engine = open_engine(database_url)
    store = Store(engine)
    now = {t: len(r) for t, r in rows(engine).items() if t != "alembic_version"}
    assert {t: n for t, n in now.items() if t in before} == {t: len(r) for t, r in before.items() if t != "alembic_version"}
    assert {t: n for t, n in now.items() if t not in before} == {  # 0003: the profiles' tables, empty
        "profiles": 0,
        "profile_identities": 0,
        "profile_events": 0,
        "profile_merges": 0,
        "profile_relationships": 0,  # 0006
        "profile_segments": 0,  # 0008
        "segment_counts": 0,
        "profile_dead_letters": 0,  # 0009
        "profile_event_keys": 0,  # 0010
        "erasures": 0,  # 0011
        "secrets": 0,
        "score_models": 0,  # 0012
        "callback_signatures": 0,  # 0013
        "decision_rollups": 0,  # 0014
        "decision_rollups_daily": 0,
        "evaluations": 0,  # 0015
    }
    decision = store.find_decision("d-1")
    assert decision is not None and decision.features == FEATURES and decision.offers == OFFERS
    assert decision.profile_version is None  # 0004: decisions made before profiles read none
    assert decision.created_at == AT
    assert [(e.feedback_id, e.offer_id, e.reward, e.features) for e in store.learning_events(0)] == [
        (1, "gold-card", 1.0, FEATURES)
    ]
    live = store.live_activation()
    assert (live.id, live.version, live.files) == (1, 1, {"set.yaml": "channels: [web]\n"})
    assert [(e.offer_id, e.kind) for e in store.contact_events("c-1", 0)] == [("gold-card", "decided")]
    # 0002: counters by quarter hour; an hour's count is in the hour's first quarter
    assert store.counter_rows() == [("gold-card", "decided", 4 * int(AT.timestamp() // 3600), 3)]
    assert store.latest_snapshot() == ("old", 1, b"\x80\x04N.")
    line = next(store.export())
    assert line["rewards"] == {"gold-card": 1.0} and line["decided_at"] == "2026-11-20T09:30:00Z"
    # and writes after it, with ids that follow the old ones
    assert store.activate(1, "bob", "rollback").activated is False  # live already
    assert store.publish({"b.yaml": "channels: [app]\n"}, "b" * 64, "bob", "api").id == 2
    engine.dispose()


def test_an_empty_database_is_created_at_the_declared_schema(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        assert current_revision(engine) == head_revision()
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_the_revisions_form_one_line_from_the_baseline() -> None:
    found = revisions()
    assert found[0] == BASELINE and found[-1] == head_revision() and len(set(found)) == len(found)


@pytest.mark.parametrize("older", revisions()[:-1])
def test_a_database_at_an_older_revision_is_refused_until_upgraded(database_url: str, older: str) -> None:
    engine = create_engine(database_url)
    upgrade(engine, older)
    with pytest.raises(SchemaError, match="nba db upgrade"):
        ensure_schema(engine)
    assert upgrade(engine) == (older, head_revision())
    ensure_schema(engine)
    engine.dispose()


def test_a_database_of_a_revision_this_nba_does_not_know_is_refused_as_newer(database_url: str) -> None:
    engine = open_engine(database_url)
    Store(engine).register_policy_set({"a.yaml": "channels: [web]"}, "hash-1")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'newer'")
    engine.dispose()
    with pytest.raises(SchemaError, match="newer than this nba"):
        open_engine(database_url)
    engine = create_engine(database_url)
    with pytest.raises(SchemaError, match="which this nba does not know"):
        upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM policy_sets").scalar() == 1
    engine.dispose()


def test_a_database_from_before_migrations_is_stamped_by_db_upgrade(database_url: str) -> None:
    engine = create_engine(database_url)
    upgrade(engine, BASELINE)  # the tables as versions before migrations made them, without a revision
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql("ALTER TABLE contact_events DROP COLUMN origin")  # added in place back then
        conn.exec_driver_sql(
            'INSERT INTO contact_events (customer_id, at, kind, offer_id, "group", channel) '
            "VALUES ('c-1', 1.5, 'decided', 'gold-card', 'cards', 'web')"
        )
    with pytest.raises(SchemaError, match="before schema migrations: run `nba db upgrade`"):
        ensure_schema(engine)
    engine.dispose()
    done = subprocess.run(
        [sys.executable, "-m", "nba", "db", "upgrade", "--database-url", database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert head_revision() in done.stdout
    engine = open_engine(database_url)
    assert "origin" in {c["name"] for c in inspect(engine).get_columns("contact_events")}
    assert differences(engine) == []
    assert Store(engine, origin="reader").contact_events_after(0) == (
        [ContactEvent("c-1", 1.5, "decided", "gold-card", "cards", "web")],
        1,
    )
    engine.dispose()


def test_serve_refuses_an_outdated_database_naming_the_command(database_url: str, tmp_path) -> None:
    engine = open_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'zzzz'")
    engine.dispose()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nba",
            "serve",
            "--database-url",
            database_url,
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--http-port",
            "-1",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "revision zzzz" in done.stderr and "Traceback" not in done.stderr
