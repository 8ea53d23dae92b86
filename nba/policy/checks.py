"""Static checks of a policy set: what is legal but almost certainly a mistake.

Reported as warnings with the set (validation, publish and preview show them); none refuses
a set. Checks that need contexts use samples drawn from the declared context schema, so they
are as good as the schema is complete:

* a channel with no live fallback (its customers may get nothing);
* an offer still ``live`` after its ``valid_until``;
* a cap or budget of zero (the offer can never be shown; pause it instead);
* a policy that covers no offer;
* a rule that is false for every sampled context, and an offer that every sampled context
  filters out (unreachable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bandit import flatten
from nba.errors import Problem
from nba.policy.policies import Budget, ContactCap
from nba.policy.rules import activation

if TYPE_CHECKING:
    from nba.policy.policy_set import BoundRule, CompiledOffer, PolicySet

__all__ = ["SAMPLES", "TYPED_SAMPLES", "Sampled", "sample_contexts", "sample_rules", "static_checks"]

#: contexts drawn from the schema for the checks below
SAMPLES = 150
#: of those, the first ones on which validation looks for type errors (refusing the set)
TYPED_SAMPLES = 40


@dataclass
class Sampled:
    """What each distinct engagement rule of a set (by ``id`` of its ``Rule``) gives on the
    sampled contexts.

    Every rule is evaluated on the first ``typed`` samples (the type check needs them all);
    on the others only when a check needs to know (``full``): whether a rule is ever true, or
    an offer ever reachable, is nearly always settled by the first samples."""

    samples: list[Any]
    typed: int
    #: bit i set when the rule holds (yields true) on sample i, of the samples evaluated
    holds: dict[int, int] = field(default_factory=dict)
    #: the first type error within the first ``typed`` samples, in sample order
    errors: dict[int, str] = field(default_factory=dict)
    #: rules evaluated on every sample
    complete: set[int] = field(default_factory=set)

    def full(self, rule: Any) -> int:
        """The rule's bits over every sample (evaluating those not evaluated yet)."""
        key = id(rule)
        if key not in self.complete:
            bits = self.holds.get(key, 0)
            for index in range(self.typed, len(self.samples)):
                if rule.evaluate(self.samples[index])[0]:
                    bits |= 1 << index
            self.holds[key] = bits
            self.complete.add(key)
        return self.holds[key]


def type_error(error: str) -> bool:
    """Whether an evaluation error means a rule compares or returns the wrong type."""
    return error.startswith("type mismatch") or "not a boolean" in error or "not a finite number" in error


def sample_contexts(policy_set: PolicySet, now: datetime, count: int = SAMPLES) -> list[Any]:
    """``count`` activations drawn from the set's schema (the first ones are its corners)."""
    return [activation(flatten(s), "", "sample", now, {}, {}) for s in policy_set.schema.samples(count)]


def sample_rules(policy_set: PolicySet, samples: list[Any], typed: int = TYPED_SAMPLES) -> Sampled:
    """Evaluates every distinct engagement rule of the set on the first ``typed`` samples.

    A rule that serves many offers (a group policy, an eligibility text several offers share)
    is one ``Rule`` object: it is evaluated once, not once per offer, which made the checks of
    a large set cost offers x rules x samples CEL calls. One CEL call per rule is faster here
    than the channels' rule batches (a batch's list is built whole, and Decide's activation
    holds only what the rules read, a sample's holds every field)."""
    typed = min(typed, len(samples))
    sampled = Sampled(samples, typed)
    holds, errors = sampled.holds, sampled.errors
    for compiled in policy_set.offers.values():
        for bound in compiled.rules:
            rule = bound.rule
            key = id(rule)
            if key in holds:
                continue
            bits = 0
            for index in range(typed):
                ok, error = rule.evaluate(samples[index])
                if ok:
                    bits |= 1 << index
                elif error is not None and key not in errors and type_error(error):
                    errors[key] = error
            holds[key] = bits
            if typed == len(samples):
                sampled.complete.add(key)
    return sampled


def static_checks(policy_set: PolicySet, now: datetime, sampled: Sampled | None = None) -> list[Problem]:
    """The set's warnings; ``sampled``: its rules on ``sample_contexts(policy_set, now)``
    when validation evaluated them already."""
    found: list[Problem] = []

    def warn(message: str, file: str = "", offer: str = "", policy: str = "", field: str = "") -> None:
        found.append(Problem(message, file, offer, policy, field, severity="warning"))

    for channel in policy_set.channels:
        if channel not in policy_set.fallback:
            warn(f"channel '{channel}' has no live fallback offer: when nothing is eligible, it gets nothing")
    for compiled in policy_set.offers.values():
        offer = compiled.offer
        if offer.status == "live" and offer.valid_until is not None and offer.valid_until <= now:
            warn(
                f"expired on {offer.valid_until.date().isoformat()} but its status is still live",
                file=compiled.source,
                offer=offer.id,
                field="status",
            )
    covered: set[str] = set()
    for compiled in policy_set.offers.values():
        covered.update(p.policy for p in (*compiled.rules, *compiled.weights))
        covered.update(p.id for p in (*compiled.caps, *compiled.suppressions, *compiled.budgets))
    for policy in policy_set.policies.values():
        if isinstance(policy, (ContactCap, Budget)) and policy.max == 0 and policy.enabled:
            warn("max is 0: the offers it covers can never be shown (pause them instead)", policy=policy.id, field="max")
        if policy.enabled and policy.id not in covered:
            warn("covers no offer", policy=policy.id, field="applies_to")

    if not policy_set.schema:
        warn(
            "no context schema declared: rules are not checked against field names and types, "
            "and unreachable offers are not detected"
        )
        return found
    samples = sample_contexts(policy_set, now)
    # Each distinct rule is evaluated once per sample (group policies and shared eligibility
    # texts serve many offers), its results kept as a bit mask over the samples: an offer is
    # reachable when the masks of its rules have a bit in common.
    # The first samples nearly always settle both questions; the rest are evaluated for the
    # rules and offers they do not settle (``Sampled.full``), with the same answers.
    sampled = sampled or sample_rules(policy_set, samples)
    masks = sampled.holds
    always_false: dict[str, bool] = {}
    everything = (1 << len(samples)) - 1
    for compiled in policy_set.offers.values():
        if compiled.offer.status != "live":
            continue
        passed = everything
        for bound in compiled.rules:
            bits = masks[id(bound.rule)] or sampled.full(bound.rule)
            always_false.setdefault(bound.policy, True)
            if bits:
                always_false[bound.policy] = False
            passed &= bits
        if not passed and compiled.rules:
            passed = everything
            for bound in compiled.rules:
                passed &= sampled.full(bound.rule)
        reachable = bool(passed)
        if not reachable and compiled.rules:
            warn("its rules filter every sampled context: it looks unreachable", file=compiled.source, offer=compiled.id)
    for policy_id, false in always_false.items():
        if not false:
            continue
        if policy_id.endswith(".eligibility"):
            offer_id = policy_id[: -len(".eligibility")]
            warn(
                "eligibility is false for every sampled context",
                file=policy_set.offers[offer_id].source,
                offer=offer_id,
                field="eligibility",
            )
        else:
            warn("rule is false for every sampled context of the offers it covers", policy=policy_id, field="rule")
    return found


def type_check(policy_set: PolicySet, now: datetime) -> tuple[Sampled, list[tuple[CompiledOffer, BoundRule, str]]]:
    """Evaluates every rule on contexts sampled from the schema: a type mismatch there is a
    rule that compares a field with the wrong type. Returns the engagement rules' results on
    the samples (the static checks use the same ones) and, once per policy, (offer, rule,
    error) for each rule that failed on a type."""
    samples = sample_contexts(policy_set, now)
    # The schema's corners come first, all of them, however many: the type check reads what
    # ``schema.samples(TYPED_SAMPLES)`` gives, a prefix of the static checks' samples.
    typed = len(policy_set.schema.samples(TYPED_SAMPLES))
    results = sample_rules(policy_set, samples, typed)
    reported: set[str] = set()
    mismatches: list[tuple[CompiledOffer, BoundRule, str]] = []
    # A weight shared by many offers is evaluated once (by its rule object).
    weights: dict[int, str | None] = {}
    for compiled in policy_set.offers.values():
        for bound in (*compiled.rules, *compiled.weights):
            if bound.policy in reported:
                continue
            key = id(bound.rule)
            if bound.kind != "weight":
                error = results.errors.get(key)
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
                mismatches.append((compiled, bound, error))
    return results, mismatches
