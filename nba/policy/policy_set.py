"""The policy set: every ``*.yaml`` file of the policies folder, validated and compiled as one.

A policy set is the unit that is versioned, published and rolled back: channels, the context
schema, groups, offers and policies together. It is built all or nothing from a mapping of
file name to text (the folder, or a draft sent to the admin API): any error in any file
refuses the whole set, and every problem is reported at once, each naming the file, the offer
or policy, and the field. Files ending in ``_test.yaml`` hold examples (``nba.evaluation.examples``).

The set's model lives here; reading and validating it, in ``nba.policy.loading``.

Sections a file may hold (each optional; together they must declare channels)::

    settings: {timezone: Europe/London}     # once, for schedules and daily budgets
    channels: [web, app, email, call_center]
    schema: {customer.age: number, ...}     # see nba.policy.schema
    groups: {retention: {lever: 1.2}}       # see nba.policy.offers.Group
    offers: [...]                           # see nba.policy.offers.Offer
    policies: [...]                         # see nba.policy.policies
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nba.errors import Problem
from nba.policy.offers import Group, Identifier, Offer
from nba.policy.policies import Budget, ContactCap, Policy, Suppression
from nba.policy.predicates import Predicates
from nba.policy.profile import ProfileDefinition, ProfileSection
from nba.policy.rules import Rule, RuleBatch, RuleError
from nba.policy.schema import ContextSchema, FieldSpec, FieldType, needed_paths

__all__ = [
    "EXAMPLE_SUFFIX",
    "MAX_OFFERS",
    "MAX_POLICIES",
    "PolicySetFile",
    "BoundRule",
    "CompiledOffer",
    "PolicySet",
    "content_hash",
    "json_schema",
]

EXAMPLE_SUFFIX = "_test.yaml"
#: the largest policy set supported: validation, publish and Decide are measured up to it
#: (loadtests/bench_policy_scale.py); a larger one is refused rather than served slowly
MAX_OFFERS = 10_000
MAX_POLICIES = 10_000

log = logging.getLogger(__name__)


class SetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the timezone of schedules and of the day in daily budgets
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA timezone like Europe/London") from None
        return value


class PolicySetFile(BaseModel):
    """One file of the set."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    settings: SetSettings | None = None
    channels: list[Identifier] = Field(default_factory=list)
    context_schema: dict[str, FieldType | FieldSpec] = Field(default_factory=dict, alias="schema")
    groups: dict[str, Group] = Field(default_factory=dict)
    offers: list[Offer] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)
    profile: ProfileSection | None = None


@dataclass(frozen=True, slots=True)
class BoundRule:
    """A rule compiled for one offer, with where it came from."""

    kind: str
    #: the policy id; an offer's own eligibility field is "<offer id>.eligibility"
    policy: str
    rule: Rule
    #: channels it is restricted to (empty: all)
    channels: frozenset[str] = frozenset()

    @property
    def program(self) -> Any:
        return self.rule.program

    @property
    def shared(self) -> bool:
        """The same program for every offer it covers (it does not name the offer): one
        evaluation serves them all within a request."""
        return not self.rule.per_offer


@dataclass(frozen=True)
class CompiledOffer:
    offer: Offer
    #: the file that declares it
    source: str
    #: engagement rules in screening order: eligibility, applicability, suitability
    rules: tuple[BoundRule, ...] = ()
    caps: tuple[ContactCap, ...] = ()
    suppressions: tuple[Suppression, ...] = ()
    budgets: tuple[Budget, ...] = ()
    weights: tuple[BoundRule, ...] = ()
    #: the offer's lever times its group's
    lever: float = 1.0
    #: whether its status, dates or schedule can rule it out (else that screen is skipped)
    timed: bool = True
    #: whether contact policies or budgets apply to it
    held: bool = True
    #: the offer's id (a field, not a property: it is read for every offer of every decision)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.offer.id)


class ChannelBatch:
    """The engagement rules of every offer on one channel, evaluated together: each distinct
    rule once (a group policy that does not name the offer serves every offer it covers), and
    for each offer, which results to read, in screening order. Rules of the common shapes are
    answered for all offers at once (``Predicates``); the rest, and any a request's context
    leaves to CEL, by CEL (one ``RuleBatch``)."""

    def __init__(self, channel: str, offers: list[CompiledOffer], compiled: bool = True) -> None:
        rules: list[Rule] = []
        index: dict[int, int] = {}
        self.elements: dict[str, list[tuple[int, BoundRule]]] = {}
        for compiled_offer in offers:
            steps = []
            for bound in compiled_offer.rules:
                if bound.channels and channel not in bound.channels:
                    continue
                key = id(bound.rule)
                if key not in index:
                    index[key] = len(rules)
                    rules.append(bound.rule)
                steps.append((index[key], bound))
            self.elements[compiled_offer.id] = steps
        self.rules = rules
        #: compiled=False: every rule CEL's (the tests hold both ways to the same verdicts)
        self.predicates = Predicates([r.source for r in rules], compile_shapes=compiled)
        shaped = set(self.predicates.compiled)
        #: the rules without a compiled shape, evaluated by CEL on every request
        self._by_cel = [i for i in range(len(rules)) if i not in shaped]
        self.batch = RuleBatch([rules[i] for i in self._by_cel])

    def evaluate(self, features: Mapping[str, Any], variables: Callable[[], Any]) -> list[Any]:
        """Each rule's result for a request's ``features`` (as ``RuleBatch.evaluate``'s);
        ``variables()`` builds the request's CEL activation, called only if CEL is needed."""
        answered, unknown = self.predicates.evaluate(features)
        results: list[Any] = answered
        if self._by_cel:
            for i, result in zip(self._by_cel, self.batch.evaluate(variables()), strict=True):
                results[i] = result
        if unknown:
            context = variables()
            for i in unknown:
                ok, error = self.rules[i].evaluate(context)
                results[i] = RuleError(error) if error is not None else ok
        return results


@dataclass
class PolicySet:
    """An immutable, validated policy set; decisions swap whole sets atomically."""

    channels: tuple[str, ...]
    offers: dict[str, CompiledOffer]
    groups: dict[str, Group]
    policies: dict[str, Any]
    schema: ContextSchema
    timezone: ZoneInfo
    #: file name -> text, as published
    files: dict[str, str]
    #: sha-256 over every file's name and text
    content_hash: str
    warnings: list[Problem] = field(default_factory=list)
    #: the monotonic version number once registered with the store (0 before)
    number: int = 0
    #: every rule's source, by policy id (an offer's own: "<id>.eligibility")
    sources: dict[str, str] = field(default_factory=dict)
    #: the customer profile's definition (the ``profile:`` section; defaults without one)
    profile: ProfileDefinition = field(default_factory=ProfileDefinition)
    by_channel: dict[str, list[CompiledOffer]] = field(init=False)
    fallback: dict[str, CompiledOffer] = field(init=False)
    #: offers of each shared (per: policy) budget
    budget_members: dict[str, tuple[str, ...]] = field(init=False)
    #: whether screening needs the customer's contact history
    needs_contacts: bool = field(init=False)
    #: the longest window any policy looks back over, in seconds
    history_seconds: float = field(init=False)
    #: (kind, window) pairs the caps count
    cap_windows: frozenset[tuple[str, float]] = field(init=False)
    #: caps counting decisions, each with the groups of the offers it holds (reservations)
    decided_caps: tuple[tuple[ContactCap, frozenset[str]], ...] = field(init=False)
    #: whether any cap or budget counts decisions: only then do decisions reserve units
    reserves: bool = field(init=False)
    #: the context paths rules read (None: possibly anything)
    context_paths: frozenset[str] | None = field(init=False)
    #: every variable any rule uses
    uses: frozenset[str] = field(init=False)

    @cached_property
    def batches(self) -> dict[str, ChannelBatch]:
        """Every channel's engagement rules, compiled to be evaluated together; compiled when
        first read (a set that is only validated never needs them; the service reads them when
        a set goes live, before it serves a decision with it)."""
        return {channel: ChannelBatch(channel, offers) for channel, offers in self.by_channel.items()}

    def __post_init__(self) -> None:
        self.by_channel = {c: [] for c in self.channels}
        self.fallback = {}
        for compiled in self.offers.values():
            for channel in compiled.offer.channels:
                if compiled.offer.fallback:
                    if compiled.offer.status == "live" or channel not in self.fallback:
                        self.fallback[channel] = compiled
                else:
                    self.by_channel[channel].append(compiled)
        members: dict[str, list[str]] = {}
        for compiled in self.offers.values():
            for budget in compiled.budgets:
                if budget.per == "policy":
                    members.setdefault(budget.id, []).append(compiled.id)
        self.budget_members = {k: tuple(v) for k, v in members.items()}
        self.needs_contacts = any(
            o.caps or o.suppressions or any(r.rule.uses_contacts for r in (*o.rules, *o.weights)) for o in self.offers.values()
        )
        windows = [c.window for o in self.offers.values() for c in o.caps]
        windows += [s.days * 86400 for o in self.offers.values() for s in o.suppressions]
        self.history_seconds = max(windows, default=0.0)
        self.cap_windows = frozenset((c.counts, c.window) for o in self.offers.values() for c in o.caps)
        decided: dict[str, tuple[ContactCap, set[str]]] = {}
        for o in self.offers.values():
            for c in o.caps:
                if c.counts == "decided":
                    decided.setdefault(c.id, (c, set()))[1].add(o.offer.group)
        self.decided_caps = tuple((c, frozenset(groups)) for c, groups in decided.values())
        self.reserves = bool(decided) or any(b.counts == "decided" for o in self.offers.values() for b in o.budgets)
        sources = [self.sources[k] for k in sorted(self.sources)] if self.sources else []
        self.context_paths = needed_paths(sources)
        self.uses = frozenset().union(*(b.rule.uses for o in self.offers.values() for b in (*o.rules, *o.weights)))

    @property
    def version(self) -> str:
        """``<number>-<hash>``: what every decision records."""
        return f"{self.number}-{self.content_hash[:12]}" if self.number else self.content_hash[:12]


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of one policy file (``policies/policy-set.schema.json``)."""
    schema = PolicySetFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "nba policy set file"
    schema["description"] = (
        "One *.yaml file of an nba policy set. All files of the folder together declare channels, "
        "the context schema, groups, offers and policies."
    )
    return schema


def content_hash(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()
