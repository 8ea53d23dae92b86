"""A baseline that knows nothing: every eligible arm equally likely in every slot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from bandit.base import Learner
from bandit.exploration import EpsilonGreedy
from bandit.state import arm_ids, arm_list

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

    def _export_state(self, reuse: Mapping[str, np.ndarray] | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"counts": [[arm, n] for arm, n in zip(arm_list(self._counts, "counts"), self._counts.values(), strict=True)]}, {}

    def _import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        counts = meta.get("counts")
        if not isinstance(counts, list) or not all(
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[1], int)
            and not isinstance(item[1], bool)
            and item[1] >= 0
            for item in counts
        ):
            raise ValueError("meta: counts must be a list of [arm id, count]")
        arms = arm_ids([arm for arm, _ in counts], "counts")
        self._counts = Counter(dict(zip(arms, (n for _, n in counts), strict=True)))

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
