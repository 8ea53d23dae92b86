"""What the decision log's writer holds the write lock for, on SQLite and PostgreSQL:
`python loadtests/bench_batches.py`.

Closing reward windows: 10,000 decisions of 3 offers each (a third with feedback on their first
offer) are written with their windows already due, then closed as the writer closes them
(``Store.close_windows``, 1,000 decisions a write transaction).

Storing feedback: 10,000 events (a first outcome for 3 offers of each of 2,500 decisions, then a
revision of one in four: a click after an impression, a retry of an event already stored) in
transactions of 500 events, as the writer's group commit stores what arrived together.

Reported for each: the rate, SQL statements per transaction, and how long each transaction
held the write lock (while it does, no other feedback and no decision is written).

PostgreSQL is the machine's (NBA_BENCH_POSTGRES, default the `test` database on 127.0.0.1), in
a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from nba.decision.decider import new_decision_id
from nba.records import DecisionRecord, FeedbackEvent, RewardWindows
from nba.storage.decision_log import CLOSE_BATCH
from nba.storage.engine import open_engine
from nba.storage.store import Store

POSTGRES = os.environ.get("NBA_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WINDOWS = RewardWindows({"impressed": 3600.0, "clicked": 86400.0, "accepted": 86400.0, "rejected": 86400.0})


def fill(store: Store, decisions: int, offers: int) -> None:
    decided = datetime.now(UTC) - timedelta(days=3)
    features = {f"customer.f{i}": float(i) for i in range(30)}
    records = [
        DecisionRecord(
            new_decision_id(),
            None,
            f"c-{n}",
            "web",
            decided,
            "1-abc",
            "linear-igw/0",
            features,
            {},
            [
                {
                    "offer_id": f"offer-{(n + k) % 100:04d}",
                    "slot": k + 1,
                    "propensity": 0.3,
                    "score": 1.0,
                    "fallback": False,
                    "treatment": "",
                    "group": "g",
                    "name": "x",
                }
                for k in range(offers)
            ],
        )
        for n in range(decisions)
    ]
    for start in range(0, decisions, 500):
        with store.write() as conn:
            store.insert_decisions(conn, records[start : start + 500])
            for r in records[start : start + 500 : 3]:
                store.store_feedback(
                    conn,
                    FeedbackEvent(
                        event_id=f"e-{r.decision_id}",
                        decision_id=r.decision_id,
                        offer_id=r.offers[0]["offer_id"],
                        outcome="accepted",
                        reward=1.0,
                        occurred_at=decided,
                        received_at=decided,
                        customer_id=r.customer_id,
                        features=features,
                        decided_at=decided,
                        channel="web",
                        group="g",
                    ),
                )


def run(name: str, url: str, decisions: int, offers: int) -> dict[str, Any]:
    engine = open_engine(url)
    statements = [0]

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        statements[0] += 1

    store = Store(engine, WINDOWS)
    fill(store, decisions, offers)
    held: list[float] = []
    per_batch: list[int] = []
    learned = 0
    began = time.perf_counter()
    while True:
        statements[0] = 0
        started = time.perf_counter()
        with store.write() as conn:
            learn, closed = store.close_windows(conn, datetime.now(UTC), CLOSE_BATCH)
        held.append(time.perf_counter() - started)
        per_batch.append(statements[0])
        learned += len(learn)
        if closed < CLOSE_BATCH:
            break
    seconds = time.perf_counter() - began
    assert store.count_open_decisions() == 0
    engine.dispose()
    result = {
        "engine": name,
        "decisions": decisions,
        "no_response_events": learned,
        "seconds": seconds,
        "decisions_per_second": decisions / seconds,
        "statements_per_transaction": statistics.median(per_batch),
        "lock_held_ms_median": statistics.median(held) * 1000,
        "lock_held_ms_max": max(held) * 1000,
    }
    print(
        f"{name:10} {decisions} decisions x {offers} offers: {learned} no_response events in {seconds:.2f} s "
        f"({decisions / seconds:,.0f} decisions/s); {statistics.median(per_batch):.0f} statements per "
        f"transaction of {CLOSE_BATCH}; write lock held {statistics.median(held) * 1000:.0f} ms (median), "
        f"{max(held) * 1000:.0f} ms (max)"
    )
    return result


def run_feedback(name: str, url: str, decisions: int, offers: int, batch: int) -> dict[str, Any]:
    engine = open_engine(url)
    statements = [0]

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        statements[0] += 1

    store = Store(engine, WINDOWS)
    decided = datetime.now(UTC) - timedelta(minutes=5)
    features = {f"customer.f{i}": float(i) for i in range(30)}
    records = [
        DecisionRecord(
            new_decision_id(),
            None,
            f"c-{n}",
            "web",
            decided,
            "1-abc",
            "linear-igw/0",
            features,
            {},
            [
                {
                    "offer_id": f"offer-{k}",
                    "slot": k + 1,
                    "propensity": 0.3,
                    "score": 1.0,
                    "fallback": False,
                    "treatment": "",
                    "group": "g",
                    "name": "x",
                }
                for k in range(offers)
            ],
        )
        for n in range(decisions)
    ]
    with store.write() as conn:
        store.insert_decisions(conn, records)

    def event_for(r: DecisionRecord, k: int, outcome: str, tag: str) -> FeedbackEvent:
        return FeedbackEvent(
            event_id=f"{tag}-{r.decision_id}-{k}",
            decision_id=r.decision_id,
            offer_id=f"offer-{k}",
            outcome=outcome,
            reward=1.0 if outcome == "accepted" else 0.0,
            occurred_at=decided,
            received_at=decided,
            features=features,
            customer_id=r.customer_id,
            decided_at=decided,
            channel="web",
            group="g",
        )

    events = [event_for(r, k, "impressed", "i") for r in records for k in range(offers)]
    events += [event_for(r, 0, "clicked", "c") for r in records[::4]]  # revisions of a stored pair
    events += [event_for(r, 1, "impressed", "i") for r in records[1::8]]  # retries: duplicates
    many = getattr(store, "store_feedback_batch", None)
    held: list[float] = []
    per_batch: list[int] = []
    began = time.perf_counter()
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        statements[0] = 0
        started = time.perf_counter()
        with store.write() as conn:
            if many is not None:
                many(conn, chunk)
            else:  # the writer before batches: one event at a time
                for e in chunk:
                    store.store_feedback(conn, e)
        held.append(time.perf_counter() - started)
        per_batch.append(statements[0])
    seconds = time.perf_counter() - began
    engine.dispose()
    print(
        f"{name:10} {len(events)} feedback events in transactions of {batch}: {seconds:.2f} s "
        f"({len(events) / seconds:,.0f} events/s); {statistics.median(per_batch):.0f} statements per transaction; "
        f"write lock held {statistics.median(held) * 1000:.0f} ms (median), {max(held) * 1000:.0f} ms (max)"
    )
    return {"engine": name, "events": len(events), "seconds": seconds}


def both(decisions: int, offers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run("sqlite", f"sqlite:///{folder}/windows.db", decisions, offers)
    with tempfile.TemporaryDirectory() as folder:
        run_feedback("sqlite", f"sqlite:///{folder}/feedback.db", decisions // 4, offers, 500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--offers", type=int, default=3)
    args = parser.parse_args()
    both(args.decisions, args.offers)
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    libpq = POSTGRES.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        run("postgresql", f"{POSTGRES}?options=-csearch_path%3D{schema}", args.decisions, args.offers)
        run_feedback("postgresql", f"{POSTGRES}?options=-csearch_path%3D{schema}", args.decisions // 4, args.offers, 500)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
