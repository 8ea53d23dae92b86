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
                        shared, optimism, age, detect, gamma_scale, gamma_exponent, epsilon,
                        seed), trained on the log as it goes
    draft:DIR           the policy set in DIR (its eligibility, levers and weights) ranked by
                        a learner like the one above
    file:PATH           a policy given from outside: per-decision probabilities over the logged
                        candidates, JSON Lines keyed by decision id (``ExternalPolicy``)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bandit import EpsilonGreedy, InverseGapWeighting, LinearBandit
from nba.decision import arbitration
from nba.decision.screening import screen
from nba.evaluation.logs import LogError, LoggedDecision, validated
from nba.evaluation.sources import read_jsonl
from nba.policy.loading import load_policy_set

__all__ = [
    "Draft",
    "ExternalPolicy",
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
    """A learner from ``key=value`` settings (features, alpha, prior, forget, shared, optimism,
    age, detect, gamma_scale, gamma_exponent, epsilon, seed: the service's defaults for those
    not given); unknown keys are refused by name."""
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
        forget=float(settings.pop("forget", 0.999)),
        shared=float(settings.pop("shared", 0.0)),
        optimism=float(settings.pop("optimism", 5.0)),
        explore_by_age=_switch(settings.pop("age", True), "age"),
        detect_changes=_switch(settings.pop("detect", True), "detect"),
        exploration=exploration,
        seed=int(settings.pop("seed", 0)),
    )
    if settings:
        raise ValueError(
            f"{name}: unknown settings {', '.join(sorted(settings))} "
            "(features, alpha, prior, forget, shared, optimism, age, detect, gamma_scale, gamma_exponent, "
            "epsilon, seed)"
        )
    return learner


def _switch(value: Any, key: str) -> bool:
    """A yes/no setting given as text (``age=false``) or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key}: expected true or false, got {value!r}")


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
        if not Path(directory).is_dir():
            raise ValueError(
                f"draft:{directory}: no such folder (draft:DIR names a policy set's folder, "
                "for example a copy of policies/ you edited)"
            )
        super().__init__(f"draft:{directory}", load_policy_set(directory), **settings)


def screen_logged(policy_set: Any, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
    """The offers ``policy_set`` makes eligible for a logged decision (at the time it was made;
    contact policies and budgets not simulated), with their arbitration multipliers; its
    fallback alone (multiplier 1) when nothing else is."""
    result = screen(policy_set, d.channel, d.features, d.customer_id, d.decided_at)
    eligible = result.eligible
    if not eligible:
        if result.fallback is not None and result.fallback.eligible:
            return [result.fallback.offer.id], np.ones(1)
        return [], np.zeros(0)
    return [v.offer.id for v in eligible], arbitration.multipliers(
        (v.offer.offer.value, v.offer.lever, v.weight) for v in eligible
    )


#: how far a line's probabilities may stray from summing to 1
SUM_TOLERANCE = 1e-6


class _PolicyLine(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    decision_id: Annotated[str, Field(min_length=1)]
    probabilities: dict[str, Annotated[float, Field(allow_inf_nan=False)]]
    later_slots: list[dict[str, Annotated[float, Field(allow_inf_nan=False)]]] | None = None


class ExternalPolicy(TargetPolicy):
    """A policy given from outside as its first-slot action distribution for each logged
    decision (how Open Bandit Pipeline and research code hand a policy over):
    ``probabilities[decision_id][offer_id]``, over that decision's eligible candidates, summing
    to 1; offers left out have probability 0. For slates (position-wise IPS), ``later[decision_id]``
    may give the distributions of slots 2, 3, ... given the offers *logged* above them (over the
    eligible offers less those); a slot without one renormalises the first slot's probabilities
    over the offers left.

    ``read(path)`` loads JSON Lines of ``{"decision_id": "d-1", "probabilities": {"a": 0.7,
    "b": 0.3}}``, with ``"later_slots": [{"b": 1.0}]`` optional. Errors are ``LogError`` naming
    the file's line and field: a line that is not such an object, an unknown field, a
    probability that is negative, above 1 or not a finite number, probabilities not summing to 1
    (within 1e-6), a decision id given twice; and, when evaluated, a logged decision without a
    line, or an offer that is not one of its eligible candidates (for a later slot: not one of
    the offers left).

    >>> from nba.evaluation.sources import from_records
    >>> [d] = from_records([{"decision_id": "d-1", "features": {}, "chosen": "a", "propensity": 0.5, "reward": 1.0,
    ...     "candidates": [{"offer_id": "a", "probability": 0.5}, {"offer_id": "b", "probability": 0.5}]}])
    >>> ExternalPolicy({"d-1": {"a": 1.0}}).first_slot(d)
    (['a', 'b'], array([1., 0.]))
    """

    def __init__(
        self,
        probabilities: Mapping[str, Mapping[str, float]],
        name: str = "external",
        source: str = "policy",
        lines: Mapping[str, int] | None = None,
        later: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    ) -> None:
        self.name = name
        self._source = source
        self._lines = dict(lines or {})
        self._probabilities = {k: dict(v) for k, v in probabilities.items()}
        self._later = {k: [dict(p) for p in v] for k, v in (later or {}).items()}
        for decision_id, p in self._probabilities.items():
            self._check(decision_id, p, "probabilities")
        for decision_id, slots in self._later.items():
            for k, p in enumerate(slots):
                self._check(decision_id, p, f"later_slots[{k}]")

    def _where(self, decision_id: str) -> str:
        line = self._lines.get(decision_id)
        return f"{self._source} line {line}" if line is not None else f"{self._source}, decision '{decision_id}'"

    def _check(self, decision_id: str, p: Mapping[str, float], field: str) -> None:
        where = self._where(decision_id)
        for offer_id, value in p.items():
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)):
                raise LogError(f"{where}: {field}.{offer_id}: must be a finite number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise LogError(f"{where}: {field}.{offer_id}: must be in [0, 1], got {value!r}")
        total = math.fsum(p.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise LogError(f"{where}: {field}: sum to {total:.6f}, not 1")

    @classmethod
    def read(cls, path: str | Path, name: str | None = None) -> ExternalPolicy:
        """The policy in a JSON Lines file (see the class); ``OSError`` when it cannot be read."""
        probabilities: dict[str, dict[str, float]] = {}
        later: dict[str, list[dict[str, float]]] = {}
        lines: dict[str, int] = {}
        for number, line in read_jsonl(path):
            where = f"{path} line {number}"
            checked = validated(_PolicyLine, line, where)
            if checked.decision_id in lines:
                raise LogError(f"{where}: decision_id: '{checked.decision_id}' is already on line {lines[checked.decision_id]}")
            lines[checked.decision_id] = number
            probabilities[checked.decision_id] = checked.probabilities
            if checked.later_slots:
                later[checked.decision_id] = checked.later_slots
        return cls(probabilities, name or f"file:{path}", str(path), lines, later)

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        p = self._probabilities.get(d.decision_id)
        if p is None:
            raise LogError(
                f"{self._source}: decision_id: no line for the logged decision '{d.decision_id}' "
                "(every decision evaluated needs one; a log line without a decision_id is named by its line)"
            )
        eligible = set(d.eligible)
        for offer_id in p:
            if offer_id not in eligible:
                raise LogError(
                    f"{self._where(d.decision_id)}: probabilities.{offer_id}: not one of the decision's "
                    f"eligible candidates ({', '.join(d.eligible)})"
                )
        return d.eligible, np.array([float(p.get(a, 0.0)) for a in d.eligible])

    def slot(self, d: LoggedDecision, remaining: list[str]) -> np.ndarray:
        k = len(d.eligible) - len(remaining)  # slot k + 1: the k logged offers above are taken
        later = self._later.get(d.decision_id, [])
        if not 1 <= k <= len(later):
            return super().slot(d, remaining)
        p = later[k - 1]
        left = set(remaining)
        for offer_id in p:
            if offer_id not in left:
                raise LogError(
                    f"{self._where(d.decision_id)}: later_slots[{k - 1}].{offer_id}: not one of the offers left "
                    f"for slot {k + 1} ({', '.join(remaining)}: the eligible ones less those logged above)"
                )
        return np.array([float(p.get(a, 0.0)) for a in remaining])


def parse_target(spec: str) -> TargetPolicy:
    """``uniform``, ``logged``, ``popular``, ``learner:gamma_scale=30,prior=0.1``, ``draft:DIR``,
    ``draft:DIR:gamma_scale=30`` or ``file:PATH`` (any may be labelled: ``name=learner:...``).
    ``ValueError`` for a spec that is none of these; ``LogError`` (a ``ValueError``) for a
    ``file:`` whose lines break its format; ``OSError`` when the file cannot be read."""
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
    elif kind == "file":
        if not rest:
            raise ValueError(f"{spec}: name the file, file:PATH (JSON Lines of decision_id and probabilities)")
        target = ExternalPolicy.read(rest, spec)
    elif kind == "draft":
        directory, _, settings = rest.partition(":")
        if not directory:
            raise ValueError(f"{spec}: name the draft's folder, draft:DIR")
        target = Draft(directory, **_settings(settings, spec))
    else:
        raise ValueError(f"{spec}: not a policy (uniform, logged, popular, learner[:k=v,...], draft:DIR, file:PATH)")
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
