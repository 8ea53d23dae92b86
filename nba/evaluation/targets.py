"""Target policies: what evaluation asks "what would this have earned?" about.

Each gives, for a logged decision, the probability it would have given each offer for the
first slot (and for later slots, given the offers logged above them), and may learn from the
logged outcome afterwards. A learning target is replayed progressively: at every decision it
knows only what came before, as it would have live.

    logged              the logging policy itself: its logged probabilities (a sanity check:
                        IPS gives the observed mean reward)
    uniform             uniform random among the eligible offers
    popular             the offer accepted most often so far (ties share)
    learner[:k=v,...]   a LinearBandit with these settings (features, alpha, prior, forget,
                        gamma_scale, gamma_exponent, epsilon, seed), trained on the log as it goes
    draft:DIR           the policy set in DIR (its eligibility, levers and weights) ranked by
                        a learner like the one above
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit import EpsilonGreedy, InverseGapWeighting, LinearBandit
from nba.evaluation.logs import LoggedDecision

__all__ = [
    "Draft",
    "LearnerTarget",
    "Logged",
    "PolicySetTarget",
    "Popular",
    "TargetPolicy",
    "Uniform",
    "parse_target",
    "screen_logged",
]


class TargetPolicy:
    name = "target"

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        """The offers this policy could choose from, and its first-slot probability of each."""
        raise NotImplementedError

    def slot(self, d: LoggedDecision, remaining: list[str]) -> np.ndarray:
        """Its probabilities over ``remaining`` for a later slot (the ones above are taken)."""
        ids, p = self.first_slot(d)
        index = {a: i for i, a in enumerate(ids)}
        q = np.array([p[index[a]] if a in index else 0.0 for a in remaining])
        return q / q.sum() if q.sum() > 0 else q

    def learn(self, d: LoggedDecision) -> None:
        """Sees the logged outcome of ``d`` (after it was evaluated)."""


class Logged(TargetPolicy):
    name = "logged"

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        return d.eligible, d.probabilities


class Uniform(TargetPolicy):
    name = "uniform"

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        return d.eligible, np.full(len(d.eligible), 1.0 / len(d.eligible))

    def slot(self, d: LoggedDecision, remaining: list[str]) -> np.ndarray:
        return np.full(len(remaining), 1.0 / len(remaining))


class Popular(TargetPolicy):
    """The offer with the most positive rewards so far; ties share the first slot."""

    name = "popular"

    def __init__(self) -> None:
        self._wins: Counter[str] = Counter()

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        return d.eligible, self._argmax(d.eligible)

    def slot(self, d: LoggedDecision, remaining: list[str]) -> np.ndarray:
        return self._argmax(remaining)

    def _argmax(self, ids: Sequence[str]) -> np.ndarray:
        wins = np.array([self._wins[a] for a in ids], dtype=float)
        best = wins == wins.max()
        return best / best.sum()

    def learn(self, d: LoggedDecision) -> None:
        for offer_id, _ in d.slots:
            if d.rewards.get(offer_id, 0.0) > 0:
                self._wins[offer_id] += 1


def make_learner(name: str = "learner", **settings: Any) -> LinearBandit:
    """A learner from ``key=value`` settings (features, alpha, prior, forget, shared,
    gamma_scale, gamma_exponent, epsilon, seed); unknown keys are refused by name."""
    settings = dict(settings)
    epsilon = settings.pop("epsilon", None)
    exploration = (
        EpsilonGreedy(float(epsilon))
        if epsilon is not None
        else InverseGapWeighting(float(settings.pop("gamma_scale", 10.0)), float(settings.pop("gamma_exponent", 0.5)))
    )
    learner = LinearBandit(
        n_features=int(settings.pop("features", 128)),
        alpha=float(settings.pop("alpha", 1.0)),
        prior=float(settings.pop("prior", 0.05)),
        forget=float(settings.pop("forget", 1.0)),
        shared=float(settings.pop("shared", 0.0)),
        exploration=exploration,
        seed=int(settings.pop("seed", 0)),
    )
    if settings:
        raise ValueError(f"{name}: unknown settings {', '.join(sorted(settings))} "
                         "(features, alpha, prior, forget, shared, gamma_scale, gamma_exponent, epsilon, seed)")
    return learner


class LearnerTarget(TargetPolicy):
    """A learner replayed over the log: it ranks each decision's eligible offers (weighted by
    their logged multipliers, gaps measured against the largest of them, as the live draw
    does), then learns the logged rewards of the offers shown."""

    def __init__(self, name: str = "learner", learner: LinearBandit | None = None, **settings: Any) -> None:
        self.name = name
        self.learner = learner if learner is not None else make_learner(name, **settings)

    def _eligible(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        return d.eligible, d.multipliers

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        ids, weights = self._eligible(d)
        if not ids:
            return [], np.zeros(0)
        return ids, self.learner.distribution(ids, d.features, weights)[0]

    def slot(self, d: LoggedDecision, remaining: list[str]) -> np.ndarray:
        ids, weights = self._eligible(d)
        index = {a: i for i, a in enumerate(ids)}
        keep = [a for a in remaining if a in index]
        p = np.zeros(len(remaining))
        if keep:
            scale = float(weights.max()) if len(weights) else 1.0
            q = self.learner.distribution(keep, d.features, np.array([weights[index[a]] for a in keep]), scale=scale)[0]
            for a, value in zip(keep, q, strict=True):
                p[remaining.index(a)] = value
        return p

    def learn(self, d: LoggedDecision) -> None:
        for offer_id, _ in d.slots:
            self.learner.update(offer_id, d.features, d.rewards.get(offer_id, 0.0))


class PolicySetTarget(LearnerTarget):
    """A policy set, the live one or a draft: each logged context screened again with it (at
    the time it was logged; contact policies and budgets are not simulated), its fallback when
    it leaves nothing eligible, ranked by a learner replayed over the log."""

    def __init__(self, name: str, policy_set: Any, learner: LinearBandit | None = None, **settings: Any) -> None:
        super().__init__(name=name, learner=learner, **settings)
        self.policy_set = policy_set
        self._cache: dict[str, tuple[list[str], np.ndarray]] = {}

    def _eligible(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        cached = self._cache.get(d.decision_id)
        if cached is None:
            cached = screen_logged(self.policy_set, d)
            self._cache = {d.decision_id: cached}
        return cached


class Draft(PolicySetTarget):
    """``draft:DIR``: the policy set in a folder."""

    def __init__(self, directory: str | Path, **settings: Any) -> None:
        from nba.policy_set import load_policy_set

        if not Path(directory).is_dir():
            raise ValueError(f"draft:{directory}: no such folder (draft:DIR names a policy set's folder, "
                             "for example a copy of policies/ you edited)")
        super().__init__(f"draft:{directory}", load_policy_set(directory), **settings)


def screen_logged(policy_set: Any, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
    """The offers ``policy_set`` makes eligible for a logged decision (at the time it was made;
    contact policies and budgets not simulated), with their arbitration multipliers; its
    fallback alone (multiplier 1) when nothing else is."""
    from nba.screening import screen

    result = screen(policy_set, d.channel, d.features, d.customer_id, d.decided_at)
    eligible = result.eligible
    if not eligible:
        if result.fallback is not None and result.fallback.eligible:
            return [result.fallback.offer.id], np.ones(1)
        return [], np.zeros(0)
    return [v.offer.id for v in eligible], np.array([v.offer.offer.value * v.offer.lever * v.weight for v in eligible])


def parse_target(spec: str) -> TargetPolicy:
    """``uniform``, ``logged``, ``popular``, ``learner:gamma_scale=30,prior=0.1``, ``draft:DIR``
    or ``draft:DIR:gamma_scale=30`` (a learner name may be given as ``name=learner:...``)."""
    label = None
    if "=" in spec.split(":", 1)[0]:
        label, spec = spec.split("=", 1)
    kind, _, rest = spec.partition(":")
    if kind in ("uniform", "logged", "popular"):
        if rest:
            raise ValueError(f"{spec}: {kind} takes no settings")
        target: TargetPolicy = {"uniform": Uniform, "logged": Logged, "popular": Popular}[kind]()
    elif kind == "learner":
        target = LearnerTarget(name=spec, **_settings(rest, spec))
    elif kind == "draft":
        directory, _, settings = rest.partition(":")
        if not directory:
            raise ValueError(f"{spec}: name the draft's folder, draft:DIR")
        target = Draft(directory, **_settings(settings, spec))
    else:
        raise ValueError(f"{spec}: not a policy (uniform, logged, popular, learner[:k=v,...], draft:DIR)")
    if label:
        target.name = label
    return target


def _settings(text: str, spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{spec}: settings are key=value, got {part!r}")
        out[key.strip()] = value.strip()
    return out
