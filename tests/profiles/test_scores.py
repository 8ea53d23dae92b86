"""Predictive scores: declared in the profile section, labelled without leakage (a label window
starts strictly after the moment a prediction is made; quality counts matured labels only, each
judged against the score given when the prediction was made), learned online with river, and
read by rules. End to end: a simulated population in which complaints cause churn gives a churn
score whose progressive AUC is clearly above 0.5, and a rule on it changes decisions."""

from __future__ import annotations

import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import POLICIES, ManualClock, Running, struct
from google.protobuf import timestamp_pb2

from nba.cli import main
from nba.policy.profile import ProfileSection, compile_profile
from nba.profiles.profile import Profile, TrackedEvent
from nba.profiles.scores import ScoreModel, features
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

DAY = 86400.0
T0 = 1_780_000_000.0
SECTION = {
    "event_types": {
        "complaint": {"properties": {"topic": "string"}},
        "account_closed": {"properties": {"reason": "string"}},
        "signup": {"properties": {"email": "string", "tier": "string"}},
    },
    "attributes": {"email": {"from": "signup.email", "pii": True}, "tier": {"from": "signup.tier"}},
    "computed": {"complaints_90d": "count(complaint) over 90d"},
    "scores": {"churn_risk": "predicts account_closed within 30d"},
}


def definition(**changes: object):  # type: ignore[no-untyped-def]
    compiled, problems = compile_profile(ProfileSection.model_validate({**SECTION, **changes}), "profile.yaml")
    assert problems == []
    return compiled


def event(event_id: str, event_type: str, at: float, **properties: object) -> TrackedEvent:
    return TrackedEvent(event_id, "c-1", event_type, "web", at, properties)


def test_scores_are_read_from_a_line_or_fields_and_checked() -> None:
    compiled = definition(
        scores={
            "churn_risk": "predicts account_closed within 30d",
            "premium": {"predicts": "signup", "where": 'properties.tier == "premium"', "within": "7d", "min_auc": 0.7},
        }
    )
    churn, premium = compiled.scores
    assert (churn.event, churn.horizon, churn.where, churn.min_auc) == ("account_closed", 30 * DAY, None, 0.6)
    assert (premium.event, premium.horizon, premium.min_auc) == ("signup", 7 * DAY, 0.7)
    assert "scores" in compiled.names
    bad = {
        "predicts churn within 30d": "unknown event type 'churn'",
        "account_closed in 30d": "is not 'predicts EVENT [where CONDITION] within WINDOW'",
        "predicts account_closed within soon": "scores.x.within",
        "predicts account_closed where properties.reason == within 30d": "scores.x.where",
    }
    for line, message in bad.items():
        _, problems = compile_profile(ProfileSection.model_validate({**SECTION, "scores": {"x": line}}), "profile.yaml")
        assert len(problems) == 1 and message in str(problems[0]), (line, problems)


def test_a_label_comes_only_from_what_follows_the_prediction() -> None:
    profile = Profile(definition(), "c-1", T0)
    given = iter([0.3, 0.4, 0.5, 0.6])

    def predict(name: str, x: object) -> float:
        return next(given)

    for e, when in ((event("s", "signup", T0, email="a@b.co", tier="gold"), T0), (event("c1", "complaint", T0 + DAY), T0 + DAY)):
        profile.apply(e)
        assert profile.observe(e, when, predict) == []
    held = profile.predictions["churn_risk"]
    # made at the complaint, from what the profile said then: no personal data
    assert (held.at, held.due, held.p) == (T0 + DAY, T0 + 31 * DAY, 0.4)
    assert held.x == {"complaints_90d": 1.0, "tier=gold": 1.0}
    late = event("x0", "account_closed", T0 + DAY)  # dated at the prediction's moment: it answers nothing
    profile.apply(late)
    assert profile.observe(late, T0 + 2 * DAY, predict) == [] and profile.predictions["churn_risk"] == held
    closed = event("x1", "account_closed", T0 + 20 * DAY)
    profile.apply(closed)
    (label,) = profile.observe(closed, T0 + 20 * DAY, predict)
    assert (label.y, label.p, label.x) == (True, 0.4, held.x)  # judged against the score it was given then
    assert "churn_risk" not in profile.predictions  # the next waits for another event


def test_a_horizon_passing_without_the_event_is_a_negative_label() -> None:
    profile = Profile(definition(), "c-1", T0)
    e = event("c1", "complaint", T0)
    profile.apply(e)
    profile.observe(e, T0, lambda name, x: 0.2)
    assert profile.mature(T0 + 30 * DAY - 1, lambda name, x: 0.9) == []
    (label,) = profile.mature(T0 + 31 * DAY, lambda name, x: 0.7)
    assert (label.y, label.p, label.x) == (False, 0.2, {"complaints_90d": 1.0})
    again = profile.predictions["churn_risk"]  # made anew at the horizon's end, from the profile then
    assert (again.at, again.p, again.x) == (T0 + 30 * DAY, 0.7, {"complaints_90d": 1.0})
    assert profile.predictions_due == T0 + 60 * DAY
    stored = Profile.load(definition(), profile.dump())
    assert stored.predictions == profile.predictions
    # a changed score starts afresh: its old predictions are not its own
    assert Profile.load(definition(scores={"churn_risk": "predicts account_closed within 60d"}), profile.dump()).predictions == {}


def test_quality_counts_matured_labels_and_flags_a_score_not_worth_using() -> None:
    compiled = definition()
    model = ScoreModel(compiled.scores[0])
    assert model.quality()["flagged"] and model.quality()["auc"] == 0.5
    rng = random.Random(7)
    from nba.profiles.scores import Example

    for _ in range(400):
        complaints = rng.randint(0, 4)
        churned = rng.random() < 0.1 + 0.2 * complaints
        model.learn(Example("churn_risk", {"complaints_90d": float(complaints)}, 0.1 + 0.2 * complaints, churned))
    quality = model.quality()
    assert quality["examples"] == 400 and 0.7 < quality["auc"] < 0.9 and not quality["flagged"]
    assert quality["calibration_error"] < 0.1  # the scores given were the true chances
    assert model.predict({"complaints_90d": 4.0}) > model.predict({"complaints_90d": 0.0})
    noise = ScoreModel(compiled.scores[0])
    for _ in range(400):
        noise.learn(Example("churn_risk", {}, rng.random(), rng.random() < 0.3))
    assert noise.quality()["flagged"]  # an AUC near 0.5 is below min_auc


def test_features_from_profile_values() -> None:
    assert features({"n": 3, "ok": False, "tier": "gold", "nan": float("nan"), "tags": ["a", True]}) == {
        "n": 3.0,
        "ok": 0.0,
        "tier=gold": 1.0,
        "tags=a": 1.0,
    }


PROFILE = """
profile:
  event_types:
    complaint: {properties: {topic: string}}
    account_closed: {properties: {reason: string}}
    signup: {properties: {tier: string}}
  computed:
    complaints_30d: count(complaint) over 30d   # the sample set's retention rules read it
    complaints_90d: count(complaint) over 90d
  scores:
    churn_risk:
      predicts: account_closed
      within: 30d
      min_auc: 0.6
      description: Closes the account within 30 days
      owner: retention
offers:
  - id: save-you
    name: Please stay
    group: service
    channels: [web]
    value: 500.0
    eligibility: profile.scores.churn_risk > 0.5
    treatment: {web: banner-stay}
"""
NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


@pytest.mark.slow
def test_churn_caused_by_complaints_is_learned_and_a_rule_on_the_score_changes_decisions(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    (folder / "profile.yaml").write_text(PROFILE)
    clock = ManualClock(NOON)
    server: Running = start(clock=clock, policies=folder, segment_clock_seconds=0.05)
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    rng = random.Random(11)
    learned = server.service.scores

    def examples() -> int:
        return learned.quality()["churn_risk"]["examples"]

    def settled() -> bool:
        """No prediction (nor segment) is due: the clock has matured every label up to now."""
        store = server.service.store
        with store.read() as conn:
            return not store.due_profiles(conn, clock.now(), 1)

    for cohort in range(8):  # a cohort a month: each is predicted by what the earlier ones taught
        start_at = clock.now()
        events, closures = [], []
        for n in range(60):
            customer = f"k{cohort}-{n}"
            complaints = rng.choice([0, 0, 1, 2, 3, 4])
            events.append(
                ppb.TrackRequest(event_id=f"{customer}-s", type="signup", customer_id=customer, occurred_at=stamp(start_at))
            )
            events += [
                ppb.TrackRequest(
                    event_id=f"{customer}-c{k}",
                    type="complaint",
                    customer_id=customer,
                    occurred_at=stamp(start_at - timedelta(minutes=50 - k)),
                )
                for k in range(complaints)
            ]
            if rng.random() < 0.05 + 0.22 * complaints:  # complaints cause churn
                closures.append(
                    ppb.TrackRequest(
                        event_id=f"{customer}-x",
                        type="account_closed",
                        customer_id=customer,
                        occurred_at=stamp(start_at + timedelta(days=rng.uniform(1, 25))),
                    )
                )
        assert all(not r.error_code for r in stub.TrackBatch(ppb.TrackBatchRequest(events=events)).results)
        clock.advance(days=26)
        assert all(not r.error_code for r in stub.TrackBatch(ppb.TrackBatchRequest(events=closures)).results)
        before = examples()
        clock.advance(days=5)  # the horizon passes for the others: negative labels, by the clock
        deadline = time.monotonic() + 60
        while not settled():
            assert time.monotonic() < deadline, (cohort, examples(), before, len(closures))
            time.sleep(0.05)
        assert examples() >= before + 60 - len(closures), (cohort, examples(), before, len(closures))
    quality = learned.quality()["churn_risk"]
    assert quality["examples"] >= 480 and quality["auc"] > 0.7 and not quality["flagged"], quality

    profile = stub.GetProfile(ppb.GetProfileRequest(customer_id="k7-0"), metadata=Running.auth())
    (score,) = profile.scores
    assert score.name == "churn_risk" and score.auc == pytest.approx(quality["auc"]) and not score.flagged
    # a rule on the score: customers with many complaints are offered to stay, the others are not
    fresh = []
    for customer, complaints in (("z-angry", 4), ("z-calm", 0)):
        track = [ppb.TrackRequest(event_id=f"{customer}-s", type="signup", customer_id=customer)]
        track += [
            ppb.TrackRequest(event_id=f"{customer}-c{k}", type="complaint", customer_id=customer) for k in range(complaints)
        ]
        stub.TrackBatch(ppb.TrackBatchRequest(events=track))
        reply = server.stub.Decide(
            pb.DecideRequest(
                customer_id=customer, channel="web", limit=5, explain=True, context=struct({"customer": {"age": 30}})
            )
        )
        fresh.append(next(o for o in reply.explanation.offers if o.offer_id == "save-you").eligible)
    assert fresh == [True, False], (fresh, quality)

    capsys.readouterr()
    assert main(["profiles", "scores", "--database-url", server.service.settings.database_url]) == 0
    table = capsys.readouterr().out
    assert "churn_risk" in table and "worth using" in table and "predicts account_closed within 2.592e+06s" in table
