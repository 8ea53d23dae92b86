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
from nba.policies import Budget, ContactCap
from nba.rules import activation

if TYPE_CHECKING:
    from nba.policy_set import PolicySet

__all__ = ["SAMPLES", "TYPED_SAMPLES", "Sampled", "sample_contexts", "sample_rules", "static_checks"]

#: contexts drawn from the schema for the checks below
SAMPLES = 150
#: of those, the first ones on which validation looks for type errors (refusing the set)
TYPED_SAMPLES = 40


@dataclass
class Sampled:
    """What each distinct engagement rule of a set (by ``id`` of its ``Rule``) gives on the
    sampled contexts."""

    #: bit i set when the rule holds (yields true) on sample i
    holds: dict[int, int] = field(default_factory=dict)
    #: the first type error within the first ``TYPED_SAMPLES`` samples, in sample order
    errors: dict[int, str] = field(default_factory=dict)


def type_error(error: str) -> bool:
    """Whether an evaluation error means a rule compares or returns the wrong type."""
    return error.startswith("type mismatch") or "not a boolean" in error or "not a finite number" in error


def sample_contexts(policy_set: PolicySet, now: datetime, count: int = SAMPLES) -> list[Any]:
    """``count`` activations drawn from the set's schema (the first ones are its corners)."""
    return [activation(flatten(s), "", "sample", now, {}, {}) for s in policy_set.schema.samples(count)]


def sample_rules(policy_set: PolicySet, samples: list[Any], typed: int = TYPED_SAMPLES) -> Sampled:
    """Evaluates every distinct engagement rule of the set once per sample.

    A rule that serves many offers (a group policy, an eligibility text several offers share)
    is one ``Rule`` object: it is evaluated once, not once per offer, which made the checks of
    a large set cost offers x rules x samples CEL calls. One CEL call per rule is faster here
    than the channels' rule batches (a batch's list is built whole, and Decide's activation
    holds only what the rules read, a sample's holds every field)."""
    sampled = Sampled()
    holds, errors = sampled.holds, sampled.errors
    for compiled in policy_set.offers.values():
        for bound in compiled.rules:
            rule = bound.rule
            key = id(rule)
            if key in holds:
                continue
            bits = 0
            for index, variables in enumerate(samples):
                ok, error = rule.evaluate(variables)
                if ok:
                    bits |= 1 << index
                elif error is not None and index < typed and key not in errors and type_error(error):
                    errors[key] = error
            holds[key] = bits
    return sampled


def static_checks(policy_set: PolicySet, now: datetime, sampled: Sampled | None = None) -> list[Problem]:
    """The set's warnings; ``sampled``: its rules on ``sample_contexts(policy_set, now)``
    when validation evaluated them already."""
    found: list[Problem] = []

    def warn(message: str, **where: str) -> None:
        found.append(Problem(message, severity="warning", **where))

    for channel in policy_set.channels:
        if channel not in policy_set.fallback:
            warn(f"channel '{channel}' has no live fallback offer: when nothing is eligible, it gets nothing")
    for compiled in policy_set.offers.values():
        offer = compiled.offer
        if offer.status == "live" and offer.valid_until is not None and offer.valid_until <= now:
            warn(f"expired on {offer.valid_until.date().isoformat()} but its status is still live",
                 file=compiled.source, offer=offer.id, field="status")
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
        warn("no context schema declared: rules are not checked against field names and types, "
             "and unreachable offers are not detected")
        return found
    samples = sample_contexts(policy_set, now)
    # Each distinct rule is evaluated once per sample (group policies and shared eligibility
    # texts serve many offers), its results kept as a bit mask over the samples: an offer is
    # reachable when the masks of its rules have a bit in common.
    masks = (sampled or sample_rules(policy_set, samples)).holds
    always_false: dict[str, bool] = {}

    def mask(rule: Any) -> int:
        return masks[id(rule)]

    everything = (1 << len(samples)) - 1
    for compiled in policy_set.offers.values():
        if compiled.offer.status != "live":
            continue
        passed = everything
        for bound in compiled.rules:
            bits = mask(bound.rule)
            always_false.setdefault(bound.policy, True)
            if bits:
                always_false[bound.policy] = False
            passed &= bits
        reachable = bool(passed)
        if not reachable and compiled.rules:
            warn("its rules filter every sampled context: it looks unreachable",
                 file=compiled.source, offer=compiled.id)
    for policy_id, false in always_false.items():
        if not false:
            continue
        if policy_id.endswith(".eligibility"):
            offer_id = policy_id[: -len(".eligibility")]
            warn("eligibility is false for every sampled context", file=policy_set.offers[offer_id].source,
                 offer=offer_id, field="eligibility")
        else:
            warn("rule is false for every sampled context of the offers it covers", policy=policy_id, field="rule")
    return found
