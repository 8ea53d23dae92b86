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

from datetime import datetime
from typing import TYPE_CHECKING

from bandit import flatten
from nba.errors import Problem
from nba.policies import Budget, ContactCap
from nba.rules import activation

if TYPE_CHECKING:
    from nba.policy_set import PolicySet

__all__ = ["static_checks"]

SAMPLES = 150


def static_checks(policy_set: PolicySet, now: datetime) -> list[Problem]:
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
    samples = [activation(flatten(s), "", "sample", now, {}, {}) for s in policy_set.schema.samples(SAMPLES)]
    always_false: dict[str, bool] = {}
    for compiled in policy_set.offers.values():
        if compiled.offer.status != "live":
            continue
        reachable = False
        for variables in samples:
            passed = True
            for bound in compiled.rules:
                ok, _ = bound.rule.evaluate(variables)
                always_false.setdefault(bound.policy, True)
                if ok:
                    always_false[bound.policy] = False
                passed = passed and ok
            reachable = reachable or passed
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
