"""Screening on its own: one verdict per offer on the channel, with the reason and the policy
that filtered it, in the documented order (status and dates, then rules, then contact caps,
suppressions and budgets), and the channel's fallback. A small set built from YAML text; no
server, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nba.decision.contacts import ContactSummary
from nba.decision.screening import Verdict, screen
from nba.policy.loading import parse_policy_set
from nba.policy.policy_set import PolicySet
from nba.records import ContactEvent

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0

FILES = {
    "channels.yaml": """
settings: {timezone: UTC}
channels: [web, app]
groups:
  cards: {lever: 1.0}
  service: {lever: 1.0}
""",
    "schema.yaml": """
schema:
  customer.age: {type: number, min: 0, max: 120}
  customer.flags.fraud_risk: bool
""",
    "offers.yaml": """
offers:
  - {id: gold, name: Gold card, group: cards, channels: [web, app], value: 100.0, eligibility: customer.age >= 25}
  - {id: silver, name: Silver card, group: cards, channels: [web], value: 50.0}
  - {id: launch, name: Launch offer, group: cards, channels: [web], value: 80.0, valid_from: 2026-07-01T00:00:00Z}
  - {id: retired, name: Old offer, group: cards, channels: [web], value: 10.0, valid_until: 2026-05-01T00:00:00Z}
  - {id: draft, name: Draft offer, group: cards, channels: [web], value: 10.0, status: draft}
  - {id: help, name: Help, group: service, channels: [web, app], value: 1.0, fallback: true}
""",
    "policies.yaml": """
policies:
  - {id: no-fraud, type: eligibility, applies_to: {groups: [cards]}, rule: '!customer.flags.fraud_risk'}
  - {id: twice-a-week, type: contact_cap, applies_to: {groups: [cards]}, max: 2, window: 7d, counts: impressed, per: offer}
  - {id: cool-off, type: suppression, applies_to: {groups: [cards]}, after: rejected, days: 30}
""",
}


def policy_set() -> PolicySet:
    return parse_policy_set(FILES, NOW)


def verdicts(features: dict[str, object], events: list[ContactEvent] | None = None, channel: str = "web") -> dict[str, Verdict]:
    ps = policy_set()
    summary = ContactSummary(events or [], NOW.timestamp(), channel, ps.cap_windows) if events is not None else None
    screening = screen(ps, channel, features, "c-1", NOW, summary)
    return {v.offer.id: v for v in screening.verdicts}


def shown(offer: str, days_ago: float, kind: str = "impressed") -> ContactEvent:
    return ContactEvent("c-1", NOW.timestamp() - days_ago * DAY, kind, offer, "cards", "web")


def test_every_offer_on_the_channel_gets_a_verdict_and_dates_and_status_come_first() -> None:
    found = verdicts({"customer.age": 40.0, "customer.flags.fraud_risk": False})
    assert sorted(found) == ["draft", "gold", "launch", "retired", "silver"]  # the fallback apart
    assert found["gold"].eligible and found["silver"].eligible
    assert (found["launch"].eligible, found["launch"].reason) == (False, "not_yet_valid")
    assert (found["retired"].eligible, found["retired"].reason) == (False, "expired")
    assert (found["draft"].eligible, found["draft"].reason) == (False, "status")
    assert sorted(verdicts({"customer.age": 40.0}, channel="app")) == ["gold"]  # only the app's offers


def test_a_rule_filters_with_the_policy_that_says_so() -> None:
    young = verdicts({"customer.age": 20.0, "customer.flags.fraud_risk": False})
    assert (young["gold"].eligible, young["gold"].reason) == (False, "eligibility")  # the offer's own rule
    assert young["silver"].eligible
    fraud = verdicts({"customer.age": 40.0, "customer.flags.fraud_risk": True})
    assert {(o, fraud[o].reason, fraud[o].policy) for o in ("gold", "silver")} == {
        ("gold", "eligibility", "no-fraud"),
        ("silver", "eligibility", "no-fraud"),
    }


def test_contact_caps_and_suppressions_read_the_contact_summary() -> None:
    adult = {"customer.age": 40.0, "customer.flags.fraud_risk": False}
    capped = verdicts(adult, [shown("gold", 1), shown("gold", 3)])
    assert (capped["gold"].eligible, capped["gold"].reason, capped["gold"].policy) == (False, "contact_cap", "twice-a-week")
    assert capped["silver"].eligible  # per offer
    assert verdicts(adult, [shown("gold", 1), shown("gold", 8)])["gold"].eligible  # one left the window
    rejected = verdicts(adult, [shown("silver", 10, "rejected")])
    assert (rejected["silver"].reason, rejected["silver"].policy) == ("suppression", "cool-off")
    assert verdicts(adult, [shown("silver", 31, "rejected")])["silver"].eligible  # the 30 days are over
    # without a summary (the what-if preview) contact policies are skipped
    assert verdicts(adult, None)["gold"].eligible


def test_a_rule_is_judged_before_contact_policies() -> None:
    both = verdicts({"customer.age": 20.0, "customer.flags.fraud_risk": False}, [shown("gold", 1), shown("gold", 2)])
    assert both["gold"].reason == "eligibility"


def test_the_fallback_has_its_own_verdict() -> None:
    screening = screen(policy_set(), "web", {"customer.age": 20.0, "customer.flags.fraud_risk": True}, "c-1", NOW)
    assert screening.eligible == []
    assert screening.fallback is not None and screening.fallback.offer.id == "help" and screening.fallback.eligible


def test_a_later_clock_moves_the_dates() -> None:
    ps = policy_set()
    later = screen(ps, "web", {"customer.age": 40.0, "customer.flags.fraud_risk": False}, "c-1", NOW + timedelta(days=31))
    assert {v.offer.id: v.eligible for v in later.verdicts}["launch"] is True
