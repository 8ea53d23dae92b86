"""The policy set: every ``*.yaml`` file of the policies folder, validated and compiled as one.

A policy set is the unit that is versioned, published and rolled back: channels, the context
schema, groups, offers and policies together. It is built all or nothing from a mapping of
file name to text (the folder, or a draft sent to the admin API): any error in any file
refuses the whole set, and every problem is reported at once, each naming the file, the offer
or policy, and the field. Files ending in ``_test.yaml`` hold examples (``nba.evaluation.examples``).

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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from nba.days import local_day, misaligned_day
from nba.errors import PolicySetError, Problem
from nba.policy.checks import TYPED_SAMPLES, Sampled, sample_contexts, sample_rules, static_checks, type_error
from nba.policy.offers import Group, Identifier, Offer
from nba.policy.policies import ENGAGEMENT, Budget, ContactCap, EngagementRule, Policy, Suppression, Weight
from nba.policy.rule_cost import check_call
from nba.policy.rules import Rule, RuleBatch, RuleSyntaxError
from nba.policy.schema import ContextSchema, FieldSpec, FieldType, needed_paths
from nba.yaml_loader import DuplicateKeyError, load_yaml

__all__ = [
    "EXAMPLE_SUFFIX",
    "MAX_OFFERS",
    "MAX_POLICIES",
    "PolicySetFile",
    "BoundRule",
    "CompiledOffer",
    "PolicySet",
    "load_policy_set",
    "parse_policy_set",
    "read_files",
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
    """The engagement rules of every offer on one channel, as one ``RuleBatch``: each distinct
    rule once (a group policy that does not name the offer serves every offer it covers), and
    for each offer, which results to read, in screening order."""

    def __init__(self, channel: str, offers: list[CompiledOffer]) -> None:
        rules: list[Rule] = []
        index: dict[int, int] = {}
        self.elements: dict[str, list[tuple[int, BoundRule]]] = {}
        for compiled in offers:
            steps = []
            for bound in compiled.rules:
                if bound.channels and channel not in bound.channels:
                    continue
                key = id(bound.rule)
                if key not in index:
                    index[key] = len(rules)
                    rules.append(bound.rule)
                steps.append((index[key], bound))
            self.elements[compiled.id] = steps
        self.batch = RuleBatch(rules)


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
            o.caps or o.suppressions or any(r.rule.uses_contacts for r in (*o.rules, *o.weights))
            for o in self.offers.values()
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


def read_files(directory: str | Path) -> dict[str, str]:
    """The set's files in ``directory`` (``*.yaml``, examples excluded), by name.

    Raises ``PolicySetError`` naming every file that cannot be read as UTF-8 text (not UTF-8,
    a directory, unreadable) and the directory when it is not one."""
    root = Path(directory)
    if not root.is_dir():
        raise PolicySetError([Problem(f"{root}: not a directory (set --policies or NBA_POLICIES)")])
    files: dict[str, str] = {}
    problems: list[Problem] = []
    for path in sorted(root.glob("*.yaml")):
        if path.name.endswith(EXAMPLE_SUFFIX):
            continue
        try:
            data = path.read_bytes()
        except IsADirectoryError:
            problems.append(Problem("is a directory, not a file: policy files are the *.yaml files of the folder "
                                    "itself (rename the directory, or move its files up)", file=path.name))
            continue
        except OSError as exc:
            problems.append(Problem(f"cannot be read: {exc.strerror or exc}", file=path.name))
            continue
        try:
            files[path.name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[:exc.start]
            line = before.count(b"\n") + 1
            column = len(before.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")) + 1
            problems.append(Problem(f"line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8 text "
                                    "(save the file as UTF-8)", file=path.name))
    if problems:
        raise PolicySetError(problems)
    return files


def load_policy_set(directory: str | Path, now: datetime | None = None) -> PolicySet:
    """Loads, validates and compiles the policy set in ``directory``."""
    files = read_files(directory)
    if not files:
        raise PolicySetError([Problem(f"{directory}: no *.yaml policy files")])
    return parse_policy_set(files, now)


def content_hash(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()


def parse_policy_set(files: Mapping[str, str], now: datetime | None = None, *, sampled: bool = True) -> PolicySet:
    """Validates and compiles a set from file texts; raises ``PolicySetError`` with every
    problem (warnings included) when any is an error. ``sampled=False`` skips what evaluates
    rules (the type check and the checks on sampled contexts, ``nba.policy.checks``): for a draft a
    child process has validated already (``nba.policy.sandbox``), whose warnings the caller has."""
    builder = _Builder(now or datetime.now(UTC))
    builder.sampled = sampled
    try:
        policy_set = builder.build(files)
        if policy_set is not None:
            policy_set.warnings = builder.problems + (
                static_checks(policy_set, builder.now, builder.sample_results) if sampled else [])
    except BaseException as exc:  # a file that trips something unforeseen (a panic too) is refused, never a crash
        if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise
        log.exception("validating a policy set failed")
        raise PolicySetError([*builder.problems, Problem(f"could not be validated ({type(exc).__name__}: {exc})")]) from None
    if policy_set is None:
        raise PolicySetError(builder.problems)
    errors = [p for p in policy_set.warnings if p.severity == "error"]
    if errors:
        raise PolicySetError(policy_set.warnings)
    return policy_set


_POLICY = TypeAdapter(Policy)
_OFFER = TypeAdapter(Offer)


class _Builder:
    def __init__(self, now: datetime) -> None:
        #: whether rules are evaluated on sampled contexts (``parse_policy_set``)
        self.sampled = True
        self.now = now
        self.problems: list[Problem] = []
        self.policy_files: dict[str, str] = {}
        #: ids of entries that failed validation: references to them are not errors again
        self.broken: set[str] = set()
        #: rules that compiled and name only declared fields, by source
        self.rules: dict[str, Rule] = {}
        #: the engagement rules on the schema's sample contexts (None: not evaluated)
        self.sample_results: Sampled | None = None

    def error(self, message: str, **where: str) -> None:
        self.problems.append(Problem(message, **where))

    def build(self, files: Mapping[str, str]) -> PolicySet | None:
        if not any(not name.endswith(EXAMPLE_SUFFIX) for name in files):
            self.error("no policy files")
            return None
        parsed: list[tuple[str, PolicySetFile]] = []
        for name in sorted(files):
            if name.endswith(EXAMPLE_SUFFIX):
                continue
            if not name.endswith(".yaml"):
                self.error("policy files must end in .yaml", file=name)
                continue
            document = self._parse(name, files[name])
            if document is not None:
                parsed.append((name, document))

        settings, channels, schema_fields, groups = self._merge_sections(parsed)
        if parsed and not channels:
            self.error("no file declares `channels:` (for example channels: [web, app])")
        schema = ContextSchema(schema_fields)

        offers: dict[str, tuple[Offer, str]] = {}
        # Once the set declares groups, an offer's group must be one of them: a misspelt group
        # would otherwise escape the group's policies and lever without a word.
        declared = sorted(groups)
        for name, doc in parsed:
            for offer in doc.offers:
                if offer.id in offers:
                    self.error(f"id already used in {offers[offer.id][1]}", file=name, offer=offer.id)
                    continue
                unknown = [c for c in offer.channels if c not in channels]
                if unknown:
                    self.error(
                        f"{', '.join(unknown)} not declared (declared: {', '.join(channels)})",
                        file=name, offer=offer.id, field="channels",
                    )
                offers[offer.id] = (offer, name)
                if offer.group and offer.group not in groups:
                    if declared:
                        self.error(f"group '{offer.group}' is not declared (groups: {', '.join(declared)}); "
                                   "declare it under groups:, or correct the name", file=name, offer=offer.id, field="group")
                    else:
                        groups[offer.group] = Group()
        if len(offers) > MAX_OFFERS:
            self.error(f"{len(offers)} offers, more than the {MAX_OFFERS} a policy set may hold (validation, publish "
                       "and Decide are measured up to that size; split the catalogue, or retire expired offers)")
        policies: dict[str, tuple[Any, str]] = {}
        for name, doc in parsed:
            for policy in doc.policies:
                if policy.id in policies:
                    self.error(f"id already used in {policies[policy.id][1]}", file=name, policy=policy.id)
                    continue
                policies[policy.id] = (policy, name)
                self._check_applies_to(policy, name, offers, groups, channels)
        self.policy_files = {pid: name for pid, (_, name) in policies.items()}
        if len(policies) > MAX_POLICIES:
            self.error(f"{len(policies)} policies, more than the {MAX_POLICIES} a policy set may hold")
        if len(offers) > MAX_OFFERS or len(policies) > MAX_POLICIES:
            return None  # not worth compiling: it is refused

        fallbacks: dict[str, str] = {}
        for offer, name in offers.values():
            if offer.fallback and offer.status == "live":
                for channel in offer.channels:
                    if channel in fallbacks:
                        self.error(
                            f"channel '{channel}' already has fallback '{fallbacks[channel]}' (one per channel)",
                            file=name, offer=offer.id, field="fallback",
                        )
                    fallbacks[channel] = offer.id

        # Compile every rule once (syntax, variables, field names), then bind per offer.
        templates: dict[str, Rule] = {}
        for policy, name in policies.values():
            source = getattr(policy, "rule", None) or getattr(policy, "weight", None)
            if source is not None:
                rule = self._rule(source, schema, file=name, policy=policy.id, field="rule" if isinstance(policy, EngagementRule) else "weight")
                if rule is not None:
                    templates[policy.id] = rule
        # Which policies may cover an offer, found through its id and group rather than by
        # asking every policy about every offer (policies grow with offers: that was quadratic).
        ordered = list(policies.values())
        everyone: list[int] = []
        by_offer: dict[str, list[int]] = {}
        by_group: dict[str, list[int]] = {}
        for i, (policy, _) in enumerate(ordered):
            target = policy.applies_to
            if not target.offers and not target.groups:
                everyone.append(i)
            for offer_id in target.offers:
                by_offer.setdefault(offer_id, []).append(i)
            for group in target.groups:
                by_group.setdefault(group, []).append(i)
        compiled: dict[str, CompiledOffer] = {}
        for offer, name in offers.values():
            own = self._rule(offer.eligibility, schema, file=name, offer=offer.id, field="eligibility")
            candidates = sorted({*everyone, *by_offer.get(offer.id, ()), *by_group.get(offer.group, ())})
            compiled[offer.id] = self._compile_offer(offer, name, own, [ordered[i] for i in candidates], templates, groups)
        if any(p.severity == "error" for p in self.problems):
            return None
        too_costly = check_call(compiled.values())  # before any rule is evaluated (nba.policy.rule_cost)
        if too_costly is not None:
            policy_id, message = too_costly
            if policy_id.endswith(".eligibility"):
                self.error(message, offer=policy_id.removesuffix(".eligibility"), field="eligibility")
            else:
                self.error(message, file=self._file_of(policy_id), policy=policy_id, field="rule")
            return None
        sources = {pid: rule.source for pid, rule in templates.items()}
        sources.update({f"{oid}.eligibility": o.eligibility for oid, (o, _) in offers.items() if o.eligibility.strip() != "true"})
        policy_set = PolicySet(
            sources=sources,
            channels=tuple(channels),
            offers=compiled,
            groups=groups,
            policies={pid: p for pid, (p, _) in policies.items()},
            schema=schema,
            timezone=ZoneInfo(settings.timezone),
            files=dict(files),
            content_hash=content_hash(files),
        )
        if schema and self.sampled:
            self._type_check(policy_set)
            if any(p.severity == "error" for p in self.problems):
                return None
        return policy_set

    def _merge_sections(
        self, parsed: list[tuple[str, PolicySetFile]]
    ) -> tuple[SetSettings, list[str], dict[str, FieldSpec], dict[str, Group]]:
        """The set-wide sections (settings, channels, schema, groups) of every file, merged.

        Each file contributes all of its sections, whichever file it is and in whatever
        order the files come: a section may be split over files, and declaring the same
        setting, group or schema field twice (differently, for the schema) is an error
        naming both files."""
        settings, settings_file = SetSettings(), ""
        channels: list[str] = []
        schema_fields: dict[str, FieldSpec] = {}
        schema_files: dict[str, str] = {}
        groups: dict[str, Group] = {}
        group_files: dict[str, str] = {}
        for name, doc in parsed:
            if doc.settings is not None:
                if settings_file:
                    self.error(f"settings already given in {settings_file} (give them once)", file=name, field="settings")
                else:
                    settings, settings_file = doc.settings, name
            channels.extend(c for c in doc.channels if c not in channels)
            for path, value in doc.context_schema.items():
                spec = value if isinstance(value, FieldSpec) else FieldSpec(type=value)
                if path in schema_fields:
                    if schema_fields[path] != spec:
                        self.error(f"declared differently in {schema_files[path]}", file=name, field=f"schema.{path}")
                    continue
                schema_fields[path], schema_files[path] = spec, name
            for group_name, group in doc.groups.items():
                if group_name in groups:
                    self.error(f"group '{group_name}' already declared in {group_files[group_name]}",
                               file=name, field=f"groups.{group_name}")
                    continue
                groups[group_name], group_files[group_name] = group, name
        below: dict[str, str] = {}  # a path -> one field declared below it
        for path in schema_fields:
            parts = path.split(".")
            for i in range(1, len(parts)):
                below.setdefault(".".join(parts[:i]), path)
        for path, spec in schema_fields.items():
            inner = below.get(path)
            if inner is not None and spec.type != "map":
                self.error(f"is a {spec.type}, so '{inner}' cannot be below it (declare it a map, or drop one)",
                           file=schema_files[path], field=f"schema.{path}")
        misaligned = misaligned_day(ZoneInfo(settings.timezone), self.now.date())
        if misaligned is not None:
            begins = datetime.fromtimestamp(local_day(ZoneInfo(settings.timezone), misaligned).start, UTC)
            self.error(f"'{settings.timezone}': its day of {misaligned.isoformat()} begins at {begins:%H:%M:%S} UTC, "
                       "not on a quarter hour: budget days are counted in quarter hours (UTC), so its daily budgets "
                       "could not be exact; choose a zone whose offsets are whole quarter hours",
                       file=settings_file, field="settings.timezone")
        return settings, channels, schema_fields, groups

    def _parse(self, name: str, text: str) -> PolicySetFile | None:
        try:
            raw = load_yaml(text, name)
        except DuplicateKeyError as exc:
            self.problems.extend(_duplicate(name, each) for each in exc.duplicates or (exc,))
            return None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            self.error(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", file=name)
            return None
        if raw is None:
            return PolicySetFile()
        if not isinstance(raw, Mapping):
            self.error(f"expected a mapping of sections (channels, offers, policies, ...), got {type(raw).__name__}", file=name)
            return None
        # Offers and policies are validated one by one, so that one broken entry does not hide
        # the problems of the others.
        entries: dict[str, list[Any]] = {}
        for section in ("offers", "policies"):
            value = raw.get(section) or []
            if not isinstance(value, list):
                self.error(f"expected a list, got {type(value).__name__}", file=name, field=section)
                value = []
            entries[section] = value
        try:
            document = PolicySetFile.model_validate({k: v for k, v in raw.items() if k not in entries})
        except ValidationError as exc:
            for error in exc.errors():
                if not _other_branch(error):
                    self.problems.append(_describe(name, raw, error))
            document = None
        valid: dict[str, list[Any]] = {"offers": [], "policies": []}
        for section, adapter in (("offers", _OFFER), ("policies", _POLICY)):
            for i, entry in enumerate(entries[section]):
                try:
                    valid[section].append(adapter.validate_python(entry))
                except ValidationError as exc:
                    if isinstance(entry, Mapping) and entry.get("id"):
                        self.broken.add(str(entry["id"]))
                    for error in exc.errors():
                        located = dict(error, loc=(section, i, *error["loc"]))
                        self.problems.append(_describe(name, raw, located))
        if document is None:
            return None
        document.offers = valid["offers"]
        document.policies = valid["policies"]
        return document

    def _check_applies_to(self, policy: Any, name: str, offers: Mapping[str, Any], groups: Mapping[str, Any], channels: list[str]) -> None:
        target = policy.applies_to
        for offer_id in target.offers:
            if offer_id not in offers and offer_id not in self.broken:
                self.error(f"no offer '{offer_id}'", file=name, policy=policy.id, field="applies_to.offers")
        for group in target.groups:
            if group not in groups:
                known = ", ".join(sorted(g for g in groups if g)) or "none"
                self.error(f"no group '{group}' (groups: {known})", file=name, policy=policy.id, field="applies_to.groups")
        for channel in target.channels:
            if channel not in channels:
                self.error(f"channel '{channel}' not declared", file=name, policy=policy.id, field="applies_to.channels")
        if isinstance(policy, Budget) and target.channels:
            self.error("a budget counts events on every channel: it cannot be restricted to channels "
                       "(give the channel its own offer instead)", file=name, policy=policy.id, field="applies_to.channels")

    def _rule(self, source: str, schema: ContextSchema, **where: str) -> Rule | None:
        # Offers of one set often share an eligibility text: it is compiled and checked once,
        # and the offers share the Rule (a request then evaluates it once for all of them).
        rule = self.rules.get(source)
        if rule is not None:
            return rule
        try:
            rule = Rule(source)
        except RuleSyntaxError as exc:
            self.error(str(exc), **where)
            return None
        for path, column in schema.unknown_paths(source):
            self.error(f"line 1, column {column}: field '{path}' is not in the context schema", **where)
            return None
        self.rules[source] = rule
        return rule

    def _compile_offer(
        self,
        offer: Offer,
        name: str,
        own: Rule | None,
        policies: list[tuple[Any, str]],
        templates: Mapping[str, Rule],
        groups: Mapping[str, Group],
    ) -> CompiledOffer:
        """The offer with the rules of ``policies`` (those that may cover it, in declaration
        order) bound to it."""
        literal = offer.as_cel()
        rules: dict[str, list[BoundRule]] = {kind: [] for kind in ENGAGEMENT}

        def bind(rule: Rule, **where: str) -> Rule | None:
            try:
                return rule.bind(literal)
            except RuleSyntaxError as exc:
                self.error(f"cannot be applied to offer '{offer.id}': {exc}", **where)
                return None

        if own is not None and own.source.strip() != "true":
            bound = bind(own, file=name, offer=offer.id, field="eligibility")
            if bound is not None:
                rules["eligibility"].append(BoundRule("eligibility", f"{offer.id}.eligibility", bound))
        caps: list[ContactCap] = []
        suppressions: list[Suppression] = []
        budgets: list[Budget] = []
        weights: list[BoundRule] = []
        for policy, _ in policies:
            if not policy.enabled or not policy.applies_to.covers(offer):
                continue
            if offer.fallback and offer.id not in policy.applies_to.offers:
                continue  # the last resort answers only to policies that name it
            channels = frozenset(policy.applies_to.channels)
            if isinstance(policy, EngagementRule) and policy.id in templates:
                bound = bind(templates[policy.id], policy=policy.id, field="rule")
                if bound is not None:
                    rules[policy.type].append(BoundRule(policy.type, policy.id, bound, channels))
            elif isinstance(policy, Weight) and policy.id in templates:
                bound = bind(templates[policy.id], policy=policy.id, field="weight")
                if bound is not None:
                    weights.append(BoundRule("weight", policy.id, bound, channels))
            elif isinstance(policy, ContactCap):
                caps.append(policy)
            elif isinstance(policy, Suppression):
                suppressions.append(policy)
            elif isinstance(policy, Budget):
                budgets.append(policy)
        group = groups.get(offer.group)
        return CompiledOffer(
            offer=offer,
            source=name,
            rules=tuple(r for kind in ENGAGEMENT for r in rules[kind]),
            caps=tuple(caps),
            suppressions=tuple(suppressions),
            budgets=tuple(budgets),
            weights=tuple(weights),
            lever=offer.lever * (group.lever if group else 1.0),
            timed=offer.status != "live" or offer.valid_from is not None or offer.valid_until is not None
            or offer.schedule is not None,
            held=bool(caps or suppressions or budgets),
        )

    def _type_check(self, policy_set: PolicySet) -> None:
        """Evaluates every rule on contexts sampled from the schema: a type mismatch there is
        a rule that compares a field with the wrong type. Keeps the engagement rules' results
        (``self.sample_results``) for the static checks, which use the same samples."""
        samples = sample_contexts(policy_set, self.now)
        # The schema's corners come first, all of them, however many: the type check reads
        # what ``schema.samples(TYPED_SAMPLES)`` gives, a prefix of the static checks' samples.
        typed = len(policy_set.schema.samples(TYPED_SAMPLES))
        self.sample_results = sample_rules(policy_set, samples, typed)
        reported: set[str] = set()
        # A weight shared by many offers is evaluated once (by its rule object).
        weights: dict[int, str | None] = {}
        for compiled in policy_set.offers.values():
            for bound in (*compiled.rules, *compiled.weights):
                if bound.policy in reported:
                    continue
                key = id(bound.rule)
                if bound.kind != "weight":
                    error = self.sample_results.errors.get(key)
                else:
                    if key not in weights:
                        weights[key] = None
                        for variables in samples[:typed]:
                            _, found = bound.rule.evaluate_number(variables)
                            if found and type_error(found):
                                weights[key] = found
                                break
                    error = weights[key]
                if error is not None:
                    reported.add(bound.policy)
                    where = (
                        {"offer": compiled.id, "field": "eligibility"}
                        if bound.policy.endswith(".eligibility")
                        else {"policy": bound.policy, "field": "weight" if bound.kind == "weight" else "rule"}
                    )
                    self.error(f"{error} (on the declared context schema)",
                               file=compiled.source if "offer" in where else self._file_of(bound.policy), **where)

    def _file_of(self, policy_id: str) -> str:
        return self.policy_files.get(policy_id, "")


def _describe(file: str, raw: Mapping[str, Any], error: Mapping[str, Any]) -> Problem:
    """Turns a pydantic error location into a located ``Problem``."""
    loc = [part for part in error["loc"] if not (isinstance(part, str) and _UNION_TAG.match(part))]
    message = error["msg"].removeprefix("Value error, ") + _yaml_hint(error)
    if error["type"] == "extra_forbidden":
        message = "unknown field (misspelt?)"
    if len(loc) >= 2 and loc[0] in ("offers", "policies") and isinstance(loc[1], int):
        entries = raw.get(loc[0]) or []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        entry_id = entry.get("id") if isinstance(entry, Mapping) else None
        rest = loc[2:]
        if loc[0] == "policies" and rest and isinstance(entry, Mapping) and rest[0] == entry.get("type"):
            rest = rest[1:]  # the discriminated union adds the type as a location step
        field_name = ".".join(str(part) for part in rest)
        if loc[0] == "policies" and error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field_name = "type"
        key = "offer" if loc[0] == "offers" else "policy"
        if entry_id:
            return Problem(message, file=file, field=field_name, **{key: str(entry_id)})
        return Problem(message, file=file, field=f"{loc[0]}[{loc[1]}]" + (f".{field_name}" if field_name else ""))
    return Problem(message, file=file, field=".".join(str(part) for part in loc))


def _duplicate(file: str, exc: DuplicateKeyError) -> Problem:
    """A key given twice, located by offer or policy and field where it is inside one."""
    mark = exc.problem_mark
    message = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}" if mark else str(exc.problem)
    path = list(exc.path)
    where: dict[str, str] = {}
    if len(path) >= 2 and path[0] in ("offers", "policies") and isinstance(path[1], int) and exc.entry_id:
        where["offer" if path[0] == "offers" else "policy"] = exc.entry_id
        path = path[2:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return Problem(message, file=file, field=field, **where)


#: how pydantic names the member of a union in an error's location (a schema field is a type
#: name or a FieldSpec mapping)
_UNION_TAG = re.compile(r"^(?:literal|function-(?:after|before|wrap|plain))\[")


def _other_branch(error: Mapping[str, Any]) -> bool:
    """Whether the error comes from the member of a union the value plainly was not written
    for: the type name's, when a mapping was given; the mapping's, when anything else was."""
    tags = [p for p in error["loc"] if isinstance(p, str) and _UNION_TAG.match(p)]
    if not tags:
        return False
    if tags[-1].startswith("literal["):
        return isinstance(error.get("input"), Mapping)
    return error["type"] in ("model_type", "dict_type")


def _yaml_hint(error: Mapping[str, Any]) -> str:
    """Why YAML gave a value that is not text where text is expected, and what to write."""
    if error["type"] != "string_type":
        return ""
    value = error.get("input")
    if isinstance(value, bool):
        return (f" (YAML read it as the boolean {str(value).lower()}: unquoted yes, no, on, off, true and false "
                "are booleans; quote the text, as in 'no')")
    if isinstance(value, (date, datetime)):
        return f" (YAML read it as a date: quote it, as in '{value.isoformat()}')"
    if isinstance(value, (int, float)):
        return f" (YAML read it as the number {value!r}: quote it, as in '{value}')"
    if value is None:
        return " (the value is empty)"
    return ""
