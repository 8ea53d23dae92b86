"""The decision log writer's batches, which hold the write lock: closing reward windows and
storing a group commit's feedback cost a few statements per batch, not a few per item, and
give exactly what storing the items one at a time gave."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select

from nba.decision.decider import new_decision_id
from nba.errors import AlreadyExists
from nba.records import NO_RESPONSE, DecisionRecord, FeedbackEvent, FeedbackResult, RewardWindows
from nba.storage.engine import open_engine
from nba.storage.store import Store
from nba.storage.tables import FeedbackRow

WINDOWS = RewardWindows({"impressed": 3600.0, "clicked": 86400.0, "accepted": 86400.0, "rejected": 86400.0}, default_reward=-0.05)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def record(n: int, offers: int, decided: datetime) -> DecisionRecord:
    return DecisionRecord(
        new_decision_id() + f"{n:05d}",
        None,
        f"c-{n}",
        "web",
        decided,
        "1-abc",
        "linear-igw/0",
        {"customer.n": float(n)},
        {},
        [
            {
                "offer_id": f"o-{(n + k) % 7}",
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


def event_for(r: DecisionRecord, offer: str, event_id: str, outcome: str, received: datetime) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=event_id,
        decision_id=r.decision_id,
        offer_id=offer,
        outcome=outcome,
        reward=1.0,
        occurred_at=received,
        received_at=received,
        features=r.features,
        customer_id=r.customer_id,
        decided_at=r.created_at,
        channel="web",
        group="g",
    )


def test_closing_a_batch_costs_a_few_statements_and_closes_each_offer_once(database_url: str) -> None:
    engine = open_engine(database_url)
    store = Store(engine, WINDOWS)
    decided = NOW - timedelta(days=2)
    records = [record(n, 3 if n % 5 else 6, decided) for n in range(300)]
    recent = record(999, 3, NOW - timedelta(hours=1))  # its windows are still open
    f = FeedbackRow.__table__
    with store.write() as conn:
        store.insert_decisions(conn, [*records, recent])
        for r in records[::3]:  # answered in time: no default reward for that offer
            store.store_feedback(conn, event_for(r, r.offers[0]["offer_id"], f"e-{r.decision_id}", "accepted", decided))
        for r in records[1::7]:  # answered too late: stored, not applied, so still unanswered
            store.store_feedback(
                conn, event_for(r, r.offers[1]["offer_id"], f"late-{r.decision_id}", "impressed", decided + timedelta(hours=5))
            )
        for r in records[2:40:9]:  # another replica closed this pair first
            conn.execute(
                f.insert().values(
                    event_id=f"{NO_RESPONSE}:{r.decision_id}:{r.offers[2]['offer_id']}",
                    decision_id=r.decision_id,
                    offer_id=r.offers[2]["offer_id"],
                    outcome=NO_RESPONSE,
                    reward=-0.05,
                    stage=0,
                    applied=True,
                    pair_reward=-0.05,
                    late=False,
                    occurred_at=NOW,
                    received_at=NOW,
                )
            )
        # a client's event id that looks like one of ours, on another decision: its pair is
        # left alone rather than failing the whole batch on the unique event id
        squatted = records[4]
        store.store_feedback(
            conn,
            event_for(
                records[5],
                records[5].offers[0]["offer_id"],
                f"{NO_RESPONSE}:{squatted.decision_id}:{squatted.offers[0]['offer_id']}",
                "clicked",
                decided,
            ),
        )
    answered = {(r.decision_id, r.offers[0]["offer_id"]) for r in [*records[::3], records[5]]}
    closed_before = {(r.decision_id, r.offers[2]["offer_id"]) for r in records[2:40:9]}
    expected = (
        {(r.decision_id, o["offer_id"]) for r in records for o in r.offers}
        - answered
        - closed_before
        - {(squatted.decision_id, squatted.offers[0]["offer_id"])}
    )

    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    with store.write() as conn:
        statements.clear()  # what runs while the write lock is held
        learn, closed = store.close_windows(conn, NOW, limit=1000)
        inside = list(statements)
    assert closed == 300
    print(f"\n{engine.dialect.name}: {closed} decisions, {len(learn)} no_response events, {len(inside)} statements")
    assert len(inside) <= 6, inside  # due decisions, applied feedback, taken ids, insert, new ids, update

    with engine.connect() as conn:
        stored = {
            (r.decision_id, r.offer_id): r
            for r in conn.execute(select(f).where(f.c.outcome == NO_RESPONSE, f.c.event_id.like(f"{NO_RESPONSE}:%")))
            if r.received_at
        }
    features = {r.decision_id: r.features for r in records}
    made = {(r.decision_id, r.offer_id) for r in stored.values() if r.decision_id in features} - closed_before
    assert made == expected and len(learn) == len(expected)
    assert [e.feedback_id for e in learn] == sorted(e.feedback_id for e in learn)  # the order the learner applies
    for e in learn:
        row = next(r for r in stored.values() if r.id == e.feedback_id)
        assert (row.offer_id, e.offer_id, e.reward, row.reward, row.applied) == (e.offer_id, row.offer_id, -0.05, -0.05, True)
        assert e.features == features[row.decision_id] and e.previous_reward is None
        assert row.event_id == f"{NO_RESPONSE}:{row.decision_id}:{row.offer_id}"

    with store.write() as conn:  # nothing is due twice; the recent decision stays open
        assert store.close_windows(conn, NOW, limit=1000) == ([], 0)
    assert store.count_open_decisions() == 1
    engine.dispose()


def test_closing_stops_at_the_batch_limit_oldest_first(database_url: str) -> None:
    engine = open_engine(database_url)
    store = Store(engine, WINDOWS)
    records = [record(n, 2, NOW - timedelta(days=3, minutes=n)) for n in range(30)]
    with store.write() as conn:
        store.insert_decisions(conn, records)
    with store.write() as conn:
        learn, closed = store.close_windows(conn, NOW, limit=10)
    assert closed == 10 and len(learn) == 20
    oldest = {r.decision_id for r in sorted(records, key=lambda r: r.created_at)[:10]}
    assert {e.features["customer.n"] for e in learn} == {r.features["customer.n"] for r in records if r.decision_id in oldest}
    assert store.count_open_decisions() == 20
    engine.dispose()


def counting(engine: Any) -> list[str]:
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    return statements


def test_a_batch_of_feedback_is_stored_as_one_at_a_time_would_in_four_statements(database_url: str) -> None:
    engine = open_engine(database_url)
    store = Store(engine, WINDOWS)
    decided = NOW - timedelta(hours=3)
    one, two = record(1, 2, decided), record(2, 2, decided)
    with store.write() as conn:
        store.insert_decisions(conn, [one, two])

    def events(r: DecisionRecord, tag: str) -> list[FeedbackEvent]:
        o1, o2 = r.offers[0]["offer_id"], r.offers[1]["offer_id"]

        def fb(n: str, offer: str, outcome: str, reward: float, received: datetime = decided) -> FeedbackEvent:
            return FeedbackEvent(
                event_id=f"{tag}-{n}",
                decision_id=r.decision_id,
                offer_id=offer,
                outcome=outcome,
                reward=reward,
                occurred_at=received,
                received_at=received,
                features=r.features,
                customer_id=r.customer_id,
                decided_at=r.created_at,
                channel="web",
                group="g",
            )

        return [
            fb("e1", o1, "clicked", 0.3),  # revises the impression stored before
            fb("e2", o1, "accepted", 1.0),  # revises e1, in the same batch
            fb("e3", o1, "impressed", 0.0),  # not further: stored, not applied
            fb("e1", o1, "clicked", 0.3),  # a retry: duplicate
            fb("e0", o2, "accepted", 1.0),  # an id stored before, for another event
            fb("e2", o2, "clicked", 0.3),  # an id of this batch, for another event
            fb("e4", o2, "accepted", 1.0),
            fb("e5", o2, "impressed", 0.0, decided + timedelta(hours=2)),  # after its 1-hour window: late
        ]

    def first(r: DecisionRecord, tag: str) -> None:
        with store.write() as conn:
            store.store_feedback(
                conn,
                FeedbackEvent(
                    event_id=f"{tag}-e0",
                    decision_id=r.decision_id,
                    offer_id=r.offers[0]["offer_id"],
                    outcome="impressed",
                    reward=0.0,
                    occurred_at=decided,
                    received_at=decided,
                    features=r.features,
                    decided_at=r.created_at,
                ),
            )

    statements = counting(engine)
    first(one, "b")
    with store.write() as conn:
        statements.clear()
        batched = store.store_feedback_batch(conn, events(one, "b"))
        inside = len(statements)
    first(two, "s")
    single: list[FeedbackResult | AlreadyExists] = []
    for fb in events(two, "s"):
        with store.write() as conn:
            try:
                single.append(store.store_feedback(conn, fb))
            except AlreadyExists as exc:
                single.append(exc)

    def shape(results: list[Any], r: DecisionRecord, tag: str) -> list[Any]:
        def message(exc: AlreadyExists) -> str:
            text = str(exc).replace(f"'{tag}-", "'X-").replace(r.decision_id, "D")
            return text.replace(f"'{r.offers[0]['offer_id']}'", "'O1'").replace(f"'{r.offers[1]['offer_id']}'", "'O2'")

        return [
            ("conflict", message(x))
            if isinstance(x, AlreadyExists)
            else (x.duplicate, x.applied, x.reward, x.previous_reward, x.late, x.feedback_id is not None)
            for x in results
        ]

    assert (
        shape(batched, one, "b")
        == shape(single, two, "s")
        == [
            (False, True, 0.3, 0.0, False, True),
            (False, True, 1.0, 0.3, False, True),
            (False, False, 1.0, None, False, True),
            (True, False, 1.0, None, False, False),
            (
                "conflict",
                "event_id: 'X-e0' was already used for decision 'D', offer 'O1', outcome 'impressed'; use a new event_id",
            ),
            (
                "conflict",
                "event_id: 'X-e2' was already used for decision 'D', offer 'O1', outcome 'accepted'; use a new event_id",
            ),
            (False, True, 1.0, None, False, True),
            (False, False, 1.0, None, True, True),
        ]
    )
    ids = [r.feedback_id for r in batched if isinstance(r, FeedbackResult) and r.feedback_id is not None]
    assert ids == sorted(ids)  # the order they were given: the learner applies them by id
    f = FeedbackRow.__table__
    with engine.connect() as conn:
        stored = {r.event_id: r for r in conn.execute(select(f).where(f.c.decision_id == one.decision_id))}
    assert sorted(stored) == ["b-e0", "b-e1", "b-e2", "b-e3", "b-e4", "b-e5"]
    assert [stored[f"b-{n}"].id for n in ("e1", "e2", "e3", "e4", "e5")] == ids
    assert (stored["b-e2"].pair_reward, stored["b-e2"].previous_reward, stored["b-e5"].late) == (1.0, 0.3, True)
    print(f"\n{engine.dialect.name}: {len(batched)} events, {inside} statements")
    assert inside <= 4, statements  # stored ids, pairs' applied feedback, insert, new ids
    engine.dispose()
