"""Reading a policy set: the folder's files, parsed, validated and compiled all or nothing,
with every problem reported at once (``PolicySetError``), each naming its file, offer or
policy, and field."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from pydantic import TypeAdapter, ValidationError

from nba.days import local_day, misaligned_day
from nba.errors import PolicySetError, Problem
from nba.policy.checks import Sampled, static_checks, type_check
from nba.policy.offers import Group, Offer
from nba.policy.policies import ENGAGEMENT, Budget, ContactCap, EngagementRule, Policy, Suppression, Weight
from nba.policy.policy_set import (
    EXAMPLE_SUFFIX,
    MAX_OFFERS,
    MAX_POLICIES,
    BoundRule,
    CompiledOffer,
    PolicySet,
    PolicySetFile,
    SetSettings,
    content_hash,
)
from nba.policy.problems import describe_validation_error, duplicate_key_problem, other_branch
from nba.policy.profile import ProfileDefinition, compile_profile
from nba.policy.rule_cost import check_call
from nba.policy.rules import Rule, RuleSyntaxError
from nba.policy.schema import ContextSchema, FieldSpec, field_paths
from nba.yaml_loader import DuplicateKeyError, load_yaml

__all__ = ["load_policy_set", "parse_policy_set", "read_files"]

log = logging.getLogger(__name__)


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
            problems.append(
                Problem(
                    "is a directory, not a file: policy files are the *.yaml files of the folder "
                    "itself (rename the directory, or move its files up)",
                    file=path.name,
                )
            )
            continue
        except OSError as exc:
            problems.append(Problem(f"cannot be read: {exc.strerror or exc}", file=path.name))
            continue
        try:
            files[path.name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            column = len(before.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")) + 1
            problems.append(
                Problem(
                    f"line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8 text (save the file as UTF-8)",
                    file=path.name,
                )
            )
    if problems:
        raise PolicySetError(problems)
    return files


def load_policy_set(directory: str | Path, now: datetime | None = None) -> PolicySet:
    """Loads, validates and compiles the policy set in ``directory``."""
    files = read_files(directory)
    if not files:
        raise PolicySetError([Problem(f"{directory}: no *.yaml policy files")])
    return parse_policy_set(files, now)


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
                static_checks(policy_set, builder.now, builder.sample_results) if sampled else []
            )
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
        #: what rules may read as profile.NAME (none declared: whatever the context sends)
        self.profile_fields: frozenset[str] = frozenset()
        #: the engagement rules on the schema's sample contexts (None: not evaluated)
        self.sample_results: Sampled | None = None

    def error(self, message: str, file: str = "", offer: str = "", policy: str = "", field: str = "") -> None:
        self.problems.append(Problem(message, file, offer, policy, field))

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
        profile = self._profile(parsed)
        self.profile_fields = profile.names
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
                        file=name,
                        offer=offer.id,
                        field="channels",
                    )
                offers[offer.id] = (offer, name)
                if offer.group and offer.group not in groups:
                    if declared:
                        self.error(
                            f"group '{offer.group}' is not declared (groups: {', '.join(declared)}); "
                            "declare it under groups:, or correct the name",
                            file=name,
                            offer=offer.id,
                            field="group",
                        )
                    else:
                        groups[offer.group] = Group()
        if len(offers) > MAX_OFFERS:
            self.error(
                f"{len(offers)} offers, more than the {MAX_OFFERS} a policy set may hold (validation, publish "
                "and Decide are measured up to that size; split the catalogue, or retire expired offers)"
            )
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
                            file=name,
                            offer=offer.id,
                            field="fallback",
                        )
                    fallbacks[channel] = offer.id

        # Compile every rule once (syntax, variables, field names), then bind per offer.
        templates: dict[str, Rule] = {}
        for policy, name in policies.values():
            source = getattr(policy, "rule", None) or getattr(policy, "weight", None)
            if source is not None:
                rule = self._rule(
                    source, schema, file=name, policy=policy.id, field="rule" if isinstance(policy, EngagementRule) else "weight"
                )
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
            profile=profile,
        )
        if schema and self.sampled:
            self._type_check(policy_set)
            if any(p.severity == "error" for p in self.problems):
                return None
        return policy_set

    def _profile(self, parsed: list[tuple[str, PolicySetFile]]) -> ProfileDefinition:
        """The ``profile:`` section, given once in one file, checked and compiled."""
        given = [(name, doc.profile) for name, doc in parsed if doc.profile is not None]
        for name, _ in given[1:]:
            self.error(f"profile already given in {given[0][0]} (give it once, in one file)", file=name, field="profile")
        if not given:
            return ProfileDefinition()
        definition, problems = compile_profile(given[0][1], given[0][0])
        self.problems.extend(problems)
        return definition

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
                    self.error(
                        f"group '{group_name}' already declared in {group_files[group_name]}",
                        file=name,
                        field=f"groups.{group_name}",
                    )
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
                self.error(
                    f"is a {spec.type}, so '{inner}' cannot be below it (declare it a map, or drop one)",
                    file=schema_files[path],
                    field=f"schema.{path}",
                )
        misaligned = misaligned_day(ZoneInfo(settings.timezone), self.now.date())
        if misaligned is not None:
            begins = datetime.fromtimestamp(local_day(ZoneInfo(settings.timezone), misaligned).start, UTC)
            self.error(
                f"'{settings.timezone}': its day of {misaligned.isoformat()} begins at {begins:%H:%M:%S} UTC, "
                "not on a quarter hour: budget days are counted in quarter hours (UTC), so its daily budgets "
                "could not be exact; choose a zone whose offsets are whole quarter hours",
                file=settings_file,
                field="settings.timezone",
            )
        return settings, channels, schema_fields, groups

    def _parse(self, name: str, text: str) -> PolicySetFile | None:
        try:
            raw = load_yaml(text, name)
        except DuplicateKeyError as exc:
            self.problems.extend(duplicate_key_problem(name, each) for each in exc.duplicates or (exc,))
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
                if not other_branch(error):
                    self.problems.append(describe_validation_error(name, raw, error))
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
                        self.problems.append(describe_validation_error(name, raw, located))
        if document is None:
            return None
        document.offers = valid["offers"]
        document.policies = valid["policies"]
        return document

    def _check_applies_to(
        self, policy: Any, name: str, offers: Mapping[str, Any], groups: Mapping[str, Any], channels: list[str]
    ) -> None:
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
            self.error(
                "a budget counts events on every channel: it cannot be restricted to channels "
                "(give the channel its own offer instead)",
                file=name,
                policy=policy.id,
                field="applies_to.channels",
            )

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
        if self.profile_fields:
            for path, column in field_paths(source):
                name = path.split(".")[1] if path.startswith("profile.") else None
                if name is not None and name not in self.profile_fields:
                    self.error(
                        f"line 1, column {column}: '{name}' is not an attribute, computed attribute or activity of the "
                        f"profile ({', '.join(sorted(self.profile_fields))})",
                        **where,
                    )
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
            timed=offer.status != "live"
            or offer.valid_from is not None
            or offer.valid_until is not None
            or offer.schedule is not None,
            held=bool(caps or suppressions or budgets),
        )

    def _type_check(self, policy_set: PolicySet) -> None:
        """Reports the rules that compare a field with the wrong type (``checks.type_check``),
        keeping the sampled results for the static checks."""
        self.sample_results, mismatches = type_check(policy_set, self.now)
        for compiled, bound, error in mismatches:
            where = (
                {"offer": compiled.id, "field": "eligibility"}
                if bound.policy.endswith(".eligibility")
                else {"policy": bound.policy, "field": "weight" if bound.kind == "weight" else "rule"}
            )
            self.error(
                f"{error} (on the declared context schema)",
                file=compiled.source if "offer" in where else self._file_of(bound.policy),
                **where,
            )

    def _file_of(self, policy_id: str) -> str:
        return self.policy_files.get(policy_id, "")
