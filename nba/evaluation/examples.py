"""Policy examples: customers, and the offers they should and should not be eligible for.

They sit next to the policy files as ``<name>_test.yaml`` (as Open Policy Agent keeps
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

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bandit import flatten
from nba.decision.contacts import ContactSummary, OfferCounters
from nba.decision.decider import with_profile
from nba.decision.screening import screen
from nba.errors import PolicySetError
from nba.policy.policy_set import EXAMPLE_SUFFIX, PolicySet
from nba.profiles.profile import Profile
from nba.records import ContactEvent
from nba.yaml_loader import describe, load_yaml

__all__ = ["Example", "check_examples", "load_examples"]


class PastContact(BaseModel):
    """One event of the customer's contact history, for contact policies."""

    model_config = ConfigDict(extra="forbid")

    offer: str
    kind: Literal["decided", "impressed", "clicked", "accepted", "rejected"] = "impressed"
    #: at most 100 years (a finite date; older history counts as never, as in rules)
    days_ago: float = Field(default=1.0, ge=0, le=36500)
    channel: str | None = None


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    channel: str
    customer_id: str = "example-customer"
    #: shorthand for context: {customer: ...}
    customer: dict[str, Any] | None = None
    #: the customer's stored profile, by attribute name (with a profile section; unset
    #: attributes read as a customer no event named: counts 0, the rest absent)
    profile: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    now: datetime | None = None
    #: what the customer was shown and did before, newest or oldest in any order
    history: list[PastContact] = Field(default_factory=list)
    eligible: list[str] = Field(default_factory=list)
    not_eligible: list[str] = Field(default_factory=list)
    #: the offer returned when nothing else is eligible
    fallback: str | None = None

    @field_validator("now", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        # As in offers' dates: `2026-11-24` is midnight UTC, a time without offset is UTC (not
        # the clock of the machine that happens to run the examples).
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("customer", "context", mode="after")
    @classmethod
    def _as_sent(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # YAML reads an unquoted 1990-01-01 as a date; a channel system sends JSON, where it
        # can only be the text "1990-01-01": rules must see what they will see in production.
        return None if value is None else _as_json(value)


def _as_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: list[Example]


def load_examples(directory: str | Path) -> list[tuple[str, Example]]:
    """Reads every ``*_test.yaml`` in ``directory``; returns (file name, example) pairs."""
    found: list[tuple[str, Example]] = []
    problems: list[str] = []
    for path in sorted(Path(directory).glob(f"*{EXAMPLE_SUFFIX}")):
        try:
            document = _File.model_validate(load_yaml(path.read_text(encoding="utf-8"), path.name))
        except IsADirectoryError:
            problems.append(f"{path.name}: is a directory, not a file of examples")
            continue
        except UnicodeDecodeError as exc:
            problems.append(
                f"{path.name}: byte {exc.start} (0x{exc.object[exc.start]:02x}) is not UTF-8 text (save the file as UTF-8)"
            )
            continue
        except OSError as exc:
            problems.append(f"{path.name}: cannot be read: {exc.strerror or exc}")
            continue
        except yaml.YAMLError as exc:
            problems.append(f"{path.name}: {describe(exc)}")
            continue
        except ValidationError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        found.extend((path.name, example) for example in document.examples)
    if problems:
        raise PolicySetError(problems)
    return found


def check_examples(policy_set: PolicySet, examples: list[tuple[str, Example]]) -> list[str]:
    """Returns one line per broken expectation (empty when all hold)."""
    failures: list[str] = []
    for source, example in examples:
        where = f"{source}: {example.name!r}"
        if example.channel not in policy_set.channels:
            failures.append(f"{where}: unknown channel '{example.channel}'")
            continue
        context = dict(example.context or {})
        if example.customer is not None:
            context["customer"] = example.customer
        now = example.now or datetime.now(UTC)
        # Examples screen rules and dates; contact history and budgets start empty.
        events = []
        for past in example.history:
            offer = policy_set.offers.get(past.offer)
            if offer is None:
                failures.append(f"{where}: history names unknown offer '{past.offer}'")
                continue
            at = now.timestamp() - past.days_ago * 86400
            events.append(
                ContactEvent(example.customer_id, at, past.kind, past.offer, offer.offer.group, past.channel or example.channel)
            )
        events.sort(key=lambda e: e.at)
        summary = ContactSummary(events, now.timestamp(), example.channel, policy_set.cap_windows)
        features = flatten(context)
        private = None
        if policy_set.profile.names:
            unknown = sorted(set(example.profile or {}) - policy_set.profile.names)
            if unknown:
                failures.append(f"{where}: profile names {', '.join(unknown)}, not in the profile section")
                continue
            values = {**Profile(policy_set.profile, example.customer_id, now.timestamp()).view(now.timestamp())}
            values.update(example.profile or {})
            pii = policy_set.profile.pii
            features = with_profile(features, {k: v for k, v in values.items() if k not in pii}, policy_set.profile.consent)
            private = {k: v for k, v in values.items() if k in pii}
        elif example.profile:
            failures.append(f"{where}: gives a profile, but the policy set has no profile section")
            continue
        result = screen(
            policy_set, example.channel, features, example.customer_id, now, summary, OfferCounters(), private=private
        )
        verdicts = {v.offer.id: v for v in result.verdicts}
        for offer_id in example.eligible + example.not_eligible:
            if offer_id not in policy_set.offers:
                failures.append(f"{where}: names unknown offer '{offer_id}'")
        for offer_id in example.eligible:
            verdict = verdicts.get(offer_id)
            if offer_id in policy_set.offers and (verdict is None or not verdict.eligible):
                why = "not on this channel" if verdict is None else str(verdict.reason)
                if verdict is not None and verdict.policy:
                    why = f"{why} (policy '{verdict.policy}')"
                if verdict is not None and verdict.detail:
                    why = f"{why}: {verdict.detail}"
                failures.append(f"{where}: expected '{offer_id}' eligible, but {why}")
        for offer_id in example.not_eligible:
            verdict = verdicts.get(offer_id)
            if verdict is not None and verdict.eligible:
                failures.append(f"{where}: expected '{offer_id}' not eligible, but it is")
        if example.fallback is not None:
            got = result.fallback.offer.id if result.fallback and result.fallback.eligible and not result.eligible else None
            if got != example.fallback:
                failures.append(f"{where}: expected fallback '{example.fallback}', got {got!r}")
    return failures
