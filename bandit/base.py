"""What every learner shares: the draw bookkeeping around a learner-specific estimate.

A learner estimates the expected reward of each arm for a context (``_predict``) and learns
from observed rewards (``_update``); this base turns estimates into ranked draws with exact
propensities, validates input, and counts updates, so every learner logs the same way.

Every learner keeps its state finite, whatever it is fed: ``update`` refuses a non-finite
reward or context number (``ValueError`` naming it) before the learner sees it, and a learner
refuses, changing nothing, an update that would take its state out of the finite numbers (a
finite reward so large that the sums it keeps would overflow). A model that cannot be poisoned
by one event need not be rebuilt after one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit.blas import single_thread
from bandit.exploration import Exploration, draw_slots
from bandit.state import LearnerState, as_json

__all__ = ["Draw", "Learner", "weighted_scores"]


@dataclass(frozen=True)
class Draw:
    """One ranking: what was estimated, what the ranking used, and what was drawn."""

    arm_ids: Sequence[Hashable]
    #: expected reward of each arm, in ``arm_ids`` order
    predicted: np.ndarray
    #: predicted x weight: what exploration ranked by
    scores: np.ndarray
    #: the first slot's probability for each arm (sums to 1)
    probabilities: np.ndarray
    #: (index into arm_ids, propensity) for each slot, best first
    slots: list[tuple[int, float]]

    @property
    def chosen(self) -> list[Hashable]:
        return [self.arm_ids[i] for i, _ in self.slots]


class Learner:
    """Base of all learners. Subclasses implement ``_predict`` and ``_update``."""

    #: short name used in model versions ("linear-igw/1532")
    name = "learner"

    def __init__(self, exploration: Exploration, seed: int | None = None) -> None:
        self.exploration = exploration
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.n_updates = 0

    @property
    def version(self) -> str:
        return f"{self.name}/{self.n_updates}"

    def reseed(self, seed: int | None) -> None:
        """Restarts the draws from ``seed`` (fresh entropy when None), keeping what was learned."""
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def scores(self, arm_ids: Sequence[Hashable], context: Mapping[str, Any]) -> np.ndarray:
        """Expected reward of each arm for this context, without exploring."""
        if not arm_ids:
            return np.zeros(0)
        with single_thread():
            return self._predict(list(arm_ids), context)

    def pull(
        self,
        arm_ids: Sequence[Hashable],
        context: Mapping[str, Any],
        k: int = 1,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> Draw:
        """Ranks ``k`` of ``arm_ids`` for this context, drawing each slot from an explicit
        distribution.

        ``weights`` multiply the expected rewards before exploring (the business value of a
        success; an estimate below zero is multiplied by the largest weight instead: see
        ``weighted_scores``); gaps are measured in units of the largest weight.
        """
        if k < 0:
            raise ValueError(f"k must be non-negative, got {k}")
        arm_ids = list(arm_ids)
        with single_thread():
            predicted, scores, scale = self._weighted(arm_ids, context, weights)
            first, slots = draw_slots(self.exploration, scores, k, self._rng, scale, self._exploration_t(arm_ids))
        return Draw(arm_ids, predicted, scores, first, slots)

    def distribution(
        self,
        arm_ids: Sequence[Hashable],
        context: Mapping[str, Any],
        weights: Sequence[float] | np.ndarray | None = None,
        scale: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first slot's probabilities (and the scores) ``pull`` would draw from, without
        drawing: for what-if questions that must not disturb the draws. ``scale`` overrides
        the unit of gaps (for a later slot: the largest weight of all the slots' arms)."""
        arm_ids = list(arm_ids)
        with single_thread():
            _, scores, own_scale = self._weighted(arm_ids, context, weights, scale)
        t = self._exploration_t(arm_ids)
        return self.exploration.probabilities(scores, own_scale, t), scores

    def describe_exploration(self) -> str:
        """One line for explanations: how exploration turns scores into probabilities now."""
        return self.exploration.describe(self.n_updates)

    def _exploration_t(self, arm_ids: list[Hashable]) -> int | np.ndarray:
        """The evidence exploration scales with, per arm (``Exploration.probabilities``'s
        ``t``): the total update count unless a learner knows better."""
        return self.n_updates

    def _weighted(
        self,
        arm_ids: list[Hashable],
        context: Mapping[str, Any],
        weights: Sequence[float] | np.ndarray | None,
        scale: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Estimates, the scores exploration ranks by, and the unit of gaps: ``scale`` when
        given (a later slot's: the largest weight of all the slots' arms), else the largest
        weight."""
        predicted = self._predict(arm_ids, context) if arm_ids else np.zeros(0)
        if weights is None:
            return predicted, predicted, 1.0 if scale is None else scale
        w = np.asarray(weights, dtype=float)
        if w.shape != predicted.shape:
            raise ValueError(f"weights has {w.shape[0]} values for {len(arm_ids)} arms")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative")
        if scale is None:
            scale = float(w.max()) if len(w) else 1.0
        return predicted, weighted_scores(predicted, w, scale), scale

    def update(
        self,
        arm_id: Hashable,
        context: Mapping[str, Any],
        reward: float,
        previous_reward: float | None = None,
    ) -> None:
        """Learns that ``arm_id`` earned ``reward`` in ``context``.

        With ``previous_reward``, this observation was learned before with that reward and is
        being revised (an impression that became a click): it is not counted twice.

        Raises ``ValueError``, having changed nothing, for a non-finite ``reward`` or
        ``previous_reward``, a non-finite number anywhere in ``context`` (lists included), or
        an update that would leave the learner's state non-finite.
        """
        if not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward}")
        if previous_reward is not None and not math.isfinite(previous_reward):
            raise ValueError(f"previous_reward must be a finite number, got {previous_reward}")
        check_finite(context)
        with single_thread():
            self._update(arm_id, context, float(reward), previous_reward)
        self.n_updates += 1

    def export_state(self, reuse: LearnerState | None = None) -> LearnerState:
        """A copy of what this learner has learned, as JSON metadata and numpy arrays
        (``bandit.state``): safe to encode while the learner goes on learning.

        ``reuse``: an earlier export, done with, whose arrays are overwritten where they fit
        rather than allocated anew (a periodic snapshot then costs a copy, not megabytes of
        fresh memory). ``TypeError`` if an arm id is neither text nor an integer."""
        meta, arrays = self._export_state(reuse.arrays if reuse is not None else None)
        return LearnerState(type(self).__name__, self.hyperparameters(), {"n_updates": self.n_updates, **meta}, arrays)

    def import_state(self, state: LearnerState) -> None:
        """Replaces what this learner has learned with ``state``, exported by a learner of the
        same kind and hyperparameters; the draws keep this learner's own generator.
        ``ValueError`` naming what does not fit (kind, params, a missing or misshapen array,
        a non-finite number), and then this learner is unchanged."""
        if state.kind != type(self).__name__:
            raise ValueError(f"kind: the state is of a {state.kind}, not a {type(self).__name__}")
        params = self.hyperparameters()
        if as_json(state.params) != params:
            raise ValueError(f"params: the state was learned with {state.params}, this learner has {params}")
        n_updates = state.meta.get("n_updates")
        if not isinstance(n_updates, int) or isinstance(n_updates, bool) or n_updates < 0:
            raise ValueError(f"meta: n_updates must be a count, got {n_updates!r}")
        self._import_state(state.meta, state.arrays)
        self.n_updates = n_updates

    def hyperparameters(self) -> dict[str, Any]:
        """What changes what the same events teach, as JSON values: the public attributes
        other than ``seed`` and ``n_updates``, the exploration by its kind and fields."""
        params: dict[str, Any] = {}
        for name, value in sorted(vars(self).items()):
            if name.startswith("_") or name in ("seed", "n_updates"):
                continue
            if isinstance(value, Exploration):
                fields: dict[str, Any] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {}
                value = {"kind": type(value).__name__, **fields}
            params[name] = value
        return as_json(params)

    def _export_state(self, reuse: Mapping[str, np.ndarray] | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What ``export_state`` adds to ``n_updates``: metadata and array copies (into
        ``reuse``'s arrays where they fit: ``bandit.state.copied``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot export its state")

    def _import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Checks everything before changing anything."""
        raise NotImplementedError(f"{type(self).__name__} cannot import a state")

    def state_is_finite(self) -> bool:
        """Whether every number the learner holds is finite: what a model restored from
        elsewhere (a snapshot an older version wrote) is checked with before it is trusted."""
        return True

    def _predict(self, arm_ids: list[Hashable], context: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _update(
        self,
        arm_id: Hashable,
        context: Mapping[str, Any],
        reward: float,
        previous_reward: float | None,
    ) -> None:
        """Learns one (validated) observation. Must raise ``ValueError`` and change nothing if
        the update would leave the learner's state non-finite."""
        raise NotImplementedError


def weighted_scores(predicted: np.ndarray, weights: np.ndarray, scale: float) -> np.ndarray:
    """What exploration ranks by, for estimates (reward units) and weights (value of a success):
    ``predicted * weights`` where the estimate is at least zero, ``predicted * scale`` (the
    largest weight) where it is below.

    A weight is the value of a success, so an estimate below zero (the model expects the arm
    to fail, and by how much) must not turn a larger value into a lower score; nor may it be
    floored at zero, which would tie every such arm and lose their order. Multiplied by the
    largest weight, estimates below zero rank below every estimate at or above it, in their
    own order, with gaps in the same unit as the rest.

    >>> weighted_scores(np.array([0.5, -0.1, -0.3]), np.array([2.0, 4.0, 1.0]), 4.0).tolist()
    [1.0, -0.4, -1.2]
    """
    return np.where(predicted >= 0.0, predicted * weights, predicted * scale)


def check_finite(context: Mapping[str, Any]) -> None:
    """Raises ``ValueError`` naming the first non-finite number in ``context`` (nested
    mappings and lists included; Python ints are always finite).

    >>> check_finite({"customer": {"age": 30, "scores": [1.0, float("nan")]}})
    Traceback (most recent call last):
    ...
    ValueError: context: customer.scores[1] is nan; every number must be finite
    """
    if not _all_finite(context):
        _name_the_first(context)


def _all_finite(context: Mapping[str, Any]) -> bool:
    """The fast pass: no names built, plain types tested by identity (updates pay for this)."""
    stack: list[Any] = [context]
    while stack:
        node = stack.pop()
        for value in node.values() if type(node) is dict or isinstance(node, Mapping) else node:
            kind = type(value)
            if kind is float:
                if value - value != 0.0:  # NaN and infinities give NaN; cheaper than isfinite
                    return False
            elif kind is str or kind is bool or kind is int or value is None:
                continue
            elif kind is list or kind is dict or kind is tuple or isinstance(value, Mapping):
                stack.append(value)
            elif isinstance(value, float | np.floating) and not math.isfinite(value):
                return False
    return True


def _name_the_first(context: Mapping[str, Any]) -> None:
    stack: list[tuple[str, Any]] = [("", context)]
    while stack:
        path, node = stack.pop()
        mapping = isinstance(node, Mapping)
        for key, value in node.items() if mapping else enumerate(node):
            name = (f"{path}.{key}" if path else str(key)) if mapping else f"{path}[{key}]"
            if isinstance(value, float | np.floating) and not math.isfinite(value):
                raise ValueError(f"context: {name} is {value}; every number must be finite")
            if isinstance(value, Mapping | list | tuple):
                stack.append((name, value))
