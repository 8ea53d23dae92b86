"""Screening: which offers a request may get, and for every other offer, which policy said no.

Each offer on the channel passes, in order (the first that fails is the reason logged):

    status            draft, paused or expired offers are never returned
    not_yet_valid     before valid_from
    expired           at or after valid_until
    schedule          outside the offer's days and hours
    eligibility       engagement rules, the offer's own `eligibility` first
    applicability       (each reports its policy id; a rule that cannot be evaluated
    suitability          for this context reports `rule_error` with the detail)
    contact_cap       too many contacts within a window
    suppression       after a rejection, or ignored impressions
    budget            the offer's budget for the day (or in total) is spent
    pacing            the budget's share for the time of day is spent

An eligible offer's arbitration multiplier is its value x levers x context weights. The
channel's fallback passes its dates, schedule, its own eligibility and the policies that name
it (``applies_to: {offers: [it]}``) only: group-wide and set-wide policies, caps and budgets
never hold back the last resort.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from nba.days import LocalDay, day_of, local_day
from nba.decision.contacts import ContactSummary, OfferCounters
from nba.decision.reservations import Claim, key
from nba.policy.policies import Budget
from nba.policy.policy_set import ChannelBatch, CompiledOffer, PolicySet
from nba.policy.rules import RuleError, activation, shown

__all__ = ["REASONS", "BudgetBurn", "Catalogue", "Screening", "Verdict", "budget_burn", "screen"]

REASONS = (
    "status",
    "not_yet_valid",
    "expired",
    "schedule",
    "eligibility",
    "applicability",
    "suitability",
    "rule_error",
    "contact_cap",
    "suppression",
    "budget",
    "pacing",
)
#: a daily budget under even pacing may run this share of the day ahead (at least 1 event)
PACING_BURST = 0.05
#: one context weight counts at most this much (a weight of 1e308 must not overflow a score)
MAX_WEIGHT = 1000.0


@dataclass(slots=True)
class Verdict:
    offer: CompiledOffer
    eligible: bool
    reason: str | None = None
    #: the policy that filtered the offer
    policy: str | None = None
    detail: str | None = None
    #: context weights multiplied (1.0 when none)
    weight: float = 1.0
    #: problems evaluating weights (each weight that failed counts as 1)
    weight_errors: tuple[str, ...] = ()
    #: the offer's place in its channel's ``Catalogue`` (-1: not screened on one)
    position: int = -1


class Catalogue:
    """The offers of one channel as arrays, in screening order, for ranking every eligible
    offer at once: ``values`` and ``levers`` (float64) and ``ids`` (objects). A verdict's
    ``position`` indexes them."""

    __slots__ = ("ids", "levers", "values")

    def __init__(self, offers: list[CompiledOffer]) -> None:
        self.values = np.fromiter((c.offer.value for c in offers), dtype=float, count=len(offers))
        self.levers = np.fromiter((c.lever for c in offers), dtype=float, count=len(offers))
        self.ids = np.empty(len(offers), dtype=object)
        self.ids[:] = [c.id for c in offers]


@dataclass(frozen=True, slots=True)
class Screening:
    #: a verdict for every non-fallback offer on the channel, in catalogue order
    verdicts: list[Verdict]
    #: the channel's fallback, with its own verdict, if it has one
    fallback: Verdict | None
    #: the channel's offers as arrays (verdicts' ``position`` index them)
    catalogue: Catalogue

    @property
    def eligible(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.eligible]


def screen(
    policy_set: PolicySet,
    channel: str,
    features: Mapping[str, Any],
    customer_id: str,
    now: datetime,
    summary: ContactSummary | None = None,
    counters: OfferCounters | None = None,
    private: Mapping[str, Any] | None = None,
) -> Screening:
    """Screens every offer on ``channel`` for a request whose context is flattened into
    ``features``. Without ``summary`` contact policies are skipped, without ``counters``
    budgets (the what-if preview screens that way). ``private``: the stored profile's
    personal fields, which rules read as ``profile.*`` but nothing logs."""
    contacts = (summary.offers, summary.groups) if summary is not None else ({}, {})
    built: list[Any] = []

    def variables() -> Any:
        """The request's CEL activation, built once and only when a rule needs CEL (a rule of
        a compiled shape answered here needs none)."""
        if not built:
            built.append(
                activation(
                    features,
                    channel,
                    customer_id,
                    now,
                    *contacts,
                    paths=policy_set.context_paths,
                    uses=policy_set.uses,
                    private=private,
                )
            )
        return built[0]

    local = now.astimezone(policy_set.timezone)
    batch = policy_set.batches.get(channel)
    results = batch.evaluate(features, variables) if batch is not None and batch.rules else []
    elements = batch.elements if batch is not None else {}
    state = _State(policy_set, channel, now, local, summary, counters, variables, results, elements)
    verdicts: list[Verdict] = []
    append = verdicts.append
    verdict_of = state.verdict
    plan, catalogue = _plan(policy_set, channel, batch)
    for position, (compiled, steps, passed) in enumerate(plan):
        # The common case inline (one call per offer showed in profiles): an offer with only
        # rules, read from the batch's results, and when they all hold, its verdict made once.
        if passed is None:
            verdict = verdict_of(compiled)
            verdict.position = position
            append(verdict)
            continue
        for index, failed in steps:
            result = results[index]
            if result is not True:
                if result is False:
                    append(failed)
                else:
                    verdict = verdict_of(compiled)
                    verdict.position = position
                    append(verdict)
                break
        else:
            append(passed)
    fallback = policy_set.fallback.get(channel)
    return Screening(verdicts, state.verdict(fallback, last_resort=True) if fallback else None, catalogue)


_Plan = list[tuple[CompiledOffer, tuple[tuple[int, Verdict], ...], Verdict | None]]
#: per channel batch (one a channel of a policy set): each offer on the channel, for an offer
#: with only rules with the index of each rule's result and the verdict when it is false, and
#: the verdict when they all hold (made once: a verdict is never changed once screening has
#: returned it, only replaced); (offer, (), None) for an offer that needs the whole screen.
#: And the channel's catalogue.
_PLANS: WeakKeyDictionary[ChannelBatch, tuple[_Plan, Catalogue]] = WeakKeyDictionary()


def _plan(policy_set: PolicySet, channel: str, batch: ChannelBatch | None) -> tuple[_Plan, Catalogue]:
    offers = policy_set.by_channel.get(channel, [])
    if batch is None:
        return [(compiled, (), None) for compiled in offers], Catalogue(offers)
    found = _PLANS.get(batch)
    if found is None:
        plan: _Plan = []
        for position, compiled in enumerate(offers):
            steps = batch.elements.get(compiled.id)
            if steps is None or compiled.timed or compiled.held or compiled.weights:
                plan.append((compiled, (), None))
            else:
                failing = tuple(
                    (index, Verdict(compiled, False, bound.kind, bound.policy, position=position)) for index, bound in steps
                )
                plan.append((compiled, failing, Verdict(compiled, True, position=position)))
        found = _PLANS[batch] = (plan, Catalogue(offers))
    return found


class _State:
    def __init__(
        self,
        policy_set: PolicySet,
        channel: str,
        now: datetime,
        local: datetime,
        summary: ContactSummary | None,
        counters: OfferCounters | None,
        variables: Callable[[], Any],
        results: list[Any] | None = None,
        elements: dict[str, Any] | None = None,
    ) -> None:
        self.policy_set = policy_set
        self.channel = channel
        self.now = now
        self.local = local
        self.summary = summary
        self.counters = counters
        #: builds (once) the request's CEL activation, for what the channel's batch did not answer
        self.variables = variables
        self._day: LocalDay | None = None
        #: the channel's rule results (RuleBatch), and per offer which to read
        self._results = results or []
        self._elements = elements or {}

    def verdict(self, compiled: CompiledOffer, last_resort: bool = False) -> Verdict:
        # The hot loop of every decision: one call per offer on the channel. Screens that
        # cannot apply are skipped before any call, and a rule is run directly, falling back
        # to Rule.evaluate only to explain a result that is not a plain boolean.
        if compiled.timed:
            outside = compiled.offer.outside(self.now, self.local)
            if outside:
                return Verdict(compiled, False, outside[0], None, outside[1])
        steps = self._elements.get(compiled.id)
        if steps is None:  # not screened in the channel's batch (the fallback): rule by rule
            steps = [(None, b) for b in compiled.rules if not b.channels or self.channel in b.channels]
        results = self._results
        for index, bound in steps:
            if index is not None:
                result = results[index]
            else:
                ok, error = bound.rule.evaluate(self.variables())
                result = RuleError(error) if error is not None else ok
            if result is True:
                continue
            if result is False:
                return Verdict(compiled, False, bound.kind, bound.policy)
            if isinstance(result, RuleError):
                return Verdict(compiled, False, "rule_error", bound.policy, str(result))
            return Verdict(compiled, False, "rule_error", bound.policy, f"returned {shown(result)}, not a boolean")
        if compiled.held and not last_resort:
            held = self._contact(compiled) or self._budget(compiled)
            if held:
                return held
        if not compiled.weights:
            return Verdict(compiled, True)
        weight, errors = 1.0, []
        for bound in compiled.weights:
            if bound.channels and self.channel not in bound.channels:
                continue
            value, error = bound.rule.evaluate_number(self.variables())
            if error is not None:
                errors.append(f"{bound.policy}: {error}")
            elif value is not None:
                weight *= min(max(0.0, value), MAX_WEIGHT)
        return Verdict(compiled, True, weight=weight, weight_errors=tuple(errors))

    def _contact(self, compiled: CompiledOffer) -> Verdict | None:
        summary = self.summary
        if summary is None:
            return None
        offer = compiled.offer
        for cap in compiled.caps:
            if not cap.applies_to.on(self.channel):
                continue
            count = summary.count(cap.counts, cap.window, cap.per, offer.id, offer.group)
            if count >= cap.max:
                return Verdict(
                    compiled,
                    False,
                    "contact_cap",
                    cap.id,
                    f"{count} {cap.counts} per {cap.per} within {_duration(cap.window)} (max {cap.max})",
                )
        for rule in compiled.suppressions:
            if not rule.applies_to.on(self.channel):
                continue
            until = summary.suppressed_until(rule.after, rule.ignored, rule.days, rule.per, offer.id, offer.group)
            if until is not None:
                why = "a rejection" if rule.after == "rejected" else f"{rule.ignored} ignored impressions"
                return Verdict(
                    compiled,
                    False,
                    "suppression",
                    rule.id,
                    f"after {why}, until {datetime.fromtimestamp(until, self.now.tzinfo).isoformat()}",
                )
        return None

    def _today(self) -> LocalDay:
        """The request's local day in the set's timezone (worked out once, when a daily budget
        first needs it)."""
        if self._day is None:
            self._day = local_day(self.policy_set.timezone, self.local.date())
        return self._day

    def _budget(self, compiled: CompiledOffer) -> Verdict | None:
        counters = self.counters
        if counters is None:
            return None
        for budget in compiled.budgets:
            if not budget.applies_to.on(self.channel):
                continue
            members = self.policy_set.budget_members.get(budget.id, (compiled.id,)) if budget.per == "policy" else (compiled.id,)
            if budget.period == "total":
                spent = sum(counters.total(m, budget.counts) for m in members)
            else:
                spent = sum(counters.since(m, budget.counts, self._today().start) for m in members)
            if spent >= budget.max:
                return Verdict(
                    compiled,
                    False,
                    "budget",
                    budget.id,
                    f"{spent} {budget.counts} {'today' if budget.period == 'day' else 'in total'} (max {budget.max})",
                )
            if budget.pacing == "even" and budget.period == "day":
                allowed = _paced(budget, compiled, self._today(), self.now.timestamp())
                if spent >= allowed:
                    return Verdict(
                        compiled,
                        False,
                        "pacing",
                        budget.id,
                        f"{spent} {budget.counts} by {self.local.strftime('%H:%M')}, "
                        f"{int(allowed)} allowed so far of {budget.max} today",
                    )
        return None


@dataclass(frozen=True)
class BudgetBurn:
    """How far a budget is spent now: ``spent`` of ``max`` events of kind ``counts`` today (or in
    total); ``offer_id`` empty for a budget shared by its offers (``per: policy``). ``expected``:
    what spending evenly through the day (or the offer's scheduled time) would have spent by now,
    for a daily budget; ``paced``: the budget is held to it (``pacing: even``)."""

    policy: str
    offer_id: str
    counts: str
    period: str
    max: int
    spent: int
    expected: float
    paced: bool


def budget_burn(policy_set: PolicySet, counters: OfferCounters, now: datetime) -> list[BudgetBurn]:
    """Every budget of the set as it stands at ``now``: one per covered offer (``per: offer``) or
    one per policy (``per: policy``), read from the same counters screening reads."""
    day = day_of(policy_set.timezone, now)
    at = now.timestamp()
    out: list[BudgetBurn] = []
    shared: set[str] = set()
    for compiled in policy_set.offers.values():
        for budget in compiled.budgets:
            if budget.per == "policy":
                if budget.id in shared:
                    continue
                shared.add(budget.id)
                members = policy_set.budget_members.get(budget.id, (compiled.id,))
                offer_id = ""
            else:
                members, offer_id = (compiled.id,), compiled.id
            if budget.period == "total":
                spent = sum(counters.total(m, budget.counts) for m in members)
                expected = float(budget.max)
            else:
                spent = sum(counters.since(m, budget.counts, day.start) for m in members)
                schedule = compiled.offer.schedule if offer_id else None
                expected = budget.max * (schedule.day_fraction(day, at) if schedule else day.fraction(at))
            out.append(
                BudgetBurn(
                    budget.id,
                    offer_id,
                    budget.counts,
                    budget.period,
                    budget.max,
                    spent,
                    expected,
                    budget.pacing == "even" and budget.period == "day",
                )
            )
    return out


def _paced(budget: Budget, compiled: CompiledOffer, day: LocalDay, at: float) -> float:
    """How much of a daily budget under even pacing may be spent by ``at`` (epoch seconds):
    its share of the local day passed in real time (a day of 23 or 25 hours on a clock
    change), or of the offer's scheduled time that day, plus the burst."""
    schedule = compiled.offer.schedule
    fraction = schedule.day_fraction(day, at) if schedule else day.fraction(at)
    return budget.max * fraction + max(1.0, math.ceil(budget.max * PACING_BURST))


def claims(
    policy_set: PolicySet,
    compiled: CompiledOffer,
    channel: str,
    customer_id: str,
    now: datetime,
    summary: ContactSummary | None,
    counters: OfferCounters | None,
    fallback: bool = False,
) -> list[Claim]:
    """The units an answered offer takes of the caps and budgets that count decisions
    (``nba.decision.reservations``), each starting from what this process has counted. Checked where
    the policy holds the offer on this channel; unchecked where the contact only counts
    towards it (a per-customer cap counts everything the customer got; a fallback is never
    held back)."""
    found: list[Claim] = []
    at = now.timestamp()
    offer = compiled.offer
    if summary is not None:
        for cap, groups in policy_set.decided_caps:
            holds = any(c.id == cap.id for c in compiled.caps)
            if cap.per == "offer":
                if not holds:
                    continue  # nobody else reads this offer's key
                scope = ("offer", offer.id)
            elif cap.per == "group":
                if offer.group not in groups:
                    continue
                scope = ("group", offer.group or "")
            elif cap.per == "channel":
                if not cap.applies_to.on(channel):
                    continue  # checked on other channels only, where this channel's key is not read
                scope = ("channel", channel)
            else:
                scope = ("customer", "")
            known = tuple(t + cap.window for t in summary.times("decided", cap.window, cap.per, offer.id, offer.group))
            found.append(
                Claim(
                    key("cap", cap.id, f"{cap.window:g}", *scope, customer_id),
                    cap.max,
                    "window",
                    at + cap.window,
                    known,
                    holds and not fallback and cap.applies_to.on(channel),
                    "contact_cap",
                    cap.id,
                )
            )
    if counters is not None:
        day = day_of(policy_set.timezone, now)
        for budget in compiled.budgets:
            if budget.counts != "decided":
                continue
            check = not fallback and budget.applies_to.on(channel)
            shared = budget.per == "policy"
            members = policy_set.budget_members.get(budget.id, (compiled.id,)) if shared else (compiled.id,)
            member = "*" if shared else compiled.id
            if budget.period == "total":
                spent = sum(counters.total(m, "decided") for m in members)
                found.append(
                    Claim(
                        key("budget", budget.id, member, "total"), budget.max, "counter", None, spent, check, "budget", budget.id
                    )
                )
                continue
            spent = sum(counters.since(m, "decided", day.start) for m in members)
            limit, reason = budget.max, "budget"
            if budget.pacing == "even":
                paced = math.ceil(_paced(budget, compiled, day, at))
                if paced < limit:
                    limit, reason = paced, "pacing"
            # The day's label names its zone: after a publish that changes the timezone, the
            # new day is a key of its own, not the old zone's day of the same date.
            found.append(
                Claim(key("budget", budget.id, member, day.label), limit, "counter", day.end, spent, check, reason, budget.id)
            )
    return found


def _duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
