"""Policy examples: customers, and the offers they should and should not be eligible for.

They sit next to the catalogue as ``<name>_test.yaml`` (as Open Policy Agent keeps
``example_test.rego`` beside ``example.rego``) and run with ``nba policies test``, so a
marketer can change a rule and see at once which expectations it breaks::

    examples:
      - name: a loyal customer at risk of leaving is offered the retention discount
        channel: app
        customer: {age: 45, flags: {churn_risk: true, fraud_risk: false}, ...}
        eligible: [retention-discount-20]
        not_eligible: [gold-card]
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nba.catalogue import EXAMPLE_SUFFIX, Catalogue
from nba.errors import CatalogueError
from nba.policies import screen

__all__ = ["Example", "check_examples", "load_examples"]


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    channel: str
    customer_id: str = "example-customer"
    #: shorthand for context: {customer: ...}
    customer: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    now: datetime | None = None
    eligible: list[str] = Field(default_factory=list)
    not_eligible: list[str] = Field(default_factory=list)
    #: the offer returned when nothing else is eligible
    fallback: str | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: list[Example]


def load_examples(directory: str | Path) -> list[tuple[str, Example]]:
    """Reads every ``*_test.yaml`` in ``directory``; returns (file name, example) pairs."""
    found: list[tuple[str, Example]] = []
    problems: list[str] = []
    for path in sorted(Path(directory).glob(f"*{EXAMPLE_SUFFIX}")):
        try:
            document = _File.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        found.extend((path.name, example) for example in document.examples)
    if problems:
        raise CatalogueError(problems)
    return found


def check_examples(catalogue: Catalogue, examples: list[tuple[str, Example]]) -> list[str]:
    """Returns one line per broken expectation (empty when all hold)."""
    failures: list[str] = []
    for source, example in examples:
        where = f"{source}: {example.name!r}"
        if example.channel not in catalogue.channels:
            failures.append(f"{where}: unknown channel '{example.channel}'")
            continue
        context = dict(example.context or {})
        if example.customer is not None:
            context["customer"] = example.customer
        now = example.now or datetime.now(UTC)
        result = screen(catalogue, example.channel, context, example.customer_id, now)
        verdicts = {v.offer.id: v for v in result.verdicts}
        for offer_id in example.eligible + example.not_eligible:
            if offer_id not in catalogue.offers:
                failures.append(f"{where}: names unknown offer '{offer_id}'")
        for offer_id in example.eligible:
            verdict = verdicts.get(offer_id)
            if offer_id in catalogue.offers and (verdict is None or not verdict.eligible):
                why = "not on this channel" if verdict is None else verdict.reason
                if verdict is not None and verdict.detail:
                    why = f"{why}: {verdict.detail}"
                failures.append(f"{where}: expected '{offer_id}' eligible, but {why}")
        for offer_id in example.not_eligible:
            verdict = verdicts.get(offer_id)
            if verdict is not None and verdict.eligible:
                failures.append(f"{where}: expected '{offer_id}' not eligible, but it is")
        if example.fallback is not None:
            got = result.fallback.offer.id if result.fallback and not result.eligible else None
            if got != example.fallback:
                failures.append(f"{where}: expected fallback '{example.fallback}', got {got!r}")
    return failures
