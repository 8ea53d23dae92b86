"""The policy set's ``profile:`` section: what a customer profile accepts, keeps and computes,
checked with the rest of the set (every problem named by file and field) and compiled into
``PolicySet.profile``."""

from __future__ import annotations

import pytest
from conftest import POLICIES, ROOT

from nba.errors import PolicySetError
from nba.policy.loading import parse_policy_set, read_files

PROFILE = """
profile:
  identity:
    default_region: US
    kinds:
      member_no: {unique: true}
  event_types:
    order: {properties: {amount: number, status: string}}
    contact: {properties: {sentiment: string}}
    signup: {properties: {email: string}}
  attributes:
    email: {from: signup.email, pii: true}
    last_status: {from: order.status}
  computed:
    spend_365d: sum(order.amount) over 365d
    last_mood: last(contact.sentiment)
    channels_used: distinct(*.source)
    open_orders: count(order) where event.properties.status == "open"
"""


#: a set of its own: the sample set's rules read the sample's own profile section
BASE = {"channels.yaml": "channels: [web]\noffers:\n  - {id: hello, name: Hello, channels: [web], value: 1.0}\n"}


def with_profile(text: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**BASE, "profile.yaml": text, **(extra or {})}


def problems(text: str, extra: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicySetError) as caught:
        parse_policy_set(with_profile(text, extra))
    return [str(p) for p in caught.value.problems if p.severity == "error"]


def test_the_section_is_compiled_with_the_set() -> None:
    profile = parse_policy_set(with_profile(PROFILE)).profile
    assert profile.default_region == "US"
    assert profile.kinds["member_no"].unique and profile.kinds["member_no"].merges
    assert profile.kinds["device_id"].merges is False  # the defaults stay
    assert profile.attributes == {
        "email": ("signup", "email", "latest", True),
        "last_status": ("order", "status", "latest", False),
    }
    assert [(c.name, c.function, c.event, c.property, c.window) for c in profile.computed] == [
        ("spend_365d", "sum", "order", "amount", 365 * 86400.0),
        ("last_mood", "last", "contact", "sentiment", None),
        ("channels_used", "distinct", "*", "source", None),
        ("open_orders", "count", "order", None, None),
    ]
    without = parse_policy_set(BASE).profile  # a set without the section: the defaults
    assert without.computed == () and "email" in without.kinds and not without.names
    sample = parse_policy_set(read_files(POLICIES)).profile  # the sample set's, which its rules read
    assert {"complaints_30d", "email", "tier"} <= sample.names and sample.pii == {"email"}


def test_every_problem_of_the_section_is_named_by_file_and_field() -> None:
    found = problems("""
profile:
  identity: {default_region: XX}
  event_types:
    order: {properties: {amount: number, status: string}}
  attributes:
    tier: {from: order}
    email: {from: signup.email}
  computed:
    spend: sum(order.status)
    visits: count(page_view) over 7d
    refunds: sum(order.refund)
    bad: totals(order.amount)
""")
    assert found == [
        "profile.yaml: field 'profile.identity.default_region': 'XX' is not a region code (GB, US, DE, ...)",
        "profile.yaml: field 'profile.attributes.tier.from': 'order' is not EVENT.PROPERTY",
        "profile.yaml: field 'profile.attributes.email.from': unknown event type 'signup' (event_types: order)",
        "profile.yaml: field 'profile.computed.spend': sum needs a number, and 'status' is a string",
        "profile.yaml: field 'profile.computed.visits': unknown event type 'page_view' (event_types: order)",
        "profile.yaml: field 'profile.computed.refunds': 'refund' is not a property of order",
        "profile.yaml: field 'profile.computed.bad': unknown function 'totals'; one of count, sum, avg, min, max, "
        "distinct, distinct_count, first, last, days_since",
    ]


def test_the_section_is_given_once_and_unknown_keys_are_refused() -> None:
    twice = problems(PROFILE, {"zz_more.yaml": "profile: {event_types: {visit: {}}}\n"})
    assert twice == ["zz_more.yaml: field 'profile': profile already given in profile.yaml (give it once, in one file)"]
    unknown = problems("profile:\n  segments: {vip: 'true'}\n")
    assert len(unknown) == 1 and "profile.segments" in unknown[0]


def test_the_readme_example_is_a_valid_section() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### The profile section", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    profile = parse_policy_set(with_profile(block)).profile
    assert [c.name for c in profile.computed] == ["spend_365d", "last_mood", "channels_used", "big_orders_30d"]
    assert [a.name for a in profile.activities] == ["orders_in_progress", "complaint_cases"]
    assert profile.relationships == {"household": ("household_link", "member_id")}


def test_a_rule_may_read_only_what_the_profile_declares() -> None:
    offer = "offers:\n  - {id: sorry, name: Sorry, channels: [web], value: 1.0, eligibility: 'profile.open_order > 0'}\n"
    found = problems(PROFILE, {"sorry.yaml": offer})
    assert len(found) == 1 and "'open_order' is not an attribute, computed attribute or activity of the profile" in found[0]
    assert "open_orders" in found[0] and "sorry" in found[0]  # the choices, and which offer
    good = "offers:\n  - {id: sorry, name: Sorry, channels: [web], value: 1.0, eligibility: 'profile.open_orders > 0'}\n"
    assert parse_policy_set(with_profile(PROFILE, {"sorry.yaml": good})).offers["sorry"]
