"""Each policy kind doing its job, through a real server, with a clock the test controls."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import ManualClock, Running, struct

from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb

BASE = """
settings: {timezone: UTC}
channels: [web]
schema:
  customer.age: {type: number, min: 0, max: 120}
  customer.segment: {type: string, values: [a, b]}
  customer.risk: bool
offers:
  - {id: alpha, name: Alpha, channels: [web], value: 10}
  - {id: bravo, name: Bravo, channels: [web], value: 10}
  - {id: charlie, name: Charlie, channels: [web], value: 10}
  - {id: help, name: Help, channels: [web], fallback: true, value: 0}
"""


def policy_dir(tmp_path: Path, policies: str = "", offers: str = "", name: str = "policies") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    text = BASE + textwrap.indent(textwrap.dedent(offers), "  ")
    if policies:
        text += "policies:\n" + textwrap.indent(textwrap.dedent(policies), "  ")
    (folder / "set.yaml").write_text(text)
    return folder


def decide(
    server: Running, age: float = 30, limit: int = 3, explain: bool = False, customer_id: str = "c-1", risk: bool = False
) -> pb.DecideResponse:
    context = struct({"customer": {"age": age, "segment": "a", "risk": risk}})
    return server.stub.Decide(
        pb.DecideRequest(customer_id=customer_id, channel="web", context=context, limit=limit, explain=explain)
    )


def shown(response: pb.DecideResponse) -> set[str]:
    return {o.offer_id for o in response.offers}


def tell(server: Running, response: pb.DecideResponse, offer_id: str, outcome: int, n: list[int] = [0]) -> None:  # noqa: B006
    n[0] += 1
    server.stub.Feedback(
        pb.FeedbackRequest(event_id=f"ev-{n[0]}", decision_id=response.decision_id, offer_id=offer_id, outcome=outcome)
    )


def reason_for(response: pb.DecideResponse, offer_id: str) -> pb.OfferExplanation:
    return next(e for e in response.explanation.offers if e.offer_id == offer_id)


def test_an_ineligible_offer_is_never_returned(start, tmp_path: Path) -> None:
    server = start(
        policies=policy_dir(
            tmp_path,
            """
        - id: adults
          type: eligibility
          applies_to: {offers: [alpha]}
          rule: customer.age >= 18
    """,
        )
    )
    assert not any("alpha" in shown(decide(server, age=16)) for _ in range(100))
    assert all("alpha" in shown(decide(server, age=30)) for _ in range(20))  # limit 3 of 3 eligible
    why = reason_for(decide(server, age=16, explain=True), "alpha")
    assert (why.eligible, why.reason, why.policy) == (False, "eligibility", "adults")


def test_a_capped_offer_stops_after_n_impressions_and_comes_back_after_its_window(start, tmp_path: Path) -> None:
    clock = ManualClock()
    server = start(
        clock=clock,
        policies=policy_dir(
            tmp_path,
            """
        - id: twice-a-day
          type: contact_cap
          applies_to: {offers: [alpha]}
          max: 2
          window: 1d
          counts: impressed
    """,
        ),
    )
    for _ in range(2):
        response = decide(server)
        assert "alpha" in shown(response)
        tell(server, response, "alpha", pb.OUTCOME_IMPRESSED)
        clock.advance(hours=1)
    capped = decide(server, explain=True)
    assert "alpha" not in shown(capped)
    why = reason_for(capped, "alpha")
    assert (why.reason, why.policy) == ("contact_cap", "twice-a-day")
    assert "2 impressed per offer within 1d (max 2)" in why.detail
    assert "alpha" in shown(decide(server, customer_id="someone-else"))  # caps are per customer
    clock.advance(hours=22, seconds=1)  # the first impression leaves the window
    assert "alpha" in shown(decide(server))


def test_contact_history_survives_a_restart(start, tmp_path: Path) -> None:
    clock = ManualClock()
    policies = policy_dir(
        tmp_path,
        """
        - id: once
          type: contact_cap
          applies_to: {offers: [alpha]}
          max: 1
          window: 7d
    """,
    )
    server = start(clock=clock, policies=policies)
    response = decide(server)
    tell(server, response, "alpha", pb.OUTCOME_IMPRESSED)
    server.stop()
    again = start(clock=clock, policies=policies)
    assert not any("alpha" in shown(decide(again)) for _ in range(10))


def test_a_rejected_offer_is_suppressed_for_d_days(start, tmp_path: Path) -> None:
    clock = ManualClock()
    server = start(
        clock=clock,
        policies=policy_dir(
            tmp_path,
            """
        - id: rest-after-no
          type: suppression
          after: rejected
          days: 7
    """,
        ),
    )
    response = decide(server)
    tell(server, response, "alpha", pb.OUTCOME_REJECTED)
    for _ in range(6):
        clock.advance(days=1)
        result = decide(server, explain=True)
        assert shown(result) == {"bravo", "charlie"}
        assert reason_for(result, "alpha").policy == "rest-after-no"
    clock.advance(days=1, seconds=1)
    assert "alpha" in shown(decide(server))


def test_ignored_impressions_suppress_until_a_response(start, tmp_path: Path) -> None:
    clock = ManualClock()
    server = start(
        clock=clock,
        policies=policy_dir(
            tmp_path,
            """
        - id: ignored-twice
          type: suppression
          after: ignored
          ignored: 2
          days: 3
    """,
        ),
    )
    for _ in range(2):
        tell(server, decide(server), "bravo", pb.OUTCOME_IMPRESSED)
        clock.advance(minutes=5)
    assert "bravo" not in shown(decide(server))
    clock.advance(days=3)
    assert "bravo" in shown(decide(server))


def test_a_budget_stops_an_offer_for_the_day(start, tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 24, 9, 0, tzinfo=UTC))
    server = start(
        clock=clock,
        policies=policy_dir(
            tmp_path,
            """
        - id: three-a-day
          type: budget
          applies_to: {offers: [alpha]}
          max: 3
          counts: accepted
          period: day
    """,
        ),
    )
    for _ in range(3):
        response = decide(server)
        tell(server, response, "alpha", pb.OUTCOME_ACCEPTED)
    spent = decide(server, explain=True, customer_id="another")
    assert "alpha" not in shown(spent)
    assert (reason_for(spent, "alpha").reason, reason_for(spent, "alpha").detail) == ("budget", "3 accepted today (max 3)")
    clock.set(datetime(2026, 11, 25, 0, 0, 1, tzinfo=UTC))
    assert "alpha" in shown(decide(server, customer_id="another"))


def test_pacing_spreads_a_daily_budget_over_the_day(start, tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 24, 1, 0, tzinfo=UTC))
    server = start(
        clock=clock,
        policies=policy_dir(
            tmp_path,
            """
        - id: paced
          type: budget
          applies_to: {offers: [alpha]}
          max: 240
          counts: decided
          period: day
          pacing: even
    """,
        ),
    )
    # At 01:00, 1/24 of 240 (10) plus a burst of 12 (5%) may be spent: 22 decisions.
    early = sum("alpha" in shown(decide(server, customer_id=f"c-{i}")) for i in range(40))
    assert early == 22
    response = decide(server, explain=True)
    assert reason_for(response, "alpha").reason == "pacing"
    clock.set(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))  # by noon: 120 + 12
    later = sum("alpha" in shown(decide(server, customer_id=f"d-{i}")) for i in range(150))
    assert later == 132 - 22
    clock.set(datetime(2026, 11, 24, 23, 59, tzinfo=UTC))
    rest = sum("alpha" in shown(decide(server, customer_id=f"e-{i}")) for i in range(150))
    assert 22 + later + rest == 240  # never more than the day's budget


def test_expired_paused_draft_and_out_of_schedule_offers_never_appear(start, tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))  # Tuesday noon
    server = start(
        clock=clock,
        policies=policy_dir(
            tmp_path,
            offers="""
        - {id: old, name: Old, channels: [web], valid_until: 2026-11-01}
        - {id: future, name: Future, channels: [web], valid_from: 2026-12-01}
        - {id: paused, name: Paused, channels: [web], status: paused}
        - {id: drafted, name: Drafted, channels: [web], status: draft}
        - {id: gone, name: Gone, channels: [web], status: expired}
        - {id: weekend, name: Weekend, channels: [web], schedule: {days: [sat, sun]}}
        - {id: mornings, name: Mornings, channels: [web], schedule: {hours: ["06:00-10:00"]}}
    """,
        ),
    )
    hidden = {"old", "future", "paused", "drafted", "gone", "weekend", "mornings"}
    for _ in range(30):
        assert not shown(decide(server, limit=20)) & hidden
    reasons = {e.offer_id: e.reason for e in decide(server, explain=True).explanation.offers}
    assert {k: reasons[k] for k in hidden} == {
        "old": "expired",
        "future": "not_yet_valid",
        "paused": "status",
        "drafted": "status",
        "gone": "status",
        "weekend": "schedule",
        "mornings": "schedule",
    }
    clock.set(datetime(2026, 11, 28, 8, 0, tzinfo=UTC))  # Saturday morning
    assert {"weekend", "mornings"} <= shown(decide(server, limit=20))


def test_fallback_when_nothing_else_is_eligible(start, tmp_path: Path) -> None:
    server = start(
        policies=policy_dir(
            tmp_path,
            """
        - id: adults
          type: eligibility
          rule: customer.age >= 18
    """,
        )
    )
    response = decide(server, age=12)
    assert [(o.offer_id, o.fallback, o.propensity) for o in response.offers] == [("help", True, 1.0)]


def train_everyone_equally(server: Running, rounds: int = 40) -> None:
    """Every offer gets the same evidence: one acceptance in three."""
    for i in range(rounds):
        response = decide(server, limit=3, customer_id=f"t-{i}")
        for offer in response.offers:
            tell(server, response, offer.offer_id, pb.OUTCOME_ACCEPTED if i % 3 == 0 else pb.OUTCOME_IMPRESSED)


def mean_probability(server: Running, offer_id: str, n: int = 20) -> float:
    return float(
        np.mean([reason_for(decide(server, explain=True, customer_id=f"m-{i}"), offer_id).probability for i in range(n)])
    )


def test_levers_change_the_mix_without_retraining(start, tmp_path: Path) -> None:
    server = start(policies=policy_dir(tmp_path), seed=5)
    train_everyone_equally(server)
    before = mean_probability(server, "charlie")
    version_before = server.service.learning.version
    files = {
        "set.yaml": (tmp_path / "policies" / "set.yaml")
        .read_text()
        .replace(
            "{id: charlie, name: Charlie, channels: [web], value: 10}",
            "{id: charlie, name: Charlie, channels: [web], value: 10, lever: 5}",
        )
    }
    server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files)), metadata=server.auth())
    after = mean_probability(server, "charlie")
    assert server.service.learning.version == version_before  # nothing was retrained
    assert before == pytest.approx(1 / 3, abs=0.01) and after > 0.8, (before, after)
    why = reason_for(decide(server, explain=True), "charlie")
    assert why.lever == 5 and why.score == pytest.approx(why.predicted * why.value * why.lever * why.weight)


def test_context_weights_multiply_the_score(start, tmp_path: Path) -> None:
    server = start(
        policies=policy_dir(
            tmp_path,
            """
        - id: risky-first
          type: weight
          applies_to: {offers: [bravo]}
          weight: 'customer.risk ? 3.0 : 1.0'
    """,
        )
    )
    plain = reason_for(decide(server, explain=True, risk=False), "bravo")
    risky = reason_for(decide(server, explain=True, risk=True), "bravo")
    assert (plain.weight, risky.weight) == (1.0, 3.0)
    assert risky.score == pytest.approx(3 * plain.score)


def test_explain_accounts_for_every_offer(start, tmp_path: Path) -> None:
    server = start(
        policies=policy_dir(
            tmp_path,
            """
        - id: adults
          type: eligibility
          applies_to: {offers: [alpha]}
          rule: customer.age >= 18
    """,
            offers="""
        - {id: app-only, name: App only, channels: [web, app]}
    """.replace("[web, app]", "[web]"),
        )
    )
    response = decide(server, age=10, limit=2, explain=True)
    entries = {e.offer_id: e for e in response.explanation.offers}
    assert set(entries) == {"alpha", "bravo", "charlie", "help", "app-only"}
    assert entries["alpha"].reason == "eligibility" and entries["alpha"].policy == "adults"
    assert entries["help"].reason == "fallback"
    eligible = [e for e in response.explanation.offers if e.eligible]
    assert sum(e.probability for e in eligible) == pytest.approx(1.0)
    chosen = sorted((e for e in eligible if e.slot), key=lambda e: e.slot)
    assert [e.offer_id for e in chosen] == [o.offer_id for o in response.offers]
    assert [e.propensity for e in chosen] == [o.propensity for o in response.offers]
    assert chosen[0].propensity == pytest.approx(chosen[0].probability)
    assert "inverse gap weighting" in response.explanation.exploration
    assert not decide(server).HasField("explanation")


GROUPED = """
channels: [web]
schema:
  customer.age: {type: number, min: 0, max: 120}
  customer.segment: {type: string, values: [a, b]}
  customer.risk: bool
offers:
  - {id: alpha, name: Alpha, channels: [web], value: 10, group: retention}
  - {id: bravo, name: Bravo, channels: [web], value: 10, group: cross-sell}
  - {id: charlie, name: Charlie, channels: [web], value: 10}
  - {id: help, name: Help, channels: [web], fallback: true, value: 0}
"""


def grouped_files(lever: float) -> dict[str, str]:
    """The group's lever in a file read before the offers' (files are read by name)."""
    return {
        "a_groups.yaml": f"settings: {{timezone: UTC}}\ngroups:\n  retention: {{description: Keep them, lever: {lever}}}\n  cross-sell: {{}}\n",
        "b_offers.yaml": GROUPED,
    }


def test_a_group_lever_ranks_its_group_and_preview_and_evaluation_use_the_same_multiplier(start, tmp_path: Path) -> None:
    from nba.evaluation.sources import from_records
    from nba.evaluation.targets import screen_logged
    from nba.policy.loading import load_policy_set

    folder = tmp_path / "policies"
    folder.mkdir()
    for name, text in grouped_files(4.0).items():
        (folder / name).write_text(text)
    server = start(clock=ManualClock(), policies=folder, seed=11)
    response = decide(server, explain=True)
    alpha, bravo, charlie = (reason_for(response, o) for o in ("alpha", "bravo", "charlie"))
    assert (alpha.lever, bravo.lever, charlie.lever) == (4.0, 1.0, 1.0)
    assert alpha.score == pytest.approx(4 * bravo.score) and bravo.score == pytest.approx(charlie.score)
    # the ranking follows: with no evidence yet (all three alike without the lever), alpha's
    # lever alone makes it the best offer, drawn first most often
    assert alpha.probability > 1 / 3 > bravo.probability == pytest.approx(charlie.probability)
    firsts = [decide(server, limit=1, customer_id=f"c-{i}").offers[0].offer_id for i in range(300)]
    assert firsts.count("alpha") > max(firsts.count("bravo"), firsts.count("charlie")), firsts

    # The preview of a draft that turns the lever down, over those decisions (all the same
    # context, and no feedback: the model has not moved), gives the very probabilities Decide
    # gives under each set.
    server.service.log.flush()
    draft = grouped_files(0.25)
    report = server.admin.PreviewPolicySet(
        apb.PreviewPolicySetRequest(draft=apb.PolicySetDraft(files=draft), last_n=50), metadata=server.auth()
    )
    previewed = next(o for o in report.offers if o.offer_id == "alpha")
    assert previewed.live_share == pytest.approx(alpha.probability)
    server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=draft)), metadata=server.auth())
    after = decide(server, explain=True)
    turned_down = reason_for(after, "alpha")
    assert turned_down.lever == 0.25
    assert previewed.draft_share == pytest.approx(turned_down.probability) and turned_down.probability < 1 / 3

    # Offline evaluation screens a logged decision again with a set's multipliers (value x
    # offer lever x group lever x weights): the same products the decisions logged.
    server.service.log.flush()
    logged = {d.decision_id: d for d in from_records(server.service.store.recent_lines(1000))}
    for decision_id, policy_set, lever in (
        (response.decision_id, load_policy_set(folder), 4.0),
        (after.decision_id, server.service.policy_set, 0.25),
    ):
        decision = logged[decision_id]
        ids, multipliers = screen_logged(policy_set, decision)
        assert dict(zip(ids, multipliers.tolist(), strict=True)) == {"alpha": 10 * lever, "bravo": 10.0, "charlie": 10.0}
        assert dict(zip(ids, multipliers.tolist(), strict=True)) == dict(
            zip(decision.eligible, decision.multipliers.tolist(), strict=True)
        )


def test_multipliers_beyond_the_cap_rank_alike_live_in_preview_and_in_evaluation(start, tmp_path: Path) -> None:
    """value x levers past MAX_MULTIPLIER is capped by Decide; the preview and a policy set
    screened again offline must cap it the same way, or they rank differently from the live
    service (alpha's 1e8 x 100 and bravo's 1e9 both count 1e9)."""
    from nba.decision.arbitration import MAX_MULTIPLIER
    from nba.evaluation.sources import from_records
    from nba.evaluation.targets import screen_logged
    from nba.policy.loading import load_policy_set

    files = {
        "offers.yaml": GROUPED.replace(
            "{id: alpha, name: Alpha, channels: [web], value: 10, group: retention}",
            "{id: alpha, name: Alpha, channels: [web], value: 1.0e+8, lever: 100}",
        )
        .replace("value: 10, group: cross-sell", "value: 1.0e+9")
        .replace(
            "{id: charlie, name: Charlie, channels: [web], value: 10}",
            "{id: charlie, name: Charlie, channels: [web], value: 1.0e+7}",
        )
    }
    folder = tmp_path / "policies"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    server = start(clock=ManualClock(), policies=folder, seed=11)
    response = decide(server, explain=True)
    alpha, bravo, charlie = (reason_for(response, o) for o in ("alpha", "bravo", "charlie"))
    assert alpha.probability == pytest.approx(bravo.probability) and charlie.probability < alpha.probability
    server.service.log.flush()
    report = server.admin.PreviewPolicySet(
        apb.PreviewPolicySetRequest(draft=apb.PolicySetDraft(files=files), last_n=10), metadata=server.auth()
    )
    shares = {o.offer_id: o for o in report.offers}
    for offer, live in (("alpha", alpha), ("bravo", bravo), ("charlie", charlie)):
        assert shares[offer].live_share == pytest.approx(live.probability), offer
        assert shares[offer].draft_share == pytest.approx(live.probability), offer
    decision = next(d for d in from_records(server.service.store.recent_lines(10)) if d.decision_id == response.decision_id)
    ids, multipliers = screen_logged(load_policy_set(folder), decision)
    expected = {"alpha": MAX_MULTIPLIER, "bravo": MAX_MULTIPLIER, "charlie": 1e7}
    assert dict(zip(ids, multipliers.tolist(), strict=True)) == expected
    assert dict(zip(decision.eligible, decision.multipliers.tolist(), strict=True)) == expected
