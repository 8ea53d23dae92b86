"""A generated workload: a policy set of N offers, each with an eligibility rule, and contexts
with F fields, shaped like the sample Customer-360 profile. Shared by the service benchmark
and the locust load test."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

CHANNELS = ["web", "app", "email", "call_center"]
SEGMENTS = ["bronze", "silver", "gold", "platinum"]
REGIONS = ["north", "south", "east", "west"]
PRODUCTS = ["current-account", "credit-card", "savings", "loan", "mobile-plan", "travel-insurance"]


def fields(count: int) -> list[tuple[str, str]]:
    """``count`` context fields (path, type): a few named ones, then numbered extras."""
    named = [
        ("customer.age", "number"),
        ("customer.value.segment", "string"),
        ("customer.flags.churn_risk", "bool"),
        ("customer.flags.fraud_risk", "bool"),
        ("customer.history.tenure_months", "number"),
        ("customer.history.products", "list<string>"),
        ("customer.activity.complaints_90d", "number"),
        ("customer.demographics.region", "string"),
        ("customer.value.clv", "number"),
        ("customer.activity.days_since_login", "number"),
    ]
    out = named[:count]
    kinds = ["number", "string", "bool"]
    for i in range(len(out), count):
        out.append((f"customer.extra.f{i}", kinds[i % 3]))
    return out


def write_policy_set(folder: Path, offers: int, field_count: int, seed: int = 1) -> Path:
    """A valid policy set in ``folder``: every offer has an eligibility rule over the fields."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    specs = fields(field_count)
    schema = "\n".join(f"  {path}: {kind}" for path, kind in specs)
    rules = [
        "customer.age >= {n}.0",
        'customer.value.segment != "{s}"',
        "!customer.flags.fraud_risk",
        "customer.history.tenure_months > {n}.0 || customer.flags.churn_risk",
        '!("{p}" in customer.history.products)',
    ]
    lines = [
        "settings: {timezone: UTC}",
        f"channels: [{', '.join(CHANNELS)}]",
        "schema:",
        schema,
        "offers:",
    ]
    for i in range(offers):
        rule = rng.choice(rules[: max(1, min(len(rules), field_count))]).format(
            n=rng.randint(1, 40), s=rng.choice(SEGMENTS), p=rng.choice(PRODUCTS)
        )
        channels = rng.sample(CHANNELS, rng.randint(2, 4))
        lines.append(
            f"  - {{id: offer-{i:04d}, name: Offer {i}, group: g{i % 5}, channels: [{', '.join(channels)}], "
            f"value: {rng.randint(5, 200)}.0, eligibility: '{rule}'}}"
        )
    for channel in CHANNELS:
        lines.append(f"  - {{id: fallback-{channel}, name: Fallback, channels: [{channel}], fallback: true, value: 0.0}}")
    (folder / "policies.yaml").write_text("\n".join(lines) + "\n")
    return folder


def context(field_count: int, rng: random.Random) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, kind in fields(field_count):
        if path == "customer.value.segment":
            value: Any = rng.choice(SEGMENTS)
        elif path == "customer.demographics.region":
            value = rng.choice(REGIONS)
        elif path == "customer.history.products":
            value = rng.sample(PRODUCTS, rng.randint(0, 3))
        elif kind == "number":
            value = float(rng.randint(0, 90))
        elif kind == "bool":
            value = rng.random() < 0.2
        else:
            value = rng.choice(["a", "b", "c", "d"])
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return root
