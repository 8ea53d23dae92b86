"""Computed attributes on their own: definitions read and refused, aggregates kept on every
event and exact at any later read (a window expires by itself), late and out-of-order events
placed by time, equal times ordered by event id, and the state round-tripping through JSON."""

from __future__ import annotations

import json
import random

import pytest

from nba.errors import InvalidArgument
from nba.policy.profile import parse
from nba.profiles.computed import State, contribution, matches

DAY = 86400.0
T0 = 1_800_000_000.0


def state(line: str) -> State:
    return State(parse("attribute", line))


def feed(s: State, events: list[tuple[float, str, dict]]) -> State:
    for at, event_id, event in events:
        counts, value = contribution(s.attribute, event)
        if matches(s.attribute, event.get("type", "")) and counts:
            s.add(at, event_id, value)
    return s


def order(amount: float, source: str = "web") -> dict:
    return {"type": "order", "source": source, "properties": {"amount": amount}}


def test_a_window_is_exact_at_any_later_read_not_only_at_the_next_event() -> None:
    spend = feed(state("sum(order.amount) over 7d"), [(T0, "e1", order(10.0)), (T0 + 2 * DAY, "e2", order(5.0))])
    assert spend.value(T0 + 2 * DAY) == 15.0
    assert spend.value(T0 + 7 * DAY - 1) == 15.0  # (now - 7d, now]: the first order is still inside
    assert spend.value(T0 + 7 * DAY) == 5.0  # and leaves exactly 7 days after it
    assert spend.value(T0 + 9 * DAY) == 0.0  # nothing left: a sum of nothing
    count = feed(state("count(order) over 7d"), [(T0, "e1", order(1.0))])
    assert (count.value(T0 + 7 * DAY - 1), count.value(T0 + 7 * DAY)) == (1, 0)
    avg = feed(state("avg(order.amount) over 7d"), [(T0, "e1", order(1.0))])
    assert avg.value(T0 + 8 * DAY) is None  # the mean of nothing is not zero


def test_late_and_out_of_order_events_are_placed_by_their_time() -> None:
    events = [(T0 + i * 3600.0, f"e{i:02d}", order(float(i))) for i in range(48)]
    in_order = feed(state("sum(order.amount) over 1d"), events)
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    out_of_order = feed(state("sum(order.amount) over 1d"), shuffled)
    # (reads come at now, never before the newest event less the clock skew)
    for now in (T0 + 47 * 3600.0, T0 + 50.5 * 3600.0, T0 + 60 * 3600.0, T0 + 80 * 3600.0):
        assert (
            in_order.value(now)
            == out_of_order.value(now)
            == sum(float(i) for i in range(48) if now - DAY < T0 + i * 3600.0 <= now)
        )
    # an event too old for any window from now on is not kept
    late = feed(state("count(order) over 1d"), [(T0 + 10 * DAY, "new", order(1.0)), (T0, "old", order(1.0))])
    assert late.dump() == {"t": [T0 + 10 * DAY], "newest": T0 + 10 * DAY}  # a count keeps times alone


def test_last_and_first_break_ties_by_event_id_whatever_the_arrival_order() -> None:
    moods = [
        (T0, "b", {"type": "contact", "properties": {"sentiment": "angry"}}),
        (T0, "a", {"type": "contact", "properties": {"sentiment": "calm"}}),
        (T0 - DAY, "z", {"type": "contact", "properties": {"sentiment": "happy"}}),
    ]
    for arrival in (moods, moods[::-1], [moods[1], moods[2], moods[0]]):
        last = feed(state("last(contact.sentiment)"), arrival)
        first = feed(state("first(contact.sentiment) over 30d"), arrival)
        assert (last.value(T0), first.value(T0)) == ("angry", "happy")


def test_distinct_min_max_days_since_and_filters() -> None:
    events = [
        (T0, "e1", order(30.0, "web")),
        (T0 + DAY, "e2", order(250.0, "app")),
        (T0 + 2 * DAY, "e3", order(5.0, "web")),
        (T0 + 3 * DAY, "e4", {"type": "complaint", "source": "call_center", "properties": {}}),
    ]
    assert feed(state("distinct(*.source)"), events).value(T0 + 3 * DAY) == ["app", "call_center", "web"]
    assert feed(state("distinct_count(order.source) over 2d"), events).value(T0 + 2 * DAY) == 2
    assert feed(state("min(order.amount)"), events).value(T0) == 5.0
    assert feed(state("max(order.amount) over 2d"), events).value(T0 + 2 * DAY) == 250.0
    assert feed(state("days_since(order)"), events).value(T0 + 4.5 * DAY) == pytest.approx(2.5)
    assert feed(state("days_since(order)"), []).value(T0) is None
    big = feed(state("count(order) over 30d where event.properties.amount >= 100.0"), events)
    assert big.value(T0 + 3 * DAY) == 1
    # an event without a number where one is read does not count
    assert feed(state("sum(order.amount)"), [(T0, "x", {"type": "order", "properties": {"amount": "lots"}})]).value(T0) == 0.0


@pytest.mark.parametrize(
    "line",
    ["sum(order.amount) over 7d", "count(order)", "distinct(*.source) over 30d", "last(contact.sentiment)", "max(order.amount)"],
)
def test_the_state_round_trips_through_json(line: str) -> None:
    events = [
        (
            T0 + i * 7000.0,
            f"e{i}",
            {
                "type": "order" if i % 3 else "contact",
                "source": "web" if i % 2 else "app",
                "properties": {"amount": float(i), "sentiment": f"s{i % 4}"},
            },
        )
        for i in range(40)
    ]
    for kind in ("order", "contact"):
        original = feed(state(line.replace("order", kind, 1) if kind == "contact" and "contact" not in line else line), events)
        restored = State.load(original.attribute, json.loads(json.dumps(original.dump(), allow_nan=False)))
        for now in (T0 + 40 * 7000.0, T0 + 3 * DAY, T0 + 40 * DAY):
            assert restored.value(now) == original.value(now)


def test_a_window_stores_what_its_function_reads_and_the_older_form_still_loads() -> None:
    events = [(T0, "b", order(3.0)), (T0, "a", order(4.0)), (T0 + 60.0, "c", order(5.0))]
    assert feed(state("sum(order.amount) over 7d"), events).dump() == {
        "t": [T0, T0, T0 + 60.0],
        "v": [4.0, 3.0, 5.0],
        "newest": T0 + 60.0,
    }
    first = feed(state("first(order.amount) over 7d"), events)
    assert first.dump()["e"] == ["a", "b", "c"]  # ties broken by event id: first and last keep them
    assert first.value(T0 + 60.0) == 4.0
    # the form stored before: (time, event id, value) items
    older = State.load(
        state("sum(order.amount) over 7d").attribute, {"items": [[T0, "a", 4.0], [T0 + 60.0, "c", 5.0]], "newest": T0 + 60.0}
    )
    assert older.value(T0 + 60.0) == 9.0
    older.add(T0 + 120.0, "d", 1.0)
    assert older.dump() == {"t": [T0, T0 + 60.0, T0 + 120.0], "v": [4.0, 5.0, 1.0], "newest": T0 + 120.0}


def test_a_stored_state_is_written_back_as_read_until_used() -> None:
    stored = {"t": [T0], "v": [2.0], "newest": T0}
    loaded = State.load(state("sum(order.amount) over 7d").attribute, stored)
    assert loaded.dump() is stored  # untouched: not parsed, not rebuilt
    assert loaded.value(T0) == 2.0
    assert loaded.dump() == stored and loaded.dump() is not stored


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("total(order.amount)", "unknown function 'total'"),
        ("sum(order)", r"sum needs a property: sum\(order.PROPERTY\)"),
        ("count(order.amount)", r"count counts events, not a property: count\(order\)"),
        ("sum(order.amount) over 7days", "over: '7days' is not a window like 30m, 24h, 7d or 2w"),
        ("days_since(order) over 7d", "days_since is over all time"),
        ("count(order) where event.nope(", "where: "),
        ("orders in the last week", "is not FUNCTION"),
    ],
)
def test_a_definition_that_cannot_be_read_is_refused_naming_the_attribute(line: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        parse("spend", line)
    assert caught.value.field == "profile.computed.spend"


@pytest.mark.parametrize("line", ["count(order)", "sum(order.amount) over 7d"])
def test_an_empty_state_is_strict_json(line: str) -> None:
    """PostgreSQL's JSON has no infinity: a state that has seen nothing says so with null."""
    empty = state(line)
    restored = State.load(empty.attribute, json.loads(json.dumps(empty.dump(), allow_nan=False)))
    assert restored.value(T0) == empty.value(T0)
    restored.add(T0, "e1", 1.0)
    assert restored.value(T0) == 1  # count or sum of one event of 1.0


def test_distinct_values_are_one_whichever_way_they_came_and_empty_text_says_nothing() -> None:
    events = [
        (T0, "e1", {"type": "order", "source": "", "properties": {"size": 3}}),  # an import's integer
        (T0 + 1, "e2", {"type": "order", "source": "web", "properties": {"size": 3.0}}),  # gRPC's Struct: a double
        (T0 + 2, "e3", {"type": "order", "source": " ", "properties": {"size": "3"}}),
        (T0 + 3, "e4", {"type": "order", "source": "app", "properties": {"size": True}}),
    ]
    assert feed(state("distinct(order.size)"), events).value(T0 + 3) == ["3", "true"]
    assert feed(state("distinct(*.source)"), events).value(T0 + 3) == ["app", "web"]  # no "" for a missing source
    assert feed(state("last(order.source)"), events[:3]).value(T0 + 3) == "web"
