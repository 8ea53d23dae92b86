"""Off-policy estimators over a logged sample, with bootstrap intervals.

For logged decisions i with context x_i, chosen offer a_i, its logged probability mu_i and
reward r_i, a target policy pi, and a reward model q(x, a):

    IPS    V = 1/n sum_i w_i r_i,                 w_i = pi(a_i | x_i) / mu_i
    SNIPS  V = sum_i w_i r_i / sum_i w_i          (self-normalised: bounded, a little biased)
    DM     V = 1/n sum_i sum_a pi(a | x_i) q(x_i, a)
    DR     V = DM + 1/n sum_i w_i (r_i - q(x_i, a_i))
    IPS-slots (position-wise, for limit > 1): 1/n sum_i sum_k W_ik r_ik, with W_ik the product
           over slots j <= k of the ratios of the target's and the logging policy's
           probabilities of the offer logged in slot j given those above it: the probability
           that the target would have shown the same top k. The expected total reward of a
           slate, assuming a slot's reward depends only on the offers at and above it.

Horvitz & Thompson (1952); Swaminathan & Joachims (2015), "The self-normalized estimator for
counterfactual learning"; Dudik, Langford & Li (2011), "Doubly robust policy evaluation and
learning"; Li et al. (2018), "Offline evaluation of ranking policies with click models".

The reward model q is a cross-fitted, regularised logistic regression whose predictions stay
within the rewards' range (``nba.evaluation.reward_model``): no decision is predicted by a
model that saw its reward.

Intervals are percentile bootstrap intervals over decisions. For IPS, SNIPS, DR and IPS-slots
the reward model is held fixed (DR's correction is unbiased whatever q is, as the propensities
are logged, and q's error enters its spread only through the correction's residuals). DM's
interval includes the model's own uncertainty: ``refits`` bootstrap resamples of the decisions,
each with the cross-fit models fit again on it, give DM's spread, and the interval is the
estimate ± 1.96 of their standard deviation (a normal interval: a few dozen refits estimate a
spread well, but not 2.5% tails). With ``refits=0`` DM's interval holds the model fixed, as the
others do, and leaves its error out. The effective sample size (sum w)^2 / sum w^2 says how
many logged decisions the estimate is really worth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nba.evaluation.logs import LoggedDecision
from nba.evaluation.reward_model import RewardModel
from nba.evaluation.targets import Logged, TargetPolicy
from nba.evaluation.truth import Truth

__all__ = ["ESTIMATORS", "REFITS", "Estimate", "RewardModel", "evaluate", "interval"]

ESTIMATORS = ("ips", "snips", "dm", "dr", "ips-slots")
#: below this share of n, the effective sample size is reported as a warning
LOW_ESS = 0.1
#: above this mean share of target weight without logging support, a warning
UNSUPPORTED = 0.01
#: bootstrap refits of the reward model behind DM's interval
REFITS = 20


@dataclass
class Estimate:
    policy: str
    estimator: str
    value: float
    low: float
    high: float
    n: int
    ess: float
    #: mean share of the target's first-slot weight on offers the logging policy could not choose
    unsupported: float = 0.0
    max_weight: float = 0.0
    truth: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def covers_truth(self) -> bool | None:
        return None if self.truth is None else self.low <= self.truth <= self.high


@dataclass
class _Trace:
    """Per-decision terms of one target policy."""

    weights: np.ndarray
    rewards: np.ndarray
    dm: np.ndarray
    q_chosen: np.ndarray
    slots: np.ndarray
    unsupported: np.ndarray
    truth: np.ndarray | None
    #: the target's first-slot probabilities as (decision, prediction row, probability) triples
    pi_decision: np.ndarray | None = None
    pi_row: np.ndarray | None = None
    pi_value: np.ndarray | None = None


def evaluate(
    decisions: Sequence[LoggedDecision],
    targets: Sequence[TargetPolicy],
    n_bootstrap: int = 500,
    seed: int = 0,
    truth: Truth | None = None,
    reward_model: Any = None,
    curves: dict[str, np.ndarray] | None = None,
    refits: int = REFITS,
    reward_range: tuple[float, float] | None = None,
) -> list[Estimate]:
    """Every estimator for every target, in the order given, each an ``Estimate`` (value in
    reward units per decision, 95% interval, effective sample size, warnings).

    ``reward_model``: anything with ``predict(index, decision, offer_ids) -> array`` (default: a
    ``RewardModel`` of the log, with ``reward_range`` as its range). ``refits``: bootstrap refits
    of a ``RewardModel`` behind DM's interval (0: the model held fixed). ``curves``, when given,
    receives each target's per-decision doubly robust terms (for plots of value over time).
    Raises ``ValueError`` for an empty log."""
    if not decisions:
        raise ValueError("no logged decisions to evaluate (is the log empty, or are all reward windows still open?)")
    model = reward_model if reward_model is not None else RewardModel(decisions, reward_range=reward_range)
    multi_slot = any(len(d.slots) > 1 for d in decisions)
    traces = [_trace(decisions, target, model, truth) for target in targets]
    dm_spread = _dm_refits(model, traces, len(decisions), refits, seed) if isinstance(model, RewardModel) else None
    estimates: list[Estimate] = []
    for k, (target, trace) in enumerate(zip(targets, traces, strict=True)):
        if curves is not None:
            curves[target.name] = trace.dm + trace.weights * (trace.rewards - trace.q_chosen)
        spread = None if dm_spread is None else float(dm_spread[k])
        estimates.extend(_estimates(target.name, trace, n_bootstrap, seed, multi_slot, spread))
    return estimates


def _dm_refits(model: RewardModel, traces: Sequence[_Trace], n: int, refits: int, seed: int) -> np.ndarray | None:
    """The standard deviation of each target's DM over ``refits`` bootstrap resamples of the
    decisions, with the reward model fit again on each; None when ``refits`` < 2."""
    if refits < 2:
        return None
    rng = np.random.default_rng([seed, 1])
    values = np.zeros((refits, len(traces)))
    for b in range(refits):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(float)
        q = model.refit(counts)
        for k, t in enumerate(traces):
            assert t.pi_decision is not None and t.pi_row is not None and t.pi_value is not None
            dm = np.bincount(t.pi_decision, weights=t.pi_value * q[t.pi_row], minlength=n)
            values[b, k] = float(counts @ dm) / n
    return values.std(axis=0, ddof=1)


def _trace(decisions: Sequence[LoggedDecision], target: TargetPolicy, model: RewardModel, truth: Truth | None) -> _Trace:
    n = len(decisions)
    weights, rewards, dm, q_chosen = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    slots, unsupported = np.zeros(n), np.zeros(n)
    true_values = np.zeros(n) if truth is not None else None
    pairs = isinstance(model, RewardModel)
    pi_decision: list[int] = []
    pi_row: list[int] = []
    pi_value: list[float] = []
    for i, d in enumerate(decisions):
        ids, pi = target.first_slot(d)
        mu = np.array([d.logged_probability(a) for a in ids])
        index = {a: j for j, a in enumerate(ids)}
        j = index.get(d.chosen)
        weights[i] = pi[j] / d.propensity if j is not None else 0.0
        rewards[i] = d.reward
        if len(ids):
            q = model.predict(i, d, ids)
            dm[i] = float(pi @ q)
            unsupported[i] = float(pi[mu <= 0].sum())
            if pairs:
                for a, p in zip(ids, pi.tolist(), strict=True):
                    if p > 0:
                        pi_decision.append(i)
                        pi_row.append(model.pair(i, d, a))
                        pi_value.append(p)
        q_chosen[i] = model.predict(i, d, [d.chosen])[0]
        if true_values is not None and truth is not None and len(ids):
            true_values[i] = sum(p * truth.expected(d.features, a, d.decided_at) for a, p in zip(ids, pi, strict=True))
        slots[i] = _slot_term(d, target, ids, pi)
        target.learn(d)
    if not pairs:
        return _Trace(weights, rewards, dm, q_chosen, slots, unsupported, true_values)
    return _Trace(
        weights,
        rewards,
        dm,
        q_chosen,
        slots,
        unsupported,
        true_values,
        np.asarray(pi_decision, dtype=np.int64),
        np.asarray(pi_row, dtype=np.int64),
        np.asarray(pi_value),
    )


def _slot_term(d: LoggedDecision, target: TargetPolicy, ids: list[str], pi: np.ndarray) -> float:
    total = 0.0
    weight = 1.0
    remaining = list(d.eligible)
    for k, (offer_id, propensity) in enumerate(d.slots):
        if k == 0:
            index = {a: j for j, a in enumerate(ids)}
            p = pi[index[offer_id]] if offer_id in index else 0.0
        elif isinstance(target, Logged):
            p = propensity
        else:
            q = target.slot(d, remaining)
            p = q[remaining.index(offer_id)] if offer_id in remaining else 0.0
        weight *= p / propensity
        if weight == 0.0:
            break
        total += weight * d.rewards.get(offer_id, 0.0)
        if offer_id in remaining:
            remaining.remove(offer_id)
    return total


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _estimates(
    policy: str, t: _Trace, n_bootstrap: int, seed: int, multi_slot: bool, dm_spread: float | None = None
) -> list[Estimate]:
    n = len(t.weights)
    rng = np.random.default_rng(seed)
    terms = {
        "ips": t.weights * t.rewards,
        "dm": t.dm,
        "dr": t.dm + t.weights * (t.rewards - t.q_chosen),
    }
    if multi_slot:
        terms["ips-slots"] = t.slots
    wr = t.weights * t.rewards
    boot: dict[str, list[float]] = {k: [] for k in [*terms, "snips"]}
    chunk = max(1, min(n_bootstrap, 5_000_000 // max(n, 1)))
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        idx = rng.integers(0, n, size=(size, n))
        for name, values in terms.items():
            boot[name].extend(values[idx].mean(axis=1).tolist())
        w = t.weights[idx].sum(axis=1)
        boot["snips"].extend(np.divide(wr[idx].sum(axis=1), w, out=np.zeros(size), where=w > 0).tolist())
        done += size
    ess = float(t.weights.sum() ** 2 / (t.weights**2).sum()) if (t.weights**2).sum() > 0 else 0.0
    unsupported = float(t.unsupported.mean())
    max_weight = float(t.weights.max()) if n else 0.0
    warnings = []
    if unsupported > UNSUPPORTED:
        warnings.append(
            f"{unsupported:.1%} of its weight is on offers the logging policy could not choose: "
            "IPS and SNIPS cannot see it, DM and DR extrapolate"
        )
    if ess < LOW_ESS * n:
        warnings.append(f"effective sample size {ess:.0f} of {n}: the logging policy rarely did what this policy does")
    truth = float(t.truth.mean()) if t.truth is not None else None
    values = {name: float(v.mean()) for name, v in terms.items()}
    values["snips"] = float(wr.sum() / t.weights.sum()) if t.weights.sum() > 0 else 0.0
    out = []
    for name in ESTIMATORS:
        if name not in values:
            continue
        low, high = interval(np.asarray(boot[name]))
        if name == "dm" and dm_spread is not None:  # the model's own uncertainty included
            low, high = values[name] - 1.96 * dm_spread, values[name] + 1.96 * dm_spread
        out.append(
            Estimate(
                policy,
                name,
                values[name],
                low,
                high,
                n,
                ess,
                unsupported,
                max_weight,
                truth if name != "ips-slots" else None,
                list(warnings),
            )
        )
    return out
