"""Feedback through a real gRPC server: durable, idempotent, learned from at once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from conftest import ManualClock, Running, customer, struct
from google.protobuf import timestamp_pb2
from test_decide import decide

from nba.v1 import decision_service_pb2 as pb


def feedback(server: Running, decision: pb.DecideResponse, event_id: str, outcome=pb.OUTCOME_ACCEPTED, offer_id=None, **fields):
    return server.stub.Feedback(
        pb.FeedbackRequest(
            event_id=event_id,
            decision_id=decision.decision_id,
            offer_id=offer_id or decision.offers[0].offer_id,
            outcome=outcome,
            **fields,
        )
    )


def stored_feedback(server: Running):
    from sqlalchemy import select

    from nba.storage.tables import FeedbackRow

    with server.service.engine.connect() as conn:
        return conn.execute(select(FeedbackRow.__table__).order_by(FeedbackRow.__table__.c.id)).all()


def test_feedback_is_applied_once_and_a_repeat_is_a_duplicate(server: Running) -> None:
    decision = decide(server)
    first = feedback(server, decision, "evt-1")
    assert (first.applied, first.duplicate, first.reward) == (True, False, 1.0)
    again = feedback(server, decision, "evt-1")
    assert (again.applied, again.duplicate, again.reward) == (False, True, 1.0)
    assert server.service.learning.version == "linear-igw/1"
    assert len(stored_feedback(server)) == 1


def test_feedback_is_durable_when_acknowledged(server: Running) -> None:
    decision = decide(server)
    feedback(server, decision, "evt-durable")
    # Read from the database directly, not through any cache: it is there already.
    rows = stored_feedback(server)
    assert [(r.event_id, r.outcome, r.applied) for r in rows] == [("evt-durable", "accepted", True)]
    assert server.service.store.find_decision(decision.decision_id) is not None


def test_the_very_next_decision_reflects_the_feedback(server: Running) -> None:
    decision = decide(server)
    offer = decision.offers[0].offer_id
    features = server.service.log.get(decision.decision_id).features
    before = server.service.learning.scores([offer], features)[0]
    feedback(server, decision, "evt-next")
    after = server.service.learning.scores([offer], features)[0]
    assert after > before
    assert decide(server).model_version == "linear-igw/1"


def test_rewards_follow_the_furthest_outcome_of_each_offer(server: Running) -> None:
    decision = decide(server, limit=2)
    a, b = (o.offer_id for o in decision.offers)
    steps = [
        ("e1", a, pb.OUTCOME_IMPRESSED, True, 0.0),
        ("e2", a, pb.OUTCOME_CLICKED, True, 0.3),
        ("e3", a, pb.OUTCOME_IMPRESSED, False, 0.3),  # late impression: stored, changes nothing
        ("e4", a, pb.OUTCOME_ACCEPTED, True, 1.0),
        ("e5", b, pb.OUTCOME_REJECTED, True, 0.0),
    ]
    for event_id, offer, outcome, applied, reward in steps:
        response = feedback(server, decision, event_id, outcome, offer_id=offer)
        assert (response.applied, response.reward) == (applied, pytest.approx(reward)), event_id
    rows = stored_feedback(server)
    assert [r.applied for r in rows] == [True, True, False, True, True]
    assert [r.previous_reward for r in rows] == [None, 0.0, None, pytest.approx(0.3), None]
    # Two offers, two observations, however many events.
    learner = server.service.learning._learner
    assert learner.count(a) == 1 and learner.count(b) == 1


def test_an_explicit_reward_overrides_the_outcome_default(server: Running) -> None:
    decision = decide(server)
    response = feedback(server, decision, "evt-r", pb.OUTCOME_ACCEPTED, reward=42.5)
    assert response.reward == 42.5
    zero = feedback(server, decide(server), "evt-z", pb.OUTCOME_ACCEPTED, reward=0.0)
    assert zero.reward == 0.0  # present-but-zero is not "absent"


def test_configured_rewards_apply(start) -> None:
    server = start(reward_clicked=0.7)
    assert feedback(server, decide(server), "evt-c", pb.OUTCOME_CLICKED).reward == pytest.approx(0.7)


def test_feedback_for_a_decision_made_before_a_restart(start) -> None:
    first = start()
    decision = decide(first)
    first.stop()
    server = start()
    assert feedback(server, decision, "evt-late").applied


def test_occurred_at_is_stored(start) -> None:
    clock = ManualClock()
    server = start(clock=clock)
    decision = decide(server)
    clock.advance(hours=3)
    when = clock.now() - timedelta(hours=2)  # an hour after the decision, reported two hours later
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    feedback(server, decision, "evt-t", occurred_at=stamp)
    stored = stored_feedback(server)[0].occurred_at
    assert abs(stored.replace(tzinfo=UTC) - when) < timedelta(seconds=1)


def test_an_event_id_reused_for_another_event_is_refused(server: Running) -> None:
    decision = decide(server, limit=2)
    feedback(server, decision, "evt-dup")
    with pytest.raises(grpc.RpcError) as raised:
        feedback(server, decision, "evt-dup", pb.OUTCOME_REJECTED)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "event_id: 'evt-dup' was already used" in raised.value.details()
    assert len(stored_feedback(server)) == 1


def test_unknown_decision_or_offer_is_not_found(server: Running) -> None:
    decision = decide(server, limit=1)
    with pytest.raises(grpc.RpcError) as raised:
        server.stub.Feedback(
            pb.FeedbackRequest(event_id="e", decision_id="nope", offer_id="gold-card", outcome=pb.OUTCOME_CLICKED)
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "decision_id: no decision 'nope'" in raised.value.details()
    other = next(o.id for o in server.service.policy_set.offers.values() if o.id != decision.offers[0].offer_id)
    with pytest.raises(grpc.RpcError) as raised:
        feedback(server, decision, "e2", offer_id=other)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"offer_id: decision '{decision.decision_id}' did not return offer '{other}'" in raised.value.details()
    assert stored_feedback(server) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event_id": ""}, "event_id: required"),
        ({"decision_id": ""}, "decision_id: required"),
        ({"offer_id": ""}, "offer_id: required"),
        ({"outcome": pb.OUTCOME_UNSPECIFIED}, "outcome: unspecified is not one of OUTCOME_IMPRESSED"),
        ({"outcome": 99}, "outcome: unknown value 99"),
        ({"reward": float("nan")}, "reward: must be a finite number"),
        ({"occurred_at": timestamp_pb2.Timestamp(seconds=int(datetime.now(UTC).timestamp()) + 86400)}, "occurred_at:"),
    ],
)
def test_bad_feedback_gets_invalid_argument_naming_the_field(server: Running, fields, message: str) -> None:
    decision = decide(server)
    request = {
        "event_id": "evt",
        "decision_id": decision.decision_id,
        "offer_id": decision.offers[0].offer_id,
        "outcome": pb.OUTCOME_CLICKED,
    }
    request.update(fields)
    with pytest.raises(grpc.RpcError) as raised:
        server.stub.Feedback(pb.FeedbackRequest(**request))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
    assert stored_feedback(server) == []


def test_feedback_on_the_fallback_is_accepted(server: Running) -> None:
    decision = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="app", context=struct({"customer": {"age": 45}})))
    assert decision.offers[0].fallback
    assert feedback(server, decision, "evt-fb", pb.OUTCOME_CLICKED).applied


def test_concurrent_feedback_is_group_committed_without_loss(server: Running) -> None:
    from concurrent.futures import ThreadPoolExecutor

    decisions = [decide(server, context={"customer": customer(age=20 + i)}) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        clicks = list(pool.map(lambda i: feedback(server, decisions[i], f"c-{i}", pb.OUTCOME_CLICKED), range(40)))
        late = list(pool.map(lambda i: feedback(server, decisions[i], f"i-{i}", pb.OUTCOME_IMPRESSED), range(40)))
    assert all(r.applied for r in clicks)
    assert not any(r.applied for r in late)  # impressions after the clicks change nothing
    assert len(stored_feedback(server)) == 80
    assert server.service.learning._learner.n_updates == 40


def test_feedback_that_cannot_be_made_durable_is_unavailable_and_can_be_retried(server: Running) -> None:
    decision = decide(server)
    server.service.log.flush()
    with server.service.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE feedback RENAME TO feedback_away")
    try:
        with pytest.raises(grpc.RpcError) as raised:
            feedback(server, decision, "evt-retry")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry" in raised.value.details()
        assert server.service.learning.version == "linear-igw/0"  # nothing learned from it
    finally:
        with server.service.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE feedback_away RENAME TO feedback")
    # Seen as an outage on SQLite (OperationalError) and a fault on PostgreSQL: either way a
    # client's retry succeeds once the table is back (after an outage, within the writer's
    # next probe of the database).
    deadline = time.monotonic() + 10
    while True:
        try:
            assert feedback(server, decision, "evt-retry").applied
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert server.service.learning.version == "linear-igw/1"
