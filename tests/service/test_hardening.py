"""Inputs that once crashed or misled the service: each now has a clear answer."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Running, struct
from google.protobuf import timestamp_pb2
from test_policies_e2e import BASE, decide, policy_dir, reason_for, shown, tell

from bandit import Featurizer, LinearBandit
from nba.errors import PolicySetError
from nba.policy.loading import parse_policy_set
from nba.v1 import decision_service_pb2 as pb


def refused(text: str) -> list[str]:
    with pytest.raises(PolicySetError) as raised:
        parse_policy_set({"set.yaml": text})
    return raised.value.messages


def test_a_rule_on_contact_history_alone_is_enforced(start, tmp_path: Path) -> None:
    server = start(
        policies=policy_dir(
            tmp_path,
            """
        - id: once-accepted-never-again
          type: applicability
          rule: contacts.accepted < 1.0
    """,
        )
    )
    assert server.service.policy_set.needs_contacts
    response = decide(server)
    tell(server, response, "alpha", pb.OUTCOME_ACCEPTED)
    assert "alpha" not in shown(decide(server))


def test_runtime_errors_of_any_kind_filter_the_offer_as_rule_errors(start, tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "set.yaml").write_text(
        BASE.replace("  customer.risk: bool\n", "  customer.risk: bool\n  customer.tags: list<string>\n  customer.size: number\n")
        + """
  - {id: first, name: First, channels: [web], eligibility: 'customer.tags[0] == "x"'}
  - {id: huge, name: Huge, channels: [web], eligibility: 'int(customer.size * 1e300) > 0'}
"""
    )
    server = start(policies=folder)
    context = struct({"customer": {"age": 30, "segment": "a", "risk": False, "tags": [], "size": 1e15}})
    response = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=context, limit=10, explain=True))
    for offer_id in ("first", "huge"):
        entry = reason_for(response, offer_id)
        assert entry.reason == "rule_error" and entry.detail, offer_id


def test_hours_with_an_offset_are_refused() -> None:
    messages = refused(BASE + '  - {id: x, name: X, channels: [web], schedule: {hours: ["09:00+05:00-17:00"]}}\n')
    assert any("drop the offset" in m for m in messages)


def test_a_decision_that_could_not_be_logged_takes_no_feedback(start, caplog: pytest.LogCaptureFixture) -> None:
    """A write refused by the database (a fault, not an outage: retrying would fail again) is
    dropped, and feedback for its decision is NOT_FOUND rather than acknowledged."""
    server = start(log_flush_seconds=30.0)  # written at the flush, with the flush's marker
    request = pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": {"age": 30}}))
    server.stub.Decide(request)
    server.service.log.flush()
    with server.service.engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_per_customer ON decisions (customer_id)")
    try:
        response = server.stub.Decide(request)
        try:
            server.service.log.flush()
        except Exception as exc:  # the write failed at this flush, and says so
            assert "unique" in str(exc).lower(), exc
        else:  # the writer thread took the decision before the flush was asked for: it said so in the log
            failed = [r for r in caplog.records if r.getMessage() == "decision log write failed"]
            assert failed and "unique" in str(failed[-1].exc_info[1]).lower(), caplog.text
    finally:
        with server.service.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX one_per_customer")
    assert server.service.log.available  # a fault is not an outage
    with pytest.raises(grpc.RpcError) as raised:
        server.stub.Feedback(
            pb.FeedbackRequest(
                event_id="e", decision_id=response.decision_id, offer_id=response.offers[0].offer_id, outcome=pb.OUTCOME_ACCEPTED
            )
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("order", [("accepted", "rejected"), ("rejected", "accepted")])
def test_acceptance_outranks_rejection_in_any_order(server: Running, order) -> None:
    response = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": {"age": 30}})))
    outcomes = {"accepted": pb.OUTCOME_ACCEPTED, "rejected": pb.OUTCOME_REJECTED}
    replies = [
        server.stub.Feedback(
            pb.FeedbackRequest(
                event_id=f"e-{o}", decision_id=response.decision_id, offer_id=response.offers[0].offer_id, outcome=outcomes[o]
            )
        )
        for o in order
    ]
    assert replies[-1].reward == 1.0 or replies[0].reward == 1.0
    assert (
        server.stub.Feedback(
            pb.FeedbackRequest(
                event_id="e-again",
                decision_id=response.decision_id,
                offer_id=response.offers[0].offer_id,
                outcome=pb.OUTCOME_CLICKED,
            )
        ).applied
        is False
    )


def test_an_absurd_weight_cannot_break_propensities(start, tmp_path: Path) -> None:
    server = start(
        policies=policy_dir(
            tmp_path,
            """
        - id: spend
          type: weight
          applies_to: {offers: [alpha]}
          weight: customer.age * 1e290
    """,
        )
    )
    # context numbers are within ±2^53, but a rule can still compute an absurd weight (1e305)
    response = server.stub.Decide(
        pb.DecideRequest(
            customer_id="c", channel="web", limit=3, context=struct({"customer": {"age": 1e15, "segment": "a", "risk": False}})
        )
    )
    assert all(0 < o.propensity <= 1 for o in response.offers)


def test_negative_estimates_do_not_turn_value_upside_down() -> None:
    learner = LinearBandit(seed=1, prior=0.0, forget=1.0)  # without forgetting the two learn exactly alike
    for _ in range(30):
        learner.update("big", {}, -0.2)
        learner.update("small", {}, -0.2)
    draw = learner.pull(["big", "small"], {}, weights=[100.0, 1.0])
    assert draw.scores[0] == draw.scores[1] < 0  # equally bad, whatever their value


def test_estimates_below_zero_keep_their_order_with_value_weights() -> None:
    learner = LinearBandit(seed=1, prior=0.0)
    for _ in range(30):
        learner.update("poor", {}, -0.1)
        learner.update("worse", {}, -0.3)
        learner.update("good", {}, 0.2)
    for weights in ([1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [1.0, 7.0, 3.0], [7.0, 1.0, 3.0]):
        draw = learner.pull(["poor", "worse", "good"], {}, weights=weights)
        assert draw.scores[2] > draw.scores[0] > draw.scores[1], (weights, draw.scores)  # never tied at 0
        assert draw.probabilities[0] > draw.probabilities[1]  # exploration sees the order too


def test_one_absurd_number_does_not_ruin_a_features_scaling() -> None:
    f = Featurizer(n_features=16)
    for age in (20.0, 40.0, 60.0):
        f.learn_one({"age": age})
    before = f.transform_one({"age": 50.0})
    f.learn_one({"age": 1e308})
    after = f.transform_one({"age": 50.0})
    assert np.all(np.isfinite(after)) and not np.allclose(before, 0)


def test_an_impossible_occurred_at_is_invalid_argument(server: Running) -> None:
    response = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": {"age": 30}})))
    with pytest.raises(grpc.RpcError) as raised:
        server.stub.Feedback(
            pb.FeedbackRequest(
                event_id="e",
                decision_id=response.decision_id,
                offer_id=response.offers[0].offer_id,
                outcome=pb.OUTCOME_CLICKED,
                occurred_at=timestamp_pb2.Timestamp(seconds=-(10**12)),
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "occurred_at" in raised.value.details()


@pytest.mark.parametrize(
    ("policies", "message"),
    [
        ("  - {id: s, type: suppression, days: 10000000}\n", "less than or equal to 3650"),
        ("  - {id: c, type: contact_cap, max: 1, window: .nan}\n", "must be longer than zero"),
        ("  - {id: b, type: budget, max: 1, applies_to: {channels: [web]}}\n", "cannot be restricted to channels"),
    ],
)
def test_policy_values_that_cannot_work_are_refused(policies: str, message: str) -> None:
    assert any(message in m for m in refused(BASE + "policies:\n" + policies))


def test_a_field_below_a_declared_leaf_is_refused() -> None:
    text = BASE.replace("  customer.risk: bool\n", "  customer.risk: bool\n  customer.age.years: number\n")
    assert any("cannot be below it" in m for m in refused(text))


def test_offers_may_be_named_in_any_script(start, tmp_path: Path) -> None:
    server = start(
        policies=policy_dir(
            tmp_path,
            """
        - id: by-group
          type: eligibility
          rule: offer.name != ""
    """,
            offers="""
        - {id: stars, name: "Étoiles ✨ 星", channels: [web], tags: ["🎁"]}
    """,
        )
    )
    assert "stars" in shown(decide(server, limit=10))


def test_a_bad_item_costs_only_itself_not_its_batch(start) -> None:
    """One decision the database refuses, written in one transaction with others: the others
    are written all the same (each item is retried on its own)."""
    server = start(log_flush_seconds=30.0, log_batch_size=10_000)  # one batch, written at the flush
    context = struct({"customer": {"age": 30}})
    server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=context))
    server.service.log.flush()
    with server.service.engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_per_customer ON decisions (customer_id)")
    try:
        bad = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=context))
        good = [server.stub.Decide(pb.DecideRequest(customer_id=f"d-{i}", channel="web", context=context)) for i in range(5)]
        server.service.log.flush()
    finally:
        with server.service.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX one_per_customer")
    assert server.service.store.find_decision(bad.decision_id) is None
    assert all(server.service.store.find_decision(g.decision_id) is not None for g in good)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_in_the_context_is_refused(server: Running, value: str) -> None:
    context = struct({"customer": {"age": 30, "value": {"clv": float(value)}}})
    with pytest.raises(grpc.RpcError) as raised:
        server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=context))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.customer.value.clv" in raised.value.details() and "finite" in raised.value.details()
