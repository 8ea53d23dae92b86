"""Tracking touch-point events in one process, on SQLite and PostgreSQL: `make bench-tracking`.

The profile write path alone, without gRPC: generated events (orders, page views, contacts and
complaints of a few customers, spread over the last year) go through ``nba.profiles.Tracker``
against the sample policy set's profile section, first one ``track`` call each (one commit an
event), then ``track_many`` in batches (one commit a batch, as TrackBatch does). Each engine
starts from an empty database (SQLite in a temporary folder, PostgreSQL in a schema of its own,
dropped afterwards), so the two runs see the same events; the garbage collector is set as
``nba serve`` sets it (``nba.service.server.tune_collector``). Reported: events a second for each
mode and engine, and for the batches the share of time spent applying events to profiles and
turning their states to and from plain data, and the share spent in JSON (``json.dumps`` and
``loads``), by the profiler's clock on a further run of batches.

Results as a table, saved as JSON (loadtests/results/bench_tracking.json). ``make
bench-profiles`` measures TrackBatch through a real server on top of a million stored profiles.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nba.policy.loading import load_policy_set  # noqa: E402
from nba.profiles.tracking import Tracker, TrackInput  # noqa: E402
from nba.service.server import tune_collector  # noqa: E402
from nba.storage.engine import open_engine  # noqa: E402
from nba.storage.store import Store  # noqa: E402

POSTGRES = os.environ.get("NBA_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TYPES = (("order", 0.4), ("page_view", 0.3), ("contact", 0.2), ("complaint", 0.1))


def events(count: int, customers: int, prefix: str, seed: int = 7) -> list[TrackInput]:
    """``count`` events of ``customers`` customers (by customer id), ids prefixed ``prefix``."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for n in range(count):
        kind = rng.choices([t for t, _ in TYPES], [w for _, w in TYPES])[0]
        properties: dict[str, Any]
        if kind == "order":
            properties, source = {"amount": round(rng.uniform(5, 500), 2), "status": "open"}, "web"
        elif kind == "page_view":
            properties, source = {"page": rng.choice(["offers", "cards"])}, "app"
        elif kind == "contact":
            properties, source = {"sentiment": rng.choice(["positive", "negative"])}, "call_center"
        else:
            properties, source = {"topic": "billing"}, "email"
        out.append(
            TrackInput(
                event_id=f"{prefix}-{n}",
                type=kind,
                customer_id=f"cus-{rng.randrange(customers)}",
                source=source,
                occurred_at=now - timedelta(seconds=rng.uniform(0, 365 * 86400)),
                properties=properties,
            )
        )
    return out


def rate(url: str, single: list[TrackInput], batched: list[TrackInput], batch: int) -> dict[str, float]:
    """Events a second tracked one a call and in batches of ``batch``, on a fresh database."""
    import cProfile
    import pstats

    engine = open_engine(url)
    try:
        definition = load_policy_set(ROOT / "policies").profile
        tracker = Tracker(Store(engine), lambda: definition)
        tune_collector()  # as `nba serve` runs: measured without it, tracking is about a third slower
        started = time.perf_counter()
        for event in single:
            tracker.track(event)
        single_rate = len(single) / (time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(0, len(batched), batch):
            tracker.track_many(batched[i : i + batch])
        batch_rate = len(batched) / (time.perf_counter() - started)
        # Where a batch's time goes: the same kind of run again under the profiler (new event
        # ids, so it is real work), its total against the profile module's cumulative time.
        again = [TrackInput(**{**e.__dict__, "event_id": e.event_id + "-p"}) for e in batched[: batch * 4]]
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(0, len(again), batch):
            tracker.track_many(again[i : i + batch])
        profiler.disable()
        stats = pstats.Stats(profiler)
        total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
        rows = stats.stats.items()  # type: ignore[attr-defined]
        # Cumulative times of entry points that do not call each other, so they add up.
        applying = sum(
            row[3] for (file, _, name), row in rows if file.endswith("profiles/profile.py") and name in {"apply", "dump", "load"}
        )
        json_time = sum(
            row[3] for (file, _, name), row in rows if file.endswith("json/__init__.py") and name in {"dumps", "loads"}
        )
        return {
            "single_per_s": single_rate,
            "batch_per_s": batch_rate,
            "profile_share": applying / total if total else 0.0,
            "json_share": json_time / total if total else 0.0,
        }
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per mode (default 10,000)")
    parser.add_argument("--customers", type=int, default=1_000, help="customers they belong to (default 1,000)")
    parser.add_argument("--batch", type=int, default=500, help="events per track_many call (default 500)")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--out", default=str(ROOT / "loadtests" / "results" / "bench_tracking.json"))
    args = parser.parse_args(argv)
    single = events(args.events, args.customers, "single", seed=7)
    batched = events(args.events, args.customers, "batch", seed=8)
    results: list[dict[str, Any]] = []
    for engine in args.engines.split(","):
        if engine == "sqlite":
            with tempfile.TemporaryDirectory(prefix="nba-bench-tracking-") as folder:
                row = rate(f"sqlite:///{folder}/nba.db", single, batched, args.batch)
        elif engine == "postgresql":
            import psycopg

            schema = f"bench_tracking_{uuid.uuid4().hex[:8]}"
            libpq = POSTGRES.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(libpq, autocommit=True) as admin:
                admin.execute(f'CREATE SCHEMA "{schema}"')
            try:
                row = rate(f"{POSTGRES}?options=-csearch_path%3D{schema}", single, batched, args.batch)
            finally:
                with psycopg.connect(libpq, autocommit=True) as admin:
                    admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        else:
            parser.error(f"--engines: unknown engine {engine!r} (sqlite, postgresql)")
        row.update(engine=engine, events=args.events, customers=args.customers, batch=args.batch)
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    measured = datetime.now(UTC).replace(microsecond=0).isoformat()
    Path(args.out).write_text(json.dumps({"measured_at": measured, "results": results}, indent=2) + "\n")
    print("| engine | one a call (events/s) | batches (events/s) | batch time: profiles | batch time: JSON |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['engine']} | {r['single_per_s']:,.0f} | {r['batch_per_s']:,.0f} | {r['profile_share']:.0%} | {r['json_share']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
