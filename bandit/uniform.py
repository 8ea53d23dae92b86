"""A baseline that knows nothing: every eligible arm equally likely in every slot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from bandit.base import Learner
from bandit.exploration import EpsilonGreedy

__all__ = ["UniformRandom"]


class UniformRandom(Learner):
    """Uniform random choice among the arms offered; counts what it is told, learns nothing.

    The yardstick every learner must beat, and the logging policy whose value is easiest to
    check: its propensities are exactly 1/K.

    >>> draw = UniformRandom(seed=3).pull(["a", "b", "c", "d"], {}, k=2)
    >>> [round(p, 3) for _, p in draw.slots]
    [0.25, 0.333]
    """

    name = "uniform"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(EpsilonGreedy(epsilon=1.0), seed)
        self._counts: Counter[Hashable] = Counter()

    def count(self, arm_id: Hashable) -> int:
        return self._counts[arm_id]

    def _predict(self, arm_ids: list[Hashable], context: Mapping[str, Any]) -> np.ndarray:
        return np.zeros(len(arm_ids))

    def _update(
        self,
        arm_id: Hashable,
        context: Mapping[str, Any],
        reward: float,
        previous_reward: float | None,
    ) -> None:
        if previous_reward is None:
            self._counts[arm_id] += 1
