"""The decision log's write throughput and growth, on SQLite and PostgreSQL: `make bench-store`.

Real decision records first: a service on a generated catalogue (100 offers, 30 context
fields, as `make bench`) decides for 2,000 customers. Then, on each engine, those records
(with fresh ids and times spread over ten days) are written as the log's writer writes them:
500 decisions a transaction, each with its `decided` contact events and the overview's rollups,
in write transactions that hold the write lock; and again without the rollups (as before
revision 0014), each on a database of its own, for what the rollups cost. Reported: decisions a second for each successive slice of the run
(does it hold as the tables and their indexes grow?), bytes per decision on disk (tables and
indexes), and how fast retention deletes them (`Store.purge`).

PostgreSQL is the machine's (NBA_BENCH_POSTGRES, default the `test` database on 127.0.0.1),
in a schema of its own, dropped afterwards. Results as a table, saved as JSON
(loadtests/results/bench_store.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from workload import context, write_policy_set  # noqa: E402

from nba.config import Settings  # noqa: E402
from nba.decision.decider import DecideInput, new_decision_id  # noqa: E402
from nba.records import ContactEvent, DecisionRecord  # noqa: E402
from nba.service.server import Service  # noqa: E402
from nba.storage.engine import open_engine  # noqa: E402
from nba.storage.rollups import Counts, decision_measures  # noqa: E402
from nba.storage.store import Store  # noqa: E402
from nba.storage.tables import DECISIONS  # noqa: E402

BATCH = 500
POSTGRES = os.environ.get("NBA_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def real_records(folder: Path, count: int) -> list[DecisionRecord]:
    policies = write_policy_set(folder / "policies", offers=100, field_count=30)
    settings = Settings(
        policies=policies,
        database_url=f"sqlite:///{folder / 'templates.db'}",
        port=0,
        metrics_port=-1,
        http_port=-1,
        policies_watch_seconds=0,
        log_format="text",
        log_level="warning",
    )
    service = Service(settings)
    rng = random.Random(7)
    try:
        return [
            service.decider.decide(DecideInput(customer_id=f"c-{i}", channel="web", limit=3, context=context(30, rng)))[0]
            for i in range(count)
        ]
    finally:
        service.log.close()
        service.engine.dispose()


def write(store: Store, templates: list[DecisionRecord], total: int, slices: int, rollups: bool = True) -> list[float]:
    """Decisions a second in each of ``slices`` equal parts of the run; ``rollups``: with the
    overview's rollups, as the writer keeps them (False: as before revision 0014)."""
    start = datetime.now(UTC) - timedelta(days=10)
    step = timedelta(days=10) / total
    rates: list[float] = []
    per_slice = total // slices
    n = 0
    for _ in range(slices):
        began = time.perf_counter()
        for _ in range(per_slice // BATCH):
            batch = [
                replace(
                    templates[(n + i) % len(templates)],
                    decision_id=new_decision_id(),
                    customer_id=f"c-{(n + i) % 200_000}",
                    created_at=start + step * (n + i),
                )
                for i in range(BATCH)
            ]
            contacts = [
                ContactEvent(d.customer_id, d.created_at.timestamp(), "decided", o["offer_id"], o["group"], d.channel)
                for d in batch
                for o in d.offers
            ]
            with store.write() as conn:
                counts: Counts = defaultdict(float)
                if rollups:  # as the writer: no decision of a fresh batch is in the log yet
                    decision_measures(batch, counts)
                store.insert_decisions(conn, batch)
                store.insert_contacts(conn, contacts)
                store.add_rollups(conn, counts)
            n += BATCH
        rates.append(per_slice / (time.perf_counter() - began))
    return rates


def size_bytes(store: Store, url: str) -> int:
    if store.engine.dialect.name == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size
    with store.engine.connect() as conn:
        return int(
            conn.exec_driver_sql("SELECT pg_total_relation_size('decisions') + pg_total_relation_size('contact_events')").scalar()
        )


def purge_rate(store: Store) -> tuple[int, float]:
    table = DECISIONS
    with store.write() as conn:
        conn.execute(table.update().values(closed=True))
    before = datetime.now(UTC) - timedelta(days=5)  # about half of them
    began = time.perf_counter()
    deleted = 0
    while True:
        done, _ = store.purge(before, budget_seconds=60)
        deleted += done
        if not done:
            break
    return deleted, deleted / (time.perf_counter() - began)


def run_engine(
    name: str, url: str, templates: list[DecisionRecord], total: int, slices: int, rollups: bool = True
) -> dict[str, Any]:
    engine = open_engine(url)
    try:
        store = Store(engine)
        rates = write(store, templates, total, slices, rollups)
        size = size_bytes(store, url)
        deleted, deletes_per_second = purge_rate(store)
    finally:
        engine.dispose()
    return {
        "engine": name,
        "rollups": rollups,
        "decisions": total,
        "rates": [round(r) for r in rates],
        "bytes_per_decision": round(size / total),
        "purged": deleted,
        "purged_per_second": round(deletes_per_second),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=200_000, help="decisions written per engine")
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "bench_store.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("making 2,000 real decisions (100 offers, 30 fields) ...", flush=True)
        templates = real_records(folder, 2000)
        for rollups in (True, False):  # each on a database of its own
            print(f"SQLite: {args.decisions:,} decisions, rollups {'on' if rollups else 'off'} ...", flush=True)
            results.append(
                run_engine(
                    "sqlite", f"sqlite:///{folder / f'bench-{rollups}.db'}", templates, args.decisions, args.slices, rollups
                )
            )
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        import psycopg

        libpq = POSTGRES.replace("postgresql+psycopg://", "postgresql://", 1)
        for rollups in (True, False):
            with psycopg.connect(libpq, autocommit=True) as admin:
                admin.execute(f"CREATE SCHEMA {schema}")
                try:
                    print(f"PostgreSQL: {args.decisions:,} decisions, rollups {'on' if rollups else 'off'} ...", flush=True)
                    results.append(
                        run_engine(
                            "postgresql",
                            f"{POSTGRES}?options=-csearch_path%3D{schema}",
                            templates,
                            args.decisions,
                            args.slices,
                            rollups,
                        )
                    )
                finally:
                    admin.execute(f"DROP SCHEMA {schema} CASCADE")
    print()
    print(f"{'engine':<12}{'rollups':<9}{'decisions/s by slice of the run':<42}{'bytes/decision':>16}{'deletes/s':>12}")
    for r in results:
        rates = " → ".join(f"{x:,}" for x in r["rates"])
        on = "on" if r["rollups"] else "off"
        print(f"{r['engine']:<12}{on:<9}{rates:<42}{r['bytes_per_decision']:>16,}{r['purged_per_second']:>12,}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"when": datetime.now(UTC).isoformat(timespec="seconds"), "batch": BATCH, "results": results}, indent=2)
    )
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
