"""Exploration: from scores to an explicit probability for every arm, and draws from it.

Offline evaluation divides by the probability with which each logged action was chosen, so
that probability must be the true one. Both strategies here compute it in closed form: no
argmax that logs 1.0, no Monte Carlo estimate of a posterior draw. Several slots are drawn
without replacement; a slot's propensity is the probability of its arm given the arms already
drawn for earlier slots, computed by the same rule over the arms that remain.

Scores that are not all finite (a NaN from a corrupted model) rank nothing: every arm is then
treated as tied, so the probabilities stay an exact, finite distribution (uniform under both
strategies here) rather than NaN.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EpsilonGreedy", "Exploration", "InverseGapWeighting", "draw_slots", "load_kernels"]

#: ``bandit.kernels``, once loaded. Importing numba and loading the compiled draw cost about
#: 0.8 s of CPU a process: programs that never draw (the CLI checking a policy set, a test's
#: helper) must not pay it, so it is loaded on demand, not on import.
_kernels: Any = None


def load_kernels() -> None:
    """Loads the compiled draw (``bandit.kernels``) now, if not yet: a service calls it as it
    starts, so that no request pays the loading; otherwise the first draw does."""
    global _kernels
    if _kernels is None:
        # by name, at run time: the one deferred import of the library (see _kernels)
        _kernels = importlib.import_module("bandit.kernels")


class Exploration:
    """Base: subclasses say how scores become probabilities; drawing is shared."""

    def probabilities(self, scores: np.ndarray, scale: float = 1.0, t: int | np.ndarray = 0) -> np.ndarray:
        """Returns a probability for each score (all > 0 unless stated, summing to 1).

        ``scale`` is the size of a unit of score: scores in business value are divided by it
        so that gaps mean the same whatever the currency. ``t`` is the evidence behind the
        estimates, for strategies that explore less as evidence grows: one count for every arm
        (how many updates the learner has seen), or one per arm (each arm's own).
        """
        if len(scores) == 0:
            return np.zeros(0)
        scores = _ranked_by(np.asarray(scores, dtype=float) / (scale if scale > 0 else 1.0))
        return self._probabilities(scores, t)

    def _probabilities(self, scores: np.ndarray, t: int | np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _masked(self, scores: np.ndarray, alive: np.ndarray, count: int, t: int | np.ndarray) -> np.ndarray:
        """Probabilities over the ``alive`` arms (0 for the others), scores already scaled.
        Subclasses compute it in place over the whole array, which spares a copy per slot."""
        p = np.zeros(len(scores))
        p[alive] = self._probabilities(scores[alive], t[alive] if isinstance(t, np.ndarray) else t)
        return p

    def describe(self, t: int = 0) -> str:
        """One line for explanations: the rule and its parameters after ``t`` updates."""
        raise NotImplementedError


@dataclass(frozen=True)
class InverseGapWeighting(Exploration):
    """Inverse gap weighting (SquareCB).

    With K arms, best score s*, and gap g_a = s* - s_a, every other arm gets
    p_a = 1 / (K + gamma * g_a) and the best arm gets the rest. Close calls are explored
    often, clear losers rarely, and no arm ever has probability zero, which keeps
    importance-weighted estimates finite. Tied best arms share the best arm's mass equally.

    The theory sets gamma near sqrt(K t): exploration shrinks as evidence grows. As in Vowpal
    Wabbit's ``--squarecb``, gamma = gamma_scale * t ** gamma_exponent after t updates
    (never below ``gamma_scale``); ``gamma_exponent=0`` keeps it fixed. Given one t per arm,
    each arm's probability uses its own gamma (an arm that joined late, or whose evidence was
    forgotten, is explored as a young learner explores), and the distribution stays exact.

    Foster & Rakhlin (2020), "Beyond UCB: Optimal and Efficient Contextual Bandits with
    Regression Oracles", ICML.

    >>> igw = InverseGapWeighting(gamma_scale=10, gamma_exponent=0.5)
    >>> igw.probabilities(np.array([0.5, 0.1, 0.5]), t=1).round(3).tolist()
    [0.429, 0.143, 0.429]
    >>> igw.probabilities(np.array([0.5, 0.1, 0.5]), t=100).round(3).tolist()
    [0.488, 0.023, 0.488]
    """

    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5

    def __post_init__(self) -> None:
        if not self.gamma_scale >= 0:
            raise ValueError(f"gamma_scale must be non-negative, got {self.gamma_scale}")
        if not self.gamma_exponent >= 0:
            raise ValueError(f"gamma_exponent must be non-negative, got {self.gamma_exponent}")

    def gamma(self, t: int | np.ndarray) -> float | np.ndarray:
        if isinstance(t, np.ndarray):
            return self.gamma_scale * np.maximum(t, 1.0) ** self.gamma_exponent
        return self.gamma_scale * max(t, 1) ** self.gamma_exponent

    def describe(self, t: int = 0) -> str:
        return f"inverse gap weighting, gamma {self.gamma(t):.4g} after {t} updates"

    def _probabilities(self, scores: np.ndarray, t: int | np.ndarray) -> np.ndarray:
        k = len(scores)
        gaps = scores.max() - scores
        p = 1.0 / (k + self.gamma(t) * gaps)
        best = gaps <= 1e-12
        p[best] = 0.0
        p[best] = (1.0 - p.sum()) / best.sum()
        return p

    def _masked(self, scores: np.ndarray, alive: np.ndarray, count: int, t: int | np.ndarray) -> np.ndarray:
        gaps = np.max(scores, where=alive, initial=-np.inf) - scores
        p = 1.0 / (count + self.gamma(t) * gaps)
        p[~alive] = 0.0
        best = alive & (gaps <= 1e-12)
        p[best] = 0.0
        p[best] = (1.0 - p.sum()) / np.count_nonzero(best)
        return p


@dataclass(frozen=True)
class EpsilonGreedy(Exploration):
    """Epsilon-greedy: the best arm(s) share 1 - epsilon, every arm gets epsilon / K.

    >>> EpsilonGreedy(0.1).probabilities(np.array([1.0, 0.0])).round(3).tolist()
    [0.95, 0.05]
    """

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be within [0, 1], got {self.epsilon}")

    def describe(self, t: int = 0) -> str:
        return f"epsilon-greedy, epsilon {self.epsilon:g}"

    def _probabilities(self, scores: np.ndarray, t: int | np.ndarray) -> np.ndarray:
        k = len(scores)
        best = scores >= scores.max() - 1e-12
        p = np.full(k, self.epsilon / k)
        p[best] += (1.0 - self.epsilon) / best.sum()
        return p


def draw_slots(
    exploration: Exploration,
    scores: np.ndarray,
    k: int,
    rng: np.random.Generator,
    scale: float = 1.0,
    t: int | np.ndarray = 0,
) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """Draws ``k`` distinct arms slot by slot.

    Returns the first slot's distribution over all arms, and for each slot the arm's index with
    the probability it had when drawn (conditional on the earlier slots).
    """
    scores = np.asarray(scores, dtype=float)
    if isinstance(exploration, InverseGapWeighting) and len(scores):
        return _compiled_draw(exploration, scores, k, rng, scale, t)
    return _numpy_draw(exploration, scores, k, rng, scale, t)


def _numpy_draw(
    exploration: Exploration,
    scores: np.ndarray,
    k: int,
    rng: np.random.Generator,
    scale: float = 1.0,
    t: int | np.ndarray = 0,
) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """``draw_slots`` in numpy, for any exploration (and the reference the compiled draw is
    held to)."""
    first = exploration.probabilities(scores, scale, t)
    slots: list[tuple[int, float]] = []
    n = len(scores)
    scaled = _ranked_by(scores / scale if scale > 0 and scale != 1.0 else scores)
    alive = np.ones(n, dtype=bool)
    p = first
    for slot in range(min(k, n)):
        if slot:  # the same rule over the offers still left
            p = exploration._masked(scaled, alive, n - slot, t)
        if n - slot == 1:
            i = int(np.flatnonzero(alive)[0])
        else:
            # Inverse-CDF draw: cheaper than rng.choice and exact for our p (taken arms have 0).
            cumulative = np.cumsum(p)
            i = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            i = min(i, n - 1)
            while not alive[i]:  # only at the float edge of the last interval
                i -= 1
        slots.append((i, float(p[i])))
        alive[i] = False
    return first, slots


def _compiled_draw(
    exploration: InverseGapWeighting,
    scores: np.ndarray,
    k: int,
    rng: np.random.Generator,
    scale: float,
    t: int | np.ndarray,
) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """``draw_slots`` under inverse gap weighting in one compiled pass (``bandit.kernels``):
    the same numbers, and the same draws from ``rng`` (one for each slot with more than one
    arm left)."""
    n = len(scores)
    scaled = np.ascontiguousarray(_ranked_by(scores / scale if scale > 0 and scale != 1.0 else scores), dtype=float)
    gamma = exploration.gamma(t)
    gammas = np.ascontiguousarray(gamma, dtype=float) if isinstance(gamma, np.ndarray) else np.full(n, float(gamma))
    slots = min(k, n)
    uniforms = rng.random(slots - (1 if k >= n else 0))
    first = np.empty(n)
    chosen = np.empty(max(slots, 0), dtype=np.int64)
    propensities = np.empty(max(slots, 0))
    if _kernels is None:
        load_kernels()
    _kernels.igw_draw(scaled, gammas, slots, uniforms, first, chosen, propensities)
    return first, list(zip(chosen.tolist(), propensities.tolist(), strict=True))


def _ranked_by(scores: np.ndarray) -> np.ndarray:
    """The scores exploration ranks by: as given when all are finite, else all tied (zeros)."""
    if np.isfinite(scores).all():
        return scores
    return np.zeros(len(scores))
