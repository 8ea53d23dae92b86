"""Arbitration: how much an eligible offer's expected reward counts when offers are ranked.

An offer's multiplier is its value x levers (the offer's times its group's) x context weights
(the weight policies that apply, each already within [0, screening.MAX_WEIGHT]); exploration
draws over expected reward x multiplier. The live service, the what-if preview and offline
evaluation (a policy set screened again, or a learner replayed over the logged factors) all
take the multiplier from here, so the three rank alike. A leaf: imports nothing of nba.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["MAX_MULTIPLIER", "multiplier", "multiplier_array", "multipliers"]

#: value x levers x weights is capped here, so no policy value and no context can overflow a score
MAX_MULTIPLIER = 1e9


def multiplier(value: float, lever: float = 1.0, weight: float = 1.0) -> float:
    """An offer's arbitration multiplier: ``value * lever * weight`` within [0, MAX_MULTIPLIER];
    a product that is negative or NaN counts as 0.

    >>> multiplier(10.0, 4.0, 1.5), multiplier(1e6, 1e3, 1e3), multiplier(float("nan"))
    (60.0, 1000000000.0, 0.0)
    """
    product = value * lever * weight
    if not product > 0.0:  # also NaN
        return 0.0
    return min(product, MAX_MULTIPLIER)


def multipliers(factors: Iterable[tuple[float, float, float]]) -> np.ndarray:
    """``multiplier`` of each (value, lever, weight), as an array."""
    return np.fromiter((multiplier(v, lev, w) for v, lev, w in factors), dtype=float)


def multiplier_array(values: np.ndarray, levers: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``multiplier`` of every offer at once, from arrays of the same length (the same
    products in the same order, so the same numbers).

    >>> multiplier_array(np.array([10.0, 1e6, np.nan]), np.array([4.0, 1e3, 1.0]), np.array([1.5, 1e3, 1.0])).tolist()
    [60.0, 1000000000.0, 0.0]
    """
    product = values * levers * weights
    return np.where(product > 0.0, np.minimum(product, MAX_MULTIPLIER), 0.0)
