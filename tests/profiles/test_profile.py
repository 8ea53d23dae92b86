"""A profile on its own: events checked against the declared types, attributes kept (latest or
first, by event time), computed attributes maintained, personal data out of the learner's view,
merges by replay giving what one profile would have, and the JSON round trip."""

from __future__ import annotations

import json
import random
import re

import pytest

from nba.errors import InvalidArgument
from nba.policy.profile import ProfileSection, compile_profile
from nba.profiles.profile import Profile, TrackedEvent, check

DAY = 86400.0
T0 = 1_800_000_000.0

SECTION = ProfileSection.model_validate(
    {
        "event_types": {
            "order": {"properties": {"amount": "number", "status": "string", "gift": "bool"}},
            "contact": {"properties": {"sentiment": "string"}},
            "signup": {"properties": {"email": "string", "tier": "string"}},
        },
        "attributes": {
            "email": {"from": "signup.email", "pii": True},
            "tier": {"from": "signup.tier"},
            "first_status": {"from": "order.status", "keep": "first"},
        },
        "computed": {
            "spend_30d": "sum(order.amount) over 30d",
            "orders": "count(order)",
            "last_mood": "last(contact.sentiment)",
            "channels": "distinct(*.source)",
        },
    }
)
DEFINITION, PROBLEMS = compile_profile(SECTION)


def event(n: int, event_type: str, at: float, source: str = "web", **properties: object) -> TrackedEvent:
    return TrackedEvent(f"e{n:03d}", "c-1", event_type, source, at, properties)


EVENTS = [
    event(1, "signup", T0, email="ada@example.com", tier="silver"),
    event(2, "order", T0 + DAY, amount=30.0, status="open"),
    event(3, "contact", T0 + 2 * DAY, "call_center", sentiment="angry"),
    event(4, "order", T0 + 40 * DAY, "app", amount=12.5, status="delivered"),
    event(5, "signup", T0 + 41 * DAY, tier="gold"),
    event(6, "contact", T0 + 42 * DAY, "app", sentiment="calm"),
]


def test_the_definition_compiles() -> None:
    assert PROBLEMS == []


def test_a_profile_keeps_and_computes_what_its_definition_says() -> None:
    profile = Profile(DEFINITION, "c-1", T0)
    for e in EVENTS:
        profile.apply(e)
    assert profile.version == 6
    assert profile.view(T0 + 42 * DAY) == {
        "email": "ada@example.com",
        "tier": "gold",  # the latest
        "first_status": "open",  # the first
        "spend_30d": 12.5,  # the first order left the 30 days
        "orders": 2,
        "last_mood": "calm",
        "channels": ["app", "call_center", "web"],
    }
    learner = profile.view(T0 + 42 * DAY, include_pii=False)
    assert "email" not in learner and learner["tier"] == "gold"
    assert profile.view(T0 + 71 * DAY)["spend_30d"] == 0.0  # and the window goes on moving


def test_the_order_events_arrive_in_does_not_matter_and_a_merge_is_a_replay() -> None:
    one = Profile(DEFINITION, "c-1", T0)
    for e in EVENTS:
        one.apply(e)
    shuffled = EVENTS[:]
    random.Random(3).shuffle(shuffled)
    survivor, absorbed = Profile(DEFINITION, "c-1", T0), shuffled[:3]
    for e in shuffled[3:]:
        survivor.apply(e)
    survivor.absorb(absorbed)  # the other customer's events, when an identifier links the two
    assert survivor.view(T0 + 42 * DAY) == one.view(T0 + 42 * DAY)


def test_the_profile_round_trips_through_json_and_a_changed_definition_starts_empty() -> None:
    profile = Profile(DEFINITION, "c-1", T0)
    for e in EVENTS:
        profile.apply(e)
    stored = json.loads(json.dumps(profile.dump(), allow_nan=False))
    assert Profile.load(DEFINITION, stored).view(T0 + 42 * DAY) == profile.view(T0 + 42 * DAY)
    changed_section = SECTION.model_copy(update={"computed": {**SECTION.computed, "orders": "count(order) over 7d"}})
    changed, _ = compile_profile(changed_section)
    reloaded = Profile.load(changed, stored)
    assert reloaded.view(T0 + 42 * DAY)["orders"] == 0  # to be backfilled, not read under the old meaning
    assert reloaded.view(T0 + 42 * DAY)["spend_30d"] == 12.5  # the unchanged ones are kept


@pytest.mark.parametrize(
    ("event_type", "properties", "message"),
    [
        ("visit", {}, "type: 'visit' is not an event type of the profile (contact, order, signup)"),
        ("order", {"amount": "ten"}, "properties.amount: must be a number for 'order' events, got a text"),
        ("order", {"amount": True}, "properties.amount: must be a number"),
        ("order", {"gift": "yes"}, "properties.gift: must be a bool"),
        ("order", {"amount": float("nan")}, "properties.amount: must be a finite number"),
        ("order", {"note": {"score": float("inf")}}, "properties.note.score: must be a finite number"),
        ("order", {"lines": [1.0, float("-inf")]}, "properties.lines[1]: must be a finite number"),
    ],
)
def test_an_event_the_profile_does_not_accept_is_refused_naming_the_field(
    event_type: str, properties: dict, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        check(DEFINITION, event_type, properties)
    check(DEFINITION, "order", {"amount": 3, "status": "open", "note": {"free": "form"}})  # others as they come


def test_attributes_read_the_source_and_dotted_paths_and_personal_data_stays_out_of_learning() -> None:
    section = ProfileSection.model_validate(
        {
            "event_types": {"signup": {"properties": {"email": "string", "address": "string"}}},
            "attributes": {
                "email": {"from": "signup.email", "pii": True},
                "joined_via": {"from": "signup.source"},
                "city": {"from": "signup.address.city"},
            },
            "computed": {"last_email": "last(signup.email)", "signups": "count(signup)"},
        }
    )
    definition, problems = compile_profile(section)
    assert problems == [] and definition.pii == {"email", "last_email"}
    profile = Profile(definition, "c-1", T0)
    profile.apply(TrackedEvent("e1", "c-1", "signup", "app", T0, {"email": "a@b.co", "address": {"city": "Leeds"}}))
    assert profile.view(T0) == {"email": "a@b.co", "joined_via": "app", "city": "Leeds", "last_email": "a@b.co", "signups": 1}
    assert profile.view(T0, include_pii=False) == {"joined_via": "app", "city": "Leeds", "signups": 1}
    star, found = compile_profile(ProfileSection.model_validate({"attributes": {"x": {"from": "*.source"}}}))
    assert [str(p) for p in found] == [
        "field 'profile.attributes.x.from': '*.source': an attribute is kept from one event type, not *"
    ]


ACTIVITY, ACTIVITY_PROBLEMS = compile_profile(
    ProfileSection.model_validate(
        {
            "event_types": {
                "order": {"properties": {"order_id": "string", "status": "string"}},
                "delivery": {"properties": {"order_id": "string", "status": "string"}},
            },
            "activity": {
                "orders_open": {"events": ["order", "delivery"], "key": "order_id", "closed": ["delivered", "cancelled"]}
            },
        }
    )
)


def test_current_activity_follows_each_item_to_its_newest_status_whatever_the_arrival_order() -> None:
    assert ACTIVITY_PROBLEMS == []
    events = [
        TrackedEvent("o1", "c-1", "order", "web", T0, {"order_id": "A-1", "status": "placed"}),
        TrackedEvent("d1", "c-1", "delivery", "courier", T0 + DAY, {"order_id": "A-1", "status": "shipped"}),
        TrackedEvent("d2", "c-1", "delivery", "courier", T0 + 2 * DAY, {"order_id": "A-1", "status": "delivered"}),
        TrackedEvent("o2", "c-1", "order", "app", T0 + DAY, {"order_id": 77.0}),  # no status: open, key as a number
        TrackedEvent("o3", "c-1", "order", "app", T0 + 3 * DAY, {"order_id": "77", "status": "placed"}),  # the same order
        TrackedEvent("o4", "c-1", "order", "app", T0, {"status": "placed"}),  # no key: no item
    ]
    for arrival in (events, events[::-1], [events[2], events[0], events[4], events[1], events[3], events[5]]):
        profile = Profile(ACTIVITY, "c-1", T0)
        profile.absorb(arrival)
        assert profile.view(T0 + 3 * DAY)["orders_open"] == 1
        items = [
            (name, key, item["status"], is_open, item["since"], item["type"]) for name, key, item, is_open in profile.items()
        ]
        assert items == [
            ("orders_open", "77", "placed", True, T0 + DAY, "order"),
            ("orders_open", "A-1", "delivered", False, T0, "delivery"),
        ]
        restored = Profile.load(ACTIVITY, json.loads(json.dumps(profile.dump(), allow_nan=False)))
        assert restored.items() == profile.items()


def test_only_the_newest_closed_items_are_kept() -> None:
    profile = Profile(ACTIVITY, "c-1", T0)
    for n in range(30):
        profile.apply(TrackedEvent(f"o{n}", "c-1", "order", "web", T0 + n, {"order_id": f"A-{n}", "status": "cancelled"}))
    profile.apply(TrackedEvent("open", "c-1", "order", "web", T0, {"order_id": "B", "status": "placed"}))
    kept = [key for _, key, _, _ in profile.items()]
    assert kept[0] == "B" and len(kept) == 21 and "A-29" in kept and "A-9" not in kept


def test_an_activity_reading_an_undeclared_property_is_refused_naming_it() -> None:
    _, problems = compile_profile(
        ProfileSection.model_validate(
            {
                "event_types": {"order": {"properties": {"status": "string"}}},
                "computed": {"orders": "count(order)"},
                "activity": {
                    "orders": {"events": ["order"], "key": "id", "closed": ["done"]},
                    "open": {"events": ["order"], "key": "case", "closed": ["done"]},
                    "visits": {"events": ["visit"], "key": "status", "closed": ["done"]},
                },
            }
        )
    )
    found = {(p.field, p.message) for p in problems}
    assert ("profile.activity.orders", "'orders' is also an attribute or a computed attribute: one name, one meaning") in found
    assert ("profile.activity.open.key", "'case' is not a property of order") in found
    assert any(f == "profile.activity.visits.key" and "unknown event type 'visit'" in m for f, m in found)


def test_an_empty_text_does_not_replace_what_an_attribute_holds() -> None:
    profile = Profile(DEFINITION, "c-1", T0)
    profile.apply(event(1, "signup", T0, tier="gold"))
    profile.apply(event(2, "signup", T0 + DAY, tier=""))
    profile.apply(event(3, "signup", T0 + 2 * DAY, tier="  "))
    assert profile.view(T0 + 2 * DAY)["tier"] == "gold"
