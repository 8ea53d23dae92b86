"""The decision log on its own, over a real database, with a listener that records what it is
told: write-behind decisions, feedback acknowledged only once durable and learned, the
listener's events in commit order, and outages translated at the storage boundary."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError

from nba.decision.decider import new_decision_id
from nba.errors import AlreadyExists, Unavailable
from nba.records import ContactEvent, DecisionRecord, FeedbackEvent, LearningEvent, RewardWindows
from nba.storage.decision_log import DecisionLog, LogOptions
from nba.storage.engine import DatabaseUnavailable, is_outage, open_engine
from nba.storage.store import Store

WINDOWS = RewardWindows({"impressed": 3600.0, "clicked": 86400.0, "accepted": 86400.0, "rejected": 86400.0})


class Listener:
    """Records what the log tells it; ``fail_learning`` makes ``learned`` raise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.learned_events: list[LearningEvent] = []
        self.contacts: list[ContactEvent] = []
        self.states: list[bool] = []
        self.writes = 0
        self.fail_learning = False

    def learned(self, events: list[LearningEvent]) -> None:
        if self.fail_learning:
            raise RuntimeError("the learner is broken")
        with self.lock:
            self.learned_events.extend(events)

    def contacted(self, events: list[ContactEvent]) -> None:
        with self.lock:
            self.contacts.extend(events)

    def state_changed(self, up: bool) -> None:
        self.states.append(up)

    def after_write(self) -> None:
        self.writes += 1


def decision(customer: str = "c-1", request_id: str | None = None) -> DecisionRecord:
    return DecisionRecord(
        new_decision_id(),
        request_id,
        customer,
        "web",
        datetime.now(UTC),
        "1-abc",
        "linear-igw/0",
        {"customer.age": 40.0},
        {},
        [
            {
                "offer_id": "gold",
                "slot": 1,
                "propensity": 0.7,
                "score": 1.0,
                "fallback": False,
                "treatment": "",
                "group": "cards",
                "name": "Gold",
            }
        ],
    )


def feedback(d: DecisionRecord, event_id: str, outcome: str = "clicked", reward: float = 1.0) -> FeedbackEvent:
    now = datetime.now(UTC)
    return FeedbackEvent(
        event_id, d.decision_id, "gold", outcome, reward, now, now, d.features, d.customer_id, "web", "cards", d.created_at
    )


@pytest.fixture
def store(database_url: str):  # type: ignore[no-untyped-def]
    engine = open_engine(database_url)
    yield Store(engine, WINDOWS, origin="test")
    engine.dispose()


def test_a_decision_is_answered_from_memory_then_written_behind(store: Store) -> None:
    listener = Listener()
    log = DecisionLog(store, listener, LogOptions(flush_seconds=0.01))
    try:
        d = decision(request_id="r-1")
        assert log.record(d) is None  # write-behind: nothing to wait for
        assert log.get(d.decision_id) is d
        assert log.by_request("r-1", d.created_at - timedelta(seconds=1), memory_only=True) is d
        log.flush(timeout=5)
        assert store.find_decision(d.decision_id) is not None
        assert log.get(d.decision_id) is not None and listener.writes >= 1
        # a decision's own contacts are counted by the decider at once, not told again
        assert listener.contacts == []
    finally:
        log.close(timeout=5)


def test_feedback_is_acknowledged_once_durable_and_learned(store: Store) -> None:
    listener = Listener()
    log = DecisionLog(store, listener, LogOptions(flush_seconds=0.01))
    try:
        d = decision()
        log.record(d)
        result = log.submit_feedback(feedback(d, "e-1")).result(timeout=5)
        assert result.applied and not result.duplicate and result.feedback_id is not None
        # learned before it was acknowledged, with the decision's features
        assert [(e.feedback_id, e.offer_id, e.reward, e.features) for e in listener.learned_events] == [
            (result.feedback_id, "gold", 1.0, d.features)
        ]
        assert [(c.customer_id, c.kind, c.offer_id, c.group) for c in listener.contacts] == [("c-1", "clicked", "gold", "cards")]
        again = log.submit_feedback(feedback(d, "e-1")).result(timeout=5)
        assert again.duplicate and not again.applied
        with pytest.raises(AlreadyExists, match="event_id: 'e-1' was already used"):
            log.submit_feedback(feedback(d, "e-1", outcome="accepted")).result(timeout=5)
        further = log.submit_feedback(feedback(d, "e-2", outcome="accepted", reward=5.0)).result(timeout=5)
        assert further.applied and further.previous_reward == 1.0  # revises the same observation
        assert len(listener.learned_events) == 2 and listener.learned_events[-1].previous_reward == 1.0
    finally:
        log.close(timeout=5)


def test_feedback_stored_but_not_learned_is_not_acknowledged(store: Store) -> None:
    listener = Listener()
    log = DecisionLog(store, listener, LogOptions(flush_seconds=0.01))
    try:
        d = decision()
        log.record(d)
        listener.fail_learning = True
        with pytest.raises(Unavailable, match="stored but not yet learned"):
            log.submit_feedback(feedback(d, "e-1")).result(timeout=5)
        listener.fail_learning = False
        assert log.submit_feedback(feedback(d, "e-1")).result(timeout=5).duplicate  # the retry is told it is kept
    finally:
        log.close(timeout=5)


def test_a_durable_decision_resolves_once_committed(store: Store) -> None:
    log = DecisionLog(store, Listener(), LogOptions(flush_seconds=10.0))  # only a durable record wakes the writer
    try:
        d = decision()
        written = log.record(d, durable=True)
        assert written is not None
        assert written.result(timeout=5) is True
        assert store.find_decision(d.decision_id) is not None
        assert log.written(d.decision_id) is None  # settled
    finally:
        log.close(timeout=5)


def test_a_full_queue_drops_and_refuses_durable_decisions(store: Store) -> None:
    log = DecisionLog(store, Listener(), LogOptions(flush_seconds=10.0, queue_limit=0))
    try:
        assert log.record(decision()) is None  # dropped, counted
        refused = log.record(decision(), durable=True)
        assert refused is not None
        with pytest.raises(Unavailable, match="full or stopping"):
            refused.result(timeout=1)
    finally:
        log.close(timeout=5)


def test_an_unreachable_database_is_database_unavailable_at_the_store() -> None:
    """The repositories translate the driver's errors: callers see ``Unavailable`` (retry), with
    the driver's error as its cause, never SQLAlchemy's classes."""
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    store = Store(engine)
    try:
        with pytest.raises(DatabaseUnavailable, match="the database is unavailable") as caught:
            store.count_decisions()
        assert isinstance(caught.value, Unavailable) and caught.value.code == "UNAVAILABLE"
        assert caught.value.__cause__ is not None and is_outage(caught.value)
        with pytest.raises(DatabaseUnavailable):
            with store.write():
                pass
    finally:
        engine.dispose()


def test_a_fault_that_is_not_an_outage_is_not_translated(store: Store) -> None:
    row = "INSERT INTO offer_counters (offer_id, kind, quarter, count) VALUES ('a', 'impressed', 1, 1)"
    with pytest.raises(IntegrityError):  # a fault in what was asked: the caller's bug, not "retry"
        with store.write() as conn:
            conn.exec_driver_sql(row)
            conn.exec_driver_sql(row)
    assert store.counter_rows() == []  # and the transaction was rolled back
