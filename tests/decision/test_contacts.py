"""Contact history summaries and offer counters: what caps, suppressions and budgets count."""

from __future__ import annotations

from nba.decision.contacts import ContactHistory, ContactSummary, OfferCounters
from nba.policy.rules import NEVER_DAYS
from nba.records import ContactEvent

DAY = 86400.0
NOW = 1_800_000_000.0


def event(days_ago: float, kind: str, offer: str = "a", group: str = "g", channel: str = "web") -> ContactEvent:
    return ContactEvent("c", NOW - days_ago * DAY, kind, offer, group, channel)


def test_counts_by_offer_group_channel_and_customer_within_a_window() -> None:
    events = [event(10, "impressed"), event(3, "impressed"), event(2, "impressed", "b"), event(1, "impressed", "x", "h", "app")]
    summary = ContactSummary(events, NOW, "web", [("impressed", 7 * DAY)])
    assert summary.count("impressed", 7 * DAY, "offer", "a", "g") == 1
    assert summary.count("impressed", 7 * DAY, "group", "a", "g") == 2
    assert summary.count("impressed", 7 * DAY, "channel", "a", "g") == 2
    assert summary.count("impressed", 7 * DAY, "customer", "a", "g") == 3
    assert summary.count("clicked", 7 * DAY, "offer", "a", "g") == 0  # not a counted window


def test_contacts_variables_count_the_whole_history_and_days_since() -> None:
    summary = ContactSummary([event(10, "impressed"), event(4, "accepted")], NOW, "web", [])
    assert summary.offers["a"]["impressed"] == 1.0 and summary.offers["a"]["accepted"] == 1.0
    assert summary.offers["a"]["days_since_accepted"] == 4.0
    assert summary.offers["a"]["days_since_rejected"] == NEVER_DAYS
    assert summary.groups["g"]["impressed"] == 1.0


def test_suppression_after_a_rejection_and_after_ignored_impressions() -> None:
    rejected = ContactSummary([event(5, "rejected")], NOW, "web", [])
    assert rejected.suppressed_until("rejected", 3, 7, "offer", "a", "g") == NOW + 2 * DAY
    assert rejected.suppressed_until("rejected", 3, 5, "offer", "a", "g") is None
    assert rejected.suppressed_until("rejected", 3, 7, "offer", "b", "g") is None
    assert rejected.suppressed_until("rejected", 3, 7, "group", "b", "g") == NOW + 2 * DAY

    ignored = [event(3, "impressed"), event(2, "impressed"), event(1, "impressed")]
    assert ContactSummary(ignored, NOW, "web", []).suppressed_until("ignored", 3, 7, "offer", "a", "g") == NOW + 6 * DAY
    answered = ignored[:2] + [event(1.5, "clicked"), ignored[2]]
    assert ContactSummary(answered, NOW, "web", []).suppressed_until("ignored", 3, 7, "offer", "a", "g") is None


def test_history_loads_each_customer_once_and_records_for_those_in_memory() -> None:
    loads: list[str] = []

    def loader(customer_id: str, since: float) -> list[ContactEvent]:
        loads.append(customer_id)
        return [ContactEvent(customer_id, NOW - DAY, "impressed", "a", "g", "web")]

    history = ContactHistory(loader, horizon_seconds=7 * DAY, max_customers=2)
    assert len(history.events("c1", NOW)) == 1
    history.record([ContactEvent("c1", NOW, "clicked", "a", "g", "web"), ContactEvent("c9", NOW, "clicked", "a", "g", "web")])
    assert [e.kind for e in history.events("c1", NOW)] == ["impressed", "clicked"]
    assert loads == ["c1"]  # c9 was not loaded to record: its history comes from the log when needed
    assert history.events("c1", NOW + 7 * DAY)[0].kind == "clicked"  # the old impression left the horizon
    history.events("c2", NOW)
    history.events("c3", NOW)
    assert len(history) == 2  # least recently seen customer dropped


def test_offer_counters_by_day_and_in_total() -> None:
    counters = OfferCounters()
    counters.add("a", "accepted", NOW - 2 * DAY)
    counters.add("a", "accepted", NOW - 60)
    counters.add("a", "accepted", NOW, n=2)
    assert counters.since("a", "accepted", NOW - 3600) == 3
    assert counters.total("a", "accepted") == 4
    counters.load([("a", "accepted", 0, 10), ("a", "accepted", int(NOW // 900), 2)], recent_since=NOW - 48 * 3600)
    assert counters.total("a", "accepted") == 12 and counters.since("a", "accepted", NOW - 3600) == 2
