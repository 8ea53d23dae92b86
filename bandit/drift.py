"""Change detection on each arm's residuals: the two-sided Page-Hinkley test.

When what an arm earns changes abruptly (a competitor's offer, a price change), the difference
between its rewards and its estimates (the residuals) moves away from zero and stays away.
The Page-Hinkley test accumulates the standardised residuals' deviations from their running
mean, less an allowance ``delta``, and raises an alarm once the accumulated deviation rises
``threshold`` above its lowest point (or falls as far below its highest): fast for a
lasting shift, and rare by chance (the expected run between false alarms on a stationary
stream grows exponentially with ``delta * threshold``).

river ships the same test (``river.drift.PageHinkley``); this one exists because a learner's
state must be data (``bandit.state``: arrays, never pickles) and a river detector holds its
state in Python objects. It keeps one row of six floats per arm, standardises residuals by
each arm's running variance (so the threshold means the same for rewards in cents or in
thousands) and clips them at ``clip`` standard deviations, so one rare large reward (a
purchase among clicks) cannot raise an alarm alone.

Page (1954), "Continuous inspection schemes", Biometrika 41; Hinkley (1971), "Inference about
the change-point from cumulative sum tests", Biometrika 58.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from bandit.state import arm_ids, arm_list, array, copied

__all__ = ["PageHinkley"]

# The columns of an arm's row.
_N, _MEAN, _M2, _UP, _UP_MIN, _DOWN_MAX = range(6)
_DOWN = 6


class PageHinkley:
    """Two-sided Page-Hinkley tests, one per arm, on standardised, clipped residuals
    (one-sided, for falls only, with ``drops_only``).

    >>> detector = PageHinkley()
    >>> rng = np.random.default_rng(0)
    >>> [detector.update("a", float(rng.normal(0.0, 0.5))) for _ in range(500)].count(True)
    0
    >>> alarms = [detector.update("a", float(rng.normal(-1.0, 0.5))) for _ in range(100)]
    >>> alarms.index(True) < 30
    True
    """

    def __init__(
        self,
        threshold: float = 15.0,
        delta: float = 0.25,
        clip: float = 3.0,
        min_observations: int = 30,
        drops_only: bool = False,
    ) -> None:
        if not threshold > 0 or not delta >= 0 or not clip > 0 or min_observations < 2:
            raise ValueError("threshold and clip must be positive, delta non-negative, min_observations at least 2")
        #: alarm only when the residuals fall (the arm earns less than it is estimated to)
        self.drops_only = drops_only
        self.threshold = threshold
        self.delta = delta
        self.clip = clip
        self.min_observations = min_observations
        self._rows: dict[Hashable, np.ndarray] = {}

    def update(self, arm_id: Hashable, residual: float) -> bool:
        """Adds one residual (reward minus the estimate it was learned against) of ``arm_id``;
        True when the arm's residuals have changed, and then its test starts again."""
        row = self._rows.get(arm_id)
        if row is None:
            row = self._rows[arm_id] = np.zeros(7)
        n = row[_N] + 1.0
        delta = residual - row[_MEAN]
        mean = row[_MEAN] + delta / n
        m2 = row[_M2] + delta * (residual - mean)
        row[_N], row[_MEAN], row[_M2] = n, mean, m2
        if n < self.min_observations:
            return False
        std = math.sqrt(m2 / (n - 1.0))
        if std <= 0.0:
            return False
        z = max(-self.clip, min(self.clip, (residual - mean) / std))
        up = row[_UP] + z - self.delta
        down = row[_DOWN] + z + self.delta
        row[_UP], row[_DOWN] = up, down
        row[_UP_MIN] = min(row[_UP_MIN], up)
        row[_DOWN_MAX] = max(row[_DOWN_MAX], down)
        if (not self.drops_only and up - row[_UP_MIN] > self.threshold) or row[_DOWN_MAX] - down > self.threshold:
            row[:] = 0.0
            return True
        return False

    def forget(self, arm_id: Hashable) -> None:
        """Starts the arm's test again."""
        self._rows.pop(arm_id, None)

    def export_state(
        self, prefix: str = "", reuse: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The arms in order and their tests as one array ``prefix + "tests"`` (arms x 7)."""
        arms = arm_list(self._rows, f"{prefix}arms")
        stacked = np.array([self._rows[arm] for arm in arms]).reshape(len(arms), 7)
        return {"arms": arms}, {f"{prefix}tests": copied(stacked, f"{prefix}tests", reuse)}

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Takes ``export_state``'s output; ``ValueError`` naming what does not fit, before
        anything changes."""
        arms = arm_ids(meta.get("arms"), f"{prefix}arms")
        tests = array(arrays, f"{prefix}tests", (len(arms), 7))
        self._rows = {arm: tests[i].copy() for i, arm in enumerate(arms)}

    def state_is_finite(self) -> bool:
        return all(bool(np.isfinite(row).all()) for row in self._rows.values())
