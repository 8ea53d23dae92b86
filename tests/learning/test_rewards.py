"""Rewards have a range, and nothing a caller (or an old log) sends can make the model, its
answers or its export non-finite. Through real servers, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import REDIS, Running, customer, redis_stream, struct
from prometheus_client import REGISTRY
from sqlalchemy import select
from test_cli import run_cli

from nba.config import ConfigError, load_settings
from nba.records import LearningEvent
from nba.storage.bus import BusEntry, Span, encode
from nba.storage.tables import FeedbackRow
from nba.v1 import decision_service_pb2 as pb


def decide(server: Running, limit: int = 3, explain: bool = False) -> pb.DecideResponse:
    return server.stub.Decide(
        pb.DecideRequest(customer_id="c-1", channel="web", limit=limit, explain=explain, context=struct({"customer": customer()}))
    )


def tell(server: Running, decision: pb.DecideResponse, event_id: str, **fields: Any) -> pb.FeedbackResponse:
    return server.stub.Feedback(
        pb.FeedbackRequest(
            event_id=event_id,
            decision_id=decision.decision_id,
            offer_id=decision.offers[0].offer_id,
            outcome=fields.pop("outcome", pb.OUTCOME_ACCEPTED),
            **fields,
        )
    )


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def assert_finite_answers(server: Running) -> None:
    """Every number a Decide answers (and explains) is finite, and propensities are in (0, 1]."""
    response = decide(server, limit=3, explain=True)
    assert response.offers
    for offer in response.offers:
        assert math.isfinite(offer.score) and 0 < offer.propensity <= 1, offer
    for entry in response.explanation.offers:
        for number in (entry.predicted, entry.score, entry.probability, entry.propensity):
            assert math.isfinite(number), entry


def stored_rewards(server: Running) -> list[float]:
    with server.service.engine.connect() as conn:
        return [r.reward for r in conn.execute(select(FeedbackRow.__table__).order_by(FeedbackRow.__table__.c.id))]


def add_old_event(
    server: Running, decision: pb.DecideResponse, event_id: str, reward: float, previous: float | None = None, stage: int = 4
) -> None:
    """A feedback row as a version without reward bounds would have written it: in a write
    transaction, under the write lock every version takes (processes following the log rely
    on it: a row committed during another process's own write would be passed over)."""
    server.service.log.flush()
    now = datetime.now(UTC)
    with server.service.store.write() as conn:
        conn.execute(
            FeedbackRow.__table__.insert().values(
                event_id=event_id,
                decision_id=decision.decision_id,
                offer_id=decision.offers[0].offer_id,
                outcome="accepted",
                reward=reward,
                stage=stage,
                applied=True,
                pair_reward=reward,
                previous_reward=previous,
                late=False,
                occurred_at=now,
                received_at=now,
            )
        )


@pytest.mark.parametrize("reward", [1e308, -1e308, 1e6 + 1, -2e6, float("inf"), float("nan")])
def test_a_reward_outside_the_range_is_refused_and_changes_nothing(server: Running, reward: float) -> None:
    decision = decide(server)
    with pytest.raises(grpc.RpcError) as raised:
        tell(server, decision, "evt-big", reward=reward)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("reward: must be ")
    if math.isfinite(reward):
        assert "[-1e+06, 1e+06]" in raised.value.details()
    assert stored_rewards(server) == []
    assert server.service.learning.version == "linear-igw/0"
    assert_finite_answers(server)


def test_the_range_is_inclusive_and_configurable(start) -> None:
    server = start(reward_min=-1.0, reward_max=5.0)
    assert tell(server, decide(server), "e-5", reward=5.0).reward == 5.0
    assert tell(server, decide(server), "e-min", reward=-1.0).reward == -1.0
    with pytest.raises(grpc.RpcError) as raised:
        tell(server, decide(server), "e-6", reward=5.5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be within [-1, 5] (reward_min, reward_max), got 5.5" in raised.value.details()
    assert stored_rewards(server) == [5.0, -1.0]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NBA_REWARD_CLICKED": "2e6"}, "reward_clicked (--reward-clicked, NBA_REWARD_CLICKED) 2e+06 is outside"),
        ({"NBA_REWARD_MAX": "0.5"}, "reward_accepted (--reward-accepted, NBA_REWARD_ACCEPTED) 1 is outside"),
        ({"NBA_REWARD_DEFAULT": "-3", "NBA_REWARD_MIN": "-2"}, "reward_default (--reward-default, NBA_REWARD_DEFAULT) -3"),
        ({"NBA_REWARD_MIN": "3", "NBA_REWARD_MAX": "2"}, "reward_min (--reward-min, NBA_REWARD_MIN) 3 must be below"),
        ({"NBA_REWARD_ACCEPTED": "nan"}, "reward_accepted (--reward-accepted, NBA_REWARD_ACCEPTED): Input should be a finite"),
        ({"NBA_REWARD_MAX": "inf"}, "reward_max (--reward-max, NBA_REWARD_MAX): Input should be a finite"),
        ({"NBA_LEARNER_PRIOR": "nan"}, "learner_prior (--learner-prior, NBA_LEARNER_PRIOR): Input should be a finite"),
    ],
)
def test_configured_rewards_must_lie_in_the_range(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({}, env)
    assert named in str(raised.value)


def test_a_poisoned_log_is_skipped_at_replay_and_exported_as_valid_json(start, database_url: str, tmp_path) -> None:
    """A log written by a version without bounds holds a reward of 1e308 and one of infinity:
    the restart skips them with a warning instead of turning the model into NaN, and the
    export is still JSON (no bare NaN or Infinity)."""
    first = start(snapshot_seconds=3600)
    tell(first, decide(first), "evt-ok")
    first.stop()  # snapshots the model as of evt-ok
    reopened = start(snapshot_seconds=3600)
    other = decide(reopened)
    add_old_event(reopened, other, "old-huge", 1e308)
    add_old_event(reopened, other, "old-inf", float("inf"), previous=1e308)
    add_old_event(reopened, other, "old-revision", 1.0, previous=float("inf"))
    reopened.stop()  # learned nothing (alone, it does not read what others write): no new snapshot

    skipped = counter("nba_learning_events_skipped_total")
    server = start(snapshot_seconds=3600)
    assert counter("nba_learning_events_skipped_total") == skipped + 2
    # evt-ok, and the revision of a skipped reward learned as the new observation it is
    assert server.service.learning.version == "linear-igw/2"
    assert server.service.learning._learner.state_is_finite()
    assert_finite_answers(server)

    out = tmp_path / "log.jsonl"
    result = run_cli("export", "--out", str(out), env={"NBA_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr

    def no_constants(name: str) -> None:
        raise AssertionError(f"bare {name} in the export")

    lines = [json.loads(line, parse_constant=no_constants) for line in out.read_text().splitlines()]
    rewards = {e["event_id"]: e["reward"] for line in lines for e in line["feedback"]}
    assert rewards == {"evt-ok": 1.0, "old-huge": 1e308, "old-inf": None, "old-revision": 1.0}


def test_a_poisoned_snapshot_is_not_trusted(start) -> None:
    """A snapshot an older version wrote after a reward poisoned its model: the restart
    rebuilds the model from the log instead of loading NaN."""
    first = start(snapshot_seconds=3600)
    tell(first, decide(first), "evt-1")
    learner = first.service.learning._learner
    learner._model._b[1:] = np.nan  # what 1e308 did to the model before rewards were bounded
    learner._model._theta[1:] = np.nan
    first.stop()  # the snapshot holds the NaN

    server = start(snapshot_seconds=3600)
    assert server.service.learning._learner.state_is_finite()
    assert server.service.learning.version == "linear-igw/1"  # rebuilt from the log: evt-1
    assert_finite_answers(server)


def test_decide_never_answers_a_non_finite_score_or_propensity(server: Running) -> None:
    """Defence in depth: whatever the model holds, Decide answers finite numbers (uniformly
    drawn, score 0) and counts it; what it logs exports as valid JSON."""
    learner = server.service.learning._learner
    learner._model._theta[0] = np.nan  # the prior row: every offer's estimate is NaN
    before = counter("nba_nonfinite_scores_total")
    response = decide(server, limit=3, explain=True)
    assert counter("nba_nonfinite_scores_total") == before + 1
    assert [o.score for o in response.offers] == [0.0, 0.0, 0.0]
    eligible = [e for e in response.explanation.offers if e.eligible]
    assert response.offers[0].propensity == pytest.approx(1 / len(eligible))
    assert all(e.probability == pytest.approx(1 / len(eligible)) and e.predicted == 0.0 for e in eligible)
    assert "not all finite" in response.explanation.exploration
    server.service.log.flush()
    record = server.service.store.find_decision(response.decision_id)
    assert all(math.isfinite(c.get("probability", 0.0)) for c in record.candidate_list())


def test_other_replicas_poisoned_events_are_skipped_on_the_database_bus(start) -> None:
    """Events another replica (an older version) committed reach this one by the database:
    the same guard skips what must not be learned."""
    writer = start(bus="database")
    reader = start(bus="database")
    decision = decide(writer)
    skipped = counter("nba_learning_events_skipped_total")
    add_old_event(writer, decision, "old-replica-huge", 1e308)
    deadline = time.monotonic() + 10
    while counter("nba_learning_events_skipped_total") < skipped + 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # both processes read it: the writer's own tail and the reader's
    assert counter("nba_learning_events_skipped_total") == skipped + 2
    for server in (writer, reader):
        assert server.service.learning._learner.state_is_finite()
        assert server.service.learning.version == "linear-igw/0"
        assert_finite_answers(server)


def test_other_replicas_poisoned_events_are_skipped_on_the_redis_bus(start) -> None:
    with redis_stream() as stream:
        server = start(bus=REDIS, bus_stream=stream)
        decision = decide(server)
        server.service.log.flush()
        features = server.service.log.get(decision.decision_id).features
        applied = server.service.learning.last_feedback_id
        poisoned = [
            LearningEvent(applied + 1, features, decision.offers[0].offer_id, 1e308, None, time.time()),
            LearningEvent(applied + 2, features, decision.offers[0].offer_id, float("inf"), None, time.time()),
        ]
        entry = BusEntry("an-older-replica", Span(applied, applied + 2, 0, 0), poisoned, [])
        skipped = counter("nba_learning_events_skipped_total")
        server.service.bus.client.xadd(stream, encode(entry))
        deadline = time.monotonic() + 10
        while counter("nba_learning_events_skipped_total") < skipped + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counter("nba_learning_events_skipped_total") == skipped + 2
        assert server.service.learning._learner.state_is_finite()
        assert_finite_answers(server)


def test_the_learner_refusing_an_event_does_not_stop_the_log(server: Running, caplog: pytest.LogCaptureFixture) -> None:
    """An event the learner refuses (here, one whose stored context holds NaN, which no
    Decide can send) is skipped with a warning; the events after it are learned."""
    decision = decide(server)
    features = dict(server.service.log.get(decision.decision_id).features)
    features["customer.age"] = float("nan")
    caplog.set_level(logging.WARNING, logger="nba.learning.loop")
    server.service.learning.apply([LearningEvent(10**9, features, "gold-card", 1.0, None)])
    [warning] = [r for r in caplog.records if r.getMessage() == "feedback event not learned"]
    assert "customer.age is nan" in warning.reason and warning.feedback_id == 10**9
    assert tell(server, decision, "after").applied
    assert server.service.learning.version == "linear-igw/1"
