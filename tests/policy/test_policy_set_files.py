"""A policy set split over files means what it says: every section of every file counts,
whichever file holds it and in whatever order the files are read."""

from __future__ import annotations

import itertools
import re
import textwrap
from typing import Any

import pytest
from conftest import ROOT

from nba.errors import PolicySetError

#: one set holding every section, as chunks a set may be split into (the halves of a section
from nba.policy.loading import parse_policy_set
from nba.policy.policy_set import PolicySet

#: one set holding every section, as chunks a set may be split into (the halves of a section
#: split over two files)
CHUNKS: dict[str, str] = {
    "settings": "settings: {timezone: Asia/Kolkata}\n",
    "channels": "channels: [web, app, email]\n",
    "schema-1": """
        schema:
          customer.age: {type: number, min: 0, max: 120}
          customer.flags.churn_risk: bool
    """,
    "schema-2": """
        schema:
          customer.segment: {type: string, values: [bronze, silver, gold]}
          customer.products: list<string>
    """,
    "groups-1": "groups:\n  retention: {description: Keep them, lever: 1.7}\n",
    "groups-2": "groups:\n  cross-sell: {lever: 0.6}\n  service: {description: Help}\n  up-sell: {description: Better}\n",
    "offers-1": """
        offers:
          - {id: discount, name: Discount, group: retention, channels: [web, app], value: 50, lever: 2.0,
             eligibility: customer.flags.churn_risk, schedule: {days: [mon, tue], hours: ["08:00-20:00"]}}
          - {id: card, name: Card, group: cross-sell, channels: [web, email], value: 120, tags: [card],
             eligibility: customer.age >= 18}
    """,
    "offers-2": """
        offers:
          - {id: loan, name: Loan, group: up-sell, channels: [app, email], value: 200, status: paused}
          - {id: help, name: Help, group: service, channels: [web, app, email], fallback: true, value: 0}
    """,
    "policies-1": """
        policies:
          - {id: owned, type: applicability, applies_to: {groups: [cross-sell]},
             rule: '!offer.tags.exists(t, t in customer.products)'}
          - {id: gold-first, type: weight, applies_to: {groups: [retention]},
             weight: 'customer.segment == "gold" ? 2.0 : 1.0'}
    """,
    "policies-2": """
        policies:
          - {id: weekly, type: contact_cap, applies_to: {groups: [retention, cross-sell]}, max: 3, window: 7d}
          - {id: daily-budget, type: budget, applies_to: {offers: [discount]}, max: 40, counts: decided,
             pacing: even}
          - {id: no-after-no, type: suppression, after: rejected, days: 30}
    """,
}
SECTIONS = ("settings", "channels", "schema", "groups", "offers", "policies")


def chunk(name: str) -> str:
    return textwrap.dedent(CHUNKS[name]).lstrip()


def files_of(arrangement: list[list[str]]) -> dict[str, str]:
    """Files named so that they are read in the arrangement's order (the set reads files by
    name), each holding its chunks; a section split inside one file is joined again."""
    files = {}
    for i, names in enumerate(arrangement):
        by_section: dict[str, list[str]] = {}
        for name in names:
            by_section.setdefault(name.split("-")[0], []).append(name)
        text = ""
        for parts in by_section.values():
            head, *rest = parts
            text += chunk(head)
            for part in rest:  # the second half of a section, as more entries of the same key
                text += "".join(chunk(part).splitlines(keepends=True)[1:])
        files[f"{i:02d}-part.yaml"] = text
    return files


def meaning(policy_set: PolicySet) -> dict[str, Any]:
    """Everything a compiled set decides with, independent of which file said it."""
    return {
        "timezone": str(policy_set.timezone),
        "channels": sorted(policy_set.channels),
        "schema": {path: spec.model_dump() for path, spec in policy_set.schema.fields.items()},
        "groups": {name: group.model_dump() for name, group in policy_set.groups.items()},
        "offers": {
            oid: {
                "offer": o.offer.model_dump(),
                "lever": o.lever,
                "rules": sorted((r.kind, r.policy, r.rule.source, tuple(sorted(r.channels))) for r in o.rules),
                "weights": sorted((w.policy, w.rule.source) for w in o.weights),
                "caps": sorted(c.id for c in o.caps),
                "suppressions": sorted(s.id for s in o.suppressions),
                "budgets": sorted(b.id for b in o.budgets),
                "timed": o.timed,
                "held": o.held,
            }
            for oid, o in policy_set.offers.items()
        },
        "policies": {pid: p.model_dump() for pid, p in policy_set.policies.items()},
        "by_channel": {c: sorted(o.id for o in offers) for c, offers in policy_set.by_channel.items()},
        "fallback": {c: o.id for c, o in policy_set.fallback.items()},
        "budget_members": {k: sorted(v) for k, v in policy_set.budget_members.items()},
        "needs_contacts": policy_set.needs_contacts,
        "history_seconds": policy_set.history_seconds,
        "cap_windows": sorted(policy_set.cap_windows),
        "reserves": policy_set.reserves,
        "sources": policy_set.sources,
        "warnings": sorted((w.severity, w.offer, w.policy, w.field, w.message) for w in policy_set.warnings),
    }


def arrangements() -> list[list[list[str]]]:
    """Every assignment of the six whole sections to two files (so every pair of sections
    both shares a file and sits in separate files, in both orders), and every chunk in a
    file of its own, read in every rotation of one order and of its reverse (every chunk
    read first and last, every pair of chunks in both orders, every section split)."""
    found = []
    for assignment in itertools.product((0, 1), repeat=len(SECTIONS)):
        files: list[list[str]] = [[], []]
        for section, i in zip(SECTIONS, assignment, strict=True):
            files[i].extend(n for n in CHUNKS if n.split("-")[0] == section)
        found.append([f for f in files if f])
    names = list(CHUNKS)
    for order in (names, names[::-1]):
        for shift in range(len(order)):
            found.append([[n] for n in order[shift:] + order[:shift]])
    return found


def test_every_section_counts_whatever_file_holds_it_and_whatever_the_order() -> None:
    reference = meaning(parse_policy_set(files_of([list(CHUNKS)])))
    # the reference itself is what the chunks say
    assert reference["timezone"] == "Asia/Kolkata"
    assert reference["offers"]["discount"]["lever"] == pytest.approx(2.0 * 1.7)
    assert reference["offers"]["card"]["lever"] == pytest.approx(0.6)
    assert set(reference["schema"]) == {"customer.age", "customer.flags.churn_risk", "customer.segment", "customer.products"}
    assert set(reference["policies"]) == {"owned", "gold-first", "weekly", "daily-budget", "no-after-no"}
    tried = arrangements()
    assert len(tried) == 64 + 2 * len(CHUNKS)
    for arrangement in tried:
        files = files_of(arrangement)
        assert meaning(parse_policy_set(files)) == reference, arrangement


def test_a_file_with_groups_and_several_schema_fields_is_not_refused() -> None:
    """The case that was refused with "group already declared": groups beside two or more
    schema fields in one file."""
    policy_set = parse_policy_set(
        {
            "a.yaml": chunk("channels")
            + chunk("groups-1")
            + "  cross-sell: {}\n  up-sell: {}\n  service: {}\n"
            + chunk("schema-1")
            + chunk("offers-1"),
        }
    )
    assert policy_set.offers["discount"].lever == pytest.approx(2.0 * 1.7)


@pytest.mark.parametrize("names", [("a.yaml", "b.yaml"), ("b.yaml", "a.yaml")])
def test_the_readme_examples_load_together_in_either_order(names: tuple[str, str]) -> None:
    """The README's minimal shape and its "everything else" example, as two files of one
    set: both are loadable, and the group lever it shows is applied."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    policy_blocks = [b for b in blocks if not b.startswith("sources:")]  # not the callback sources' example
    minimal, full = policy_blocks[0], policy_blocks[1]
    assert "groups:" in full and "offers:" in minimal
    policy_set = parse_policy_set(dict(zip(names, (minimal, full), strict=True)))
    lever = policy_set.groups["retention"].lever
    assert lever != 1.0
    retention = [o for o in policy_set.offers.values() if o.offer.group == "retention"]
    assert retention and all(o.lever == pytest.approx(o.offer.lever * lever) for o in retention)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"a.yaml": "channels: [web]\ngroups: {g: {lever: 2}}\n", "b.yaml": "groups: {g: {lever: 3}}\n"},
            "b.yaml: field 'groups.g': group 'g' already declared in a.yaml",
        ),
        (
            {"a.yaml": "channels: [web]\nschema: {customer.age: number}\n", "b.yaml": "schema: {customer.age: string}\n"},
            "b.yaml: field 'schema.customer.age': declared differently in a.yaml",
        ),
        (
            {"a.yaml": "channels: [web]\nsettings: {timezone: UTC}\n", "b.yaml": "settings: {timezone: Europe/Paris}\n"},
            "b.yaml: field 'settings': settings already given in a.yaml",
        ),
        (
            {"a.yaml": "channels: [web]\nschema: {customer.flags: bool}\n", "b.yaml": "schema: {customer.flags.vip: bool}\n"},
            "a.yaml: field 'schema.customer.flags': is a bool, so 'customer.flags.vip' cannot be below it",
        ),
    ],
)
def test_a_section_declared_twice_across_files_names_both_files(files: dict[str, str], expected: str) -> None:
    with pytest.raises(PolicySetError) as raised:
        parse_policy_set(files)
    assert any(expected in str(p) for p in raised.value.problems), raised.value.messages


def test_the_same_schema_field_declared_alike_in_two_files_is_one_field() -> None:
    policy_set = parse_policy_set(
        {"a.yaml": "channels: [web]\nschema: {customer.age: number}\n", "b.yaml": "schema: {customer.age: {type: number}}\n"}
    )
    assert list(policy_set.schema.fields) == ["customer.age"]
