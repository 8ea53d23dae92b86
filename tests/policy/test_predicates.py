"""Compiled predicates answer exactly as CEL does: every rule of the sample policy set, the
benchmark's rule shapes and the edges of the compiled shapes, on generated contexts that hold
each field as every kind of value (missing, null, numbers at and beside the literals, integers
beyond 2**53, NaN, text, booleans, lists of one kind and of mixed kinds, maps, a shorter path
sent as a value of its own). A rule the compiled shapes cannot answer for a context is left to
CEL (None); one they answer must give CEL's result, and CEL must not have failed on it.
Screening a whole policy set with and without them gives the same verdicts."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bandit import flatten
from nba.decision.screening import screen
from nba.policy.loading import load_policy_set
from nba.policy.policy_set import ChannelBatch
from nba.policy.predicates import Atom, Predicates, parse
from nba.policy.rules import Rule, activation

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

#: the shapes of the service benchmark's generated policy sets (loadtests/workload.py)
BENCHMARK_RULES = [
    "customer.age >= 18.0",
    'customer.value.segment != "gold"',
    "!customer.flags.fraud_risk",
    "customer.history.tenure_months > 12.0 || customer.flags.churn_risk",
    '!("loan" in customer.history.products)',
]
#: the edges of what is compiled, and forms that are not
EDGE_RULES = [
    "customer.age == 30",
    "customer.age != 30.0",
    "customer.age < 18",
    "customer.age <= 18.5",
    "18 < customer.age",
    "-1.5 <= customer.age",
    "1e3 > customer.age",
    "customer.age in [18.0, 30, 41.5]",
    'customer.value.segment in ["gold", "platinum"]',
    'customer.value.segment < "m"',
    "'gold' == customer.value.segment",
    'customer.value.segment == "ünïcode"',
    "customer.flags.churn_risk == true",
    "customer.flags.churn_risk != false",
    "customer.flags.churn_risk < true",
    "customer.flags.churn_risk in [true]",
    "30.0 in customer.history.products",
    'customer.flags.churn_risk || "loan" in customer.history.products',
    "!(customer.age >= 3.0 && customer.flags.churn_risk) || !customer.flags.fraud_risk",
    "(customer.age > 1.0 || customer.age < -1.0) && (customer.flags.churn_risk || customer.flags.fraud_risk)",
    "context.customer.age >= 18",
    'profile.tier == "gold"',
    "profile.orders >= 2.0 && customer.age > 20.0",
    "true",
    "false || customer.flags.churn_risk",
    "customer.tenure",
    "!customer.tenure",
    "customer.age >= 18u",
    "customer.age >= 9007199254740993",
    "customer.age - 1.0 > 3.0",
    "customer.history.products.size() > 1",
    'customer.value.segment.startsWith("g")',
    'customer["age"] > 3.0',
    "has(customer.age) && customer.age > 3.0",
    'customer.value.segment == "a\\"b"',
    "customer.age > 3.0 ? true : false",
    'channel == "web" && customer.age > 3.0',
]
#: literals the generated values meet (equal to, just beside, or far from)
NUMBERS = [-1.5, 0.0, 1.0, 3.0, 12.0, 18.0, 18.5, 20.0, 30.0, 41.5, 1000.0, 1e300]
TEXTS = ["gold", "platinum", "bronze", "loan", "a", "m", "z", "", "ünïcode", 'a"b']


def value(rng: random.Random, home: int) -> Any:
    """A field's value of any kind a context can hold; mostly of the field's own kind (``home``),
    so that rules over several fields are often answerable."""
    choice = home if rng.random() < 0.7 else rng.randrange(16)
    if choice < 3:
        return rng.choice(NUMBERS) + rng.choice([0.0, 0.0, 1e-9, -1e-9])
    if choice == 3:
        return int(rng.choice(NUMBERS[:-1]))
    if choice == 4:
        return rng.choice([2**53 + 1, -(2**60), float("nan"), float("inf"), float("-inf")])
    if choice in (5, 6):
        return rng.choice(TEXTS)
    if choice in (7, 8):
        return rng.random() < 0.5
    if choice == 9:
        return rng.sample(TEXTS, rng.randint(0, 3))
    if choice == 10:
        return [rng.choice(NUMBERS) for _ in range(rng.randint(1, 3))]
    if choice == 11:
        return [rng.choice(TEXTS), rng.choice(NUMBERS)]
    if choice == 12:
        return []
    if choice == 13:
        return None
    if choice == 14:
        return {}
    return [True, False]


def paths_of(rules: list[str]) -> dict[str, list[int]]:
    """Each field the compiled rules read, with the kinds of value (``value``'s choices) its
    atoms compare it with: its own kinds, which most generated values have."""
    found: dict[str, list[int]] = {}
    for source in rules:
        try:
            node = parse(source)
        except ValueError:
            continue
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, Atom):
                literal = item.literal[0] if item.kind == "one_of" else item.literal
                if item.kind == "true" or isinstance(literal, bool):
                    kinds = [7, 15] if item.kind == "contains" else [7]
                elif isinstance(literal, float):
                    kinds = [10] if item.kind == "contains" else [0, 3]
                else:
                    kinds = [9] if item.kind == "contains" else [5]
                found.setdefault(item.path, []).extend(kinds)
            elif isinstance(item, tuple):
                stack.extend(item[1] if isinstance(item[1], tuple) else [item[1]])
    return found


def contexts(paths: dict[str, list[int]], count: int, seed: int) -> list[dict[str, Any]]:
    """Flattened contexts (as a request's context is flattened) over ``paths``: each field
    missing a fifth of the time, else any kind of value; now and then a shorter path sent as a
    value of its own."""
    rng = random.Random(seed)
    homes = {path: rng.choice(kinds) for path, kinds in paths.items()}
    out = []
    for _ in range(count):
        nested: dict[str, Any] = {}
        for path in paths:
            if rng.random() < 0.2:
                continue
            node = nested
            *parents, leaf = path.split(".")
            for part in parents:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    break
                node = child
            else:
                node[leaf] = value(rng, homes[path])
        features = flatten(nested)
        if paths and rng.random() < 0.05:
            path = rng.choice(sorted(paths))
            if "." in path:
                features[path.rsplit(".", 1)[0]] = 5.0
        out.append(features)
    return out


def cel_verdict(source: str, features: dict[str, Any]) -> tuple[bool, str | None]:
    return Rule(source).evaluate(activation(features, "web", "c-1", NOW))


def sample_rules() -> list[str]:
    policy_set = load_policy_set(ROOT / "policies", now=NOW)
    found = {r.source for batch in policy_set.batches.values() for r in batch.rules}
    found.update(policy_set.sources.values())
    return sorted(found)


def agree(rules: list[str], features_list: list[dict[str, Any]]) -> tuple[int, int]:
    """Asserts every compiled answer is CEL's; returns (answers compiled, pairs of a compiled
    rule and a context)."""
    predicates = Predicates(rules)
    answered = 0
    for features in features_list:
        results, unknown = predicates.evaluate(features)
        for index, source in enumerate(rules):
            compiled = results[index]
            if compiled is None:
                continue
            assert index not in unknown
            ok, error = cel_verdict(source, features)
            assert error is None, f"{source!r} on {features}: compiled {compiled}, CEL failed: {error}"
            assert compiled is ok, f"{source!r} on {features}: compiled {compiled}, CEL {ok}"
            answered += 1
        compiled_set = set(predicates.compiled)
        assert all(results[i] is None for i in unknown) and set(unknown) <= compiled_set
        assert all(results[i] is None for i in range(len(rules)) if i not in compiled_set)
    return answered, len(predicates.compiled) * len(features_list)


@pytest.mark.parametrize("name", ["sample", "benchmark", "edges"])
def test_compiled_rules_answer_as_cel_does(name: str) -> None:
    rules = {"sample": sample_rules, "benchmark": lambda: BENCHMARK_RULES, "edges": lambda: EDGE_RULES}[name]()
    answered, checked = 0, 0
    for seed in range(4):  # each field's own kind drawn anew: numbers, text, booleans, lists
        found = agree(rules, contexts(paths_of(rules), 300, seed=seed))
        answered, checked = answered + found[0], checked + found[1]
    # Not a vacuous pass: most pairs are answered by the compiled shapes.
    assert answered > checked * 0.3, (answered, checked)


def test_the_common_shapes_compile_and_the_rest_stay_cel() -> None:
    compiled = Predicates(EDGE_RULES).compiled
    shaped = {EDGE_RULES[i] for i in compiled}
    assert set(BENCHMARK_RULES) <= {BENCHMARK_RULES[i] for i in Predicates(BENCHMARK_RULES).compiled}
    for source in ("customer.age == 30", "18 < customer.age", "customer.age in [18.0, 30, 41.5]", "true"):
        assert source in shaped
    for source in (
        "customer.age >= 18u",
        "customer.age >= 9007199254740993",
        "customer.age - 1.0 > 3.0",
        "customer.history.products.size() > 1",
        'customer["age"] > 3.0',
        "has(customer.age) && customer.age > 3.0",
        'customer.value.segment == "a\\"b"',
        "customer.age > 3.0 ? true : false",
        'channel == "web" && customer.age > 3.0',
    ):
        assert source not in shaped


def test_a_rule_the_context_leaves_to_cel_is_named() -> None:
    predicates = Predicates(["customer.age >= 18", "customer.flags.vip", "offer.value > 3.0"])
    results, unknown = predicates.evaluate({"customer.age": "forty", "customer.flags.vip": True})
    assert results == [None, True, None]
    assert unknown == [0]  # the third has no compiled shape: CEL's on every request, not "unknown"
    results, unknown = predicates.evaluate({"customer": 5.0, "customer.age": 40.0, "customer.flags.vip": True})
    assert results == [None, None, None] and sorted(unknown) == [0, 1]


def test_screening_gives_the_same_verdicts_with_and_without_compiled_rules() -> None:
    compiled = load_policy_set(ROOT / "policies", now=NOW)
    plain = load_policy_set(ROOT / "policies", now=NOW)
    plain.batches = {channel: ChannelBatch(channel, offers, compiled=False) for channel, offers in plain.by_channel.items()}
    assert any(batch.predicates.compiled for batch in compiled.batches.values())
    assert not any(batch.predicates.compiled for batch in plain.batches.values())
    paths = paths_of(sample_rules())
    shown = 0
    for features in contexts(paths, 300, seed=7):
        for channel in compiled.channels:
            a = screen(compiled, channel, features, "c-1", NOW)
            b = screen(plain, channel, features, "c-1", NOW)
            seen = [(v.offer.id, v.eligible, v.reason, v.policy, v.detail, v.weight, v.weight_errors) for v in a.verdicts]
            assert seen == [(v.offer.id, v.eligible, v.reason, v.policy, v.detail, v.weight, v.weight_errors) for v in b.verdicts]
            shown += sum(v.eligible for v in a.verdicts)
    assert shown  # some offers pass: the verdicts compared are not all refusals


def test_deep_nesting_stays_cel_and_long_rules_compile() -> None:
    deep = "(" * 40 + "customer.age >= 18.0" + ")" * 40
    negated = "!" * 41 + "customer.flags.vip"
    wide = " || ".join(f"customer.age == {i}.0" for i in range(150))
    predicates = Predicates([deep, negated, wide, "customer.age > 1.0"])
    assert predicates.compiled == [2, 3]
    results, unknown = predicates.evaluate({"customer.age": 149.0, "customer.flags.vip": True})
    assert results == [None, None, True, True] and unknown == []
    assert cel_verdict(wide, {"customer.age": 149.0}) == (True, None)
