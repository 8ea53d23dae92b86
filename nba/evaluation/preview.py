"""What-if preview: what a draft policy set would change, before it goes live.

The most recent logged decisions are replayed against the live set and the draft alike: the
logged context (rebuilt from its flattened features), channel, customer and time. Both are
screened the same way and ranked with the current model, and the report compares, per offer
and in total, eligibility, fallback and empty rates, rule errors, and the expected share of
first slots (the exploration probabilities averaged over the replayed decisions: exact
expectations, not a sample).

With the decisions' logged outcomes, it also estimates the value (mean reward per decision)
of the live set and of the draft by doubly robust off-policy evaluation with 95% bootstrap
intervals (``nba.evaluation``). Each set is ranked there by a learner of the service's
configuration replayed over the window from scratch, learning as it goes: the current model
has already learned these very outcomes, and scoring with it would flatter both sets.
Feedback not yet received counts as the default reward, for both alike.

Contact policies and budgets are not simulated: they depend on what each set would have
shown over time, which a replay cannot know. The report says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nba.decision import arbitration
from nba.decision.screening import screen
from nba.evaluation.estimators import Estimate, evaluate
from nba.evaluation.logs import LogError
from nba.evaluation.sources import from_records
from nba.evaluation.targets import PolicySetTarget
from nba.learning.loop import LearningLoop
from nba.policy.policy_set import PolicySet

__all__ = ["OfferChange", "PreviewReport", "Replayed", "Totals", "preview"]

NOTE = "contact policies (caps, suppressions) and budgets are not simulated in a preview"


@dataclass
class Totals:
    fallback_rate: float = 0.0
    empty_rate: float = 0.0
    rule_error_rate: float = 0.0
    mean_eligible: float = 0.0


@dataclass
class OfferChange:
    offer_id: str
    live_eligible_rate: float
    draft_eligible_rate: float
    live_share: float
    draft_share: float
    change: str


@dataclass
class PreviewReport:
    decisions: int
    live_version: str
    live: Totals
    draft: Totals
    offers: list[OfferChange] = field(default_factory=list)
    note: str = NOTE
    #: doubly robust estimates of each set's value (None without decisions that chose an offer)
    live_value: Estimate | None = None
    draft_value: Estimate | None = None


@dataclass(frozen=True)
class Replayed:
    """What a replay needs of a logged decision."""

    channel: str
    customer_id: str
    created_at: Any
    features: Mapping[str, Any]


def preview(
    live: PolicySet,
    draft: PolicySet,
    lines: Iterable[Mapping[str, Any]],
    learning: LearningLoop,
    make_learner: Callable[[], Any] | None = None,
    n_bootstrap: int = 200,
    check: Callable[[], None] | None = None,
) -> PreviewReport:
    """Replays logged decisions (export-format lines, oldest first) against both sets; with
    ``make_learner``, also estimates each set's value. ``check`` is called before each
    decision is replayed, and raises to stop the preview (the caller's deadline passed, or it
    went): the rules' cost per decision is bounded (``nba.policy.rule_cost``), their number is not."""
    lines = list(lines)
    decisions = [_replayed(line) for line in lines]
    stats = {"live": _Stats(), "draft": _Stats()}
    for record in decisions:
        if check is not None:
            check()
        context = record.features
        for name, policy_set in (("live", live), ("draft", draft)):
            stats[name].add(policy_set, record, context, learning)
    offer_ids = list(dict.fromkeys([*live.offers, *draft.offers]))
    changes = []
    for offer_id in offer_ids:
        change = "added" if offer_id not in live.offers else "removed" if offer_id not in draft.offers else ""
        changes.append(
            OfferChange(
                offer_id,
                stats["live"].eligible_rate(offer_id),
                stats["draft"].eligible_rate(offer_id),
                stats["live"].share(offer_id),
                stats["draft"].share(offer_id),
                change,
            )
        )
    changes.sort(
        key=lambda c: (-abs(c.draft_share - c.live_share), -abs(c.draft_eligible_rate - c.live_eligible_rate), c.offer_id)
    )
    report = PreviewReport(len(decisions), live.version, stats["live"].totals(), stats["draft"].totals(), changes)
    refused: list[LogError] = []
    logged = list(from_records(lines, final=True, source="decision log", refused=refused))
    if refused:
        # the service's own log: a decision an older version stored outside today's contract
        # is left out of the estimate, said in the note rather than failing the preview
        report.note += (
            f"; {len(refused)} logged decisions break the logged-data contract and are left out of the "
            f"value estimates (the first: {refused[0]})"
        )
    if logged and make_learner is not None:
        if check is not None:
            check()  # the estimate replays the learner over every decision: not for a call gone
        targets = [PolicySetTarget("live", live, make_learner()), PolicySetTarget("draft", draft, make_learner())]
        dr = {e.policy: e for e in evaluate(logged, targets, n_bootstrap=n_bootstrap) if e.estimator == "dr"}
        report.live_value, report.draft_value = dr["live"], dr["draft"]
    return report


def _replayed(line: Mapping[str, Any]) -> Replayed:
    from datetime import datetime

    return Replayed(
        line.get("channel", ""),
        line.get("customer_id", ""),
        datetime.fromisoformat(str(line["decided_at"]).replace("Z", "+00:00")),
        line.get("features") or {},
    )


class _Stats:
    def __init__(self) -> None:
        self.decisions = 0
        self.fallbacks = 0
        self.empty = 0
        self.rule_errors = 0
        self.eligible_total = 0
        self.eligible: dict[str, int] = defaultdict(int)
        self.seen_on_channel: dict[str, int] = defaultdict(int)
        self.shares: dict[str, float] = defaultdict(float)

    def add(self, policy_set: PolicySet, record: Replayed, context: Mapping[str, Any], learning: LearningLoop) -> None:
        self.decisions += 1
        if record.channel not in policy_set.channels:
            self.empty += 1
            return
        result = screen(policy_set, record.channel, context, record.customer_id, record.created_at)
        for verdict in result.verdicts:
            self.seen_on_channel[verdict.offer.id] += 1
            if verdict.eligible:
                self.eligible[verdict.offer.id] += 1
        if any(v.reason == "rule_error" for v in result.verdicts):
            self.rule_errors += 1
        eligible = result.eligible
        self.eligible_total += len(eligible)
        if eligible:
            weights = arbitration.multipliers((v.offer.offer.value, v.offer.lever, v.weight) for v in eligible)
            probabilities = learning.distribution([v.offer.id for v in eligible], record.features, weights)
            for verdict, p in zip(eligible, probabilities, strict=True):
                self.shares[verdict.offer.id] += float(p)
        elif result.fallback is not None and result.fallback.eligible:
            self.fallbacks += 1
            self.shares[result.fallback.offer.id] += 1.0
        else:
            self.empty += 1

    def eligible_rate(self, offer_id: str) -> float:
        seen = self.seen_on_channel.get(offer_id, 0)
        return self.eligible.get(offer_id, 0) / seen if seen else 0.0

    def share(self, offer_id: str) -> float:
        return self.shares.get(offer_id, 0.0) / self.decisions if self.decisions else 0.0

    def totals(self) -> Totals:
        n = self.decisions or 1
        return Totals(self.fallbacks / n, self.empty / n, self.rule_errors / n, self.eligible_total / n)
