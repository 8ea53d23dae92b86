"""`nba profiles import FILE`: JSON Lines and CSV through the same checks and identity
resolution as Track, a count of imported, duplicate and refused lines with reasons, and a
re-run (after an interruption) that imports nothing twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import POLICIES

from nba.cli import EXIT_FAILED, EXIT_USAGE, main
from nba.storage.engine import open_engine
from nba.storage.store import Store

LINES = [
    {
        "event_id": "i-1",
        "type": "order",
        "identities": {"email": "Ada@Example.com"},
        "source": "web",
        "occurred_at": "2026-11-29T10:00:00Z",
        "properties": {"amount": 10},
    },
    {
        "event_id": "i-2",
        "type": "order",
        "customer_id": "c-2",
        "identities": {"phone": "020 7946 0018"},
        "occurred_at": "2026-11-29T11:00:00+01:00",
    },
    "not json",
    {"event_id": "i-3", "type": "order", "identities": {"email": "nope"}},
    {"event_id": "i-4", "type": "signup", "identities": {"email": "ada@example.com"}, "colour": "red"},
    {"event_id": "i-5", "type": "signup", "identities": {"email": "ada@example.com", "phone": "+442079460018"}},
]


def run(*args: str) -> int:
    return main(["profiles", "import", *args, "--policies", str(POLICIES)])


def test_jsonl_is_imported_with_reasons_and_a_rerun_takes_nothing_twice(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in LINES) + "\n")
    assert run(str(path), "--database-url", database_url) == EXIT_FAILED  # some lines refused
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: 3 imported, 0 duplicate, 3 refused"
    assert "refused: line 3: not JSON" in err
    assert "refused: line 4: identities.email: 'nope' is not an e-mail address" in err
    assert "refused: line 5: colour: unknown field" in err
    assert run(str(path), "--database-url", database_url) == EXIT_FAILED
    assert capsys.readouterr().out.strip() == f"{path}: 0 imported, 3 duplicate, 3 refused"
    engine = open_engine(database_url)
    try:
        store = Store(engine)
        with store.read() as conn:
            survivor = store.survivor(conn, "c-2")
            assert survivor is not None and store.holders(conn, "email", "ada@example.com") == [survivor]
            assert [e[0] for e in store.events(conn, survivor)] == ["i-1", "i-2", "i-5"]  # i-5 merged the two
    finally:
        engine.dispose()


def test_csv_columns_name_identities_and_properties(tmp_path: Path, database_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,type,customer_id,source,occurred_at,identities.email,properties.amount\n"
        "c-1,order,,store,2026-11-29T10:00:00Z,bob@example.com,12.5\n"
        "c-2,order,c-9,,,,\n"
        "c-3,order,,,,,\n"
    )
    assert run(str(path), "--database-url", database_url) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: 2 imported, 0 duplicate, 1 refused"
    assert "refused: line 4: customer_id: required when the event carries no identifier" in err


def test_a_missing_file_is_a_usage_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert run(str(tmp_path / "nope.jsonl"), "--database-url", f"sqlite:///{tmp_path}/nba.db") == EXIT_USAGE
    assert "FILE" in capsys.readouterr().err


def test_backfill_rebuilds_what_a_changed_definition_left_and_then_nothing(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in LINES if isinstance(x, dict) and x["event_id"] in ("i-1", "i-2")) + "\n")
    assert run(str(path), "--database-url", database_url) == 0
    changed = tmp_path / "policies"
    shutil.copytree(POLICIES, changed)
    profile = (changed / "profile.yaml").read_text()
    (changed / "profile.yaml").write_text(
        profile.replace("spend_365d: sum(order.amount) over 365d", "spend_365d: sum(order.amount) over 30d")
    )
    capsys.readouterr()
    backfill = ["profiles", "backfill", "--database-url", database_url, "--policies", str(changed)]
    assert main(backfill) == 0
    assert capsys.readouterr().out.startswith("2 profiles rebuilt under definition ")
    assert main(backfill) == 0
    assert capsys.readouterr().out.startswith("0 profiles rebuilt")
    assert main(["profiles", "import", "--database-url", database_url]) == EXIT_USAGE
    assert "FILE: name the file of events to import" in capsys.readouterr().err
