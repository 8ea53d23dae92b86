"""Per-arm ridge regression kept exact online with the Sherman-Morrison identity.

Each arm a holds A_a^-1 (A_a = alpha * I + sum of x x^T) and b_a (sum of r x); its estimate
is theta_a = A_a^-1 b_a. One update costs O(d^2) and the estimate after n events equals the
batch ridge solution, so a few responses already move the ranking, which is what a service
learning "from every response at once" needs. A_a and b_a are sums of per-event terms: the
order events arrive in does not change where the model ends up.

Estimates for all eligible arms are one matrix-vector product over stacked rows; arms never
updated share row 0, the prior (theta = 0).

With ``forget`` below 1 each new observation of an arm discounts its earlier ones
geometrically, so the estimate follows preferences that drift; the order of events then
matters. The discount must not reach the regularisation (alpha I), or directions the data
never cover would grow without bound: the discounted data sum D is kept beside A^-1, which
is updated cheaply (it lets alpha I decay by at most forget^REFRESH) and recomputed exactly
as (D + alpha I)^-1 every REFRESH observations of the arm.

The state stays finite whatever the rewards: an update that would take an arm's estimate
beyond ``MAX_ESTIMATE`` in norm is refused before anything changes (``ValueError``). A^-1 is
bounded by construction (A includes alpha I, so its inverse has norm at most 1/alpha, or
1/(alpha forget^REFRESH) between refreshes), and so the check needs only b: the new b must be
finite and small enough that A^-1 b cannot exceed the bound. Rewards of any realistic size
never come near it (a million observations of reward 1e6 over unit features is 1e12).

Li, Chu, Langford & Schapire (2010), "A Contextual-Bandit Approach to Personalized News Article
Recommendation", WWW (the disjoint linear model).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
from scipy.linalg.blas import dger

from bandit.state import arm_ids, arm_list, array, copied

__all__ = ["RidgeArms"]

#: with forgetting, A^-1 is recomputed exactly every this many observations of an arm
REFRESH = 32
#: the largest norm an arm's estimate (theta) may reach: far beyond any real reward, far below
#: where its products with features, weights and exploration could overflow
MAX_ESTIMATE = 1e100


class RidgeArms:
    """Ridge regression per arm over a shared feature space of dimension ``dim``.

    >>> m = RidgeArms(dim=2, alpha=1.0)
    >>> for _ in range(50):
    ...     m.learn_one("a", np.array([1.0, 1.0]), 1.0)
    >>> round(float(m.predict(["a", "b"], np.array([1.0, 1.0]))[0]), 2), float(m.predict(["b"], np.array([1.0, 1.0]))[0])
    (0.99, 0.0)
    """

    def __init__(self, dim: int, alpha: float = 1.0, forget: float = 1.0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if not 0 < forget <= 1:
            raise ValueError(f"forget must be within (0, 1], got {forget}")
        self.dim = dim
        self.alpha = alpha
        self.forget = forget
        self._rows: dict[Hashable, int] = {}
        capacity = 8
        self._ainv = np.empty((capacity, dim, dim))
        self._ainv[0] = np.eye(dim) / alpha
        self._b = np.zeros((capacity, dim))
        self._theta = np.zeros((capacity, dim))
        self._count = np.zeros(capacity, dtype=np.int64)
        # Only with forgetting: the discounted sum of x x^T of each arm.
        self._data = np.zeros((capacity, dim, dim)) if forget < 1.0 else None

    def predict(self, arm_ids: Sequence[Hashable], x: np.ndarray) -> np.ndarray:
        """Expected reward of each arm for features ``x``."""
        return self._theta[self.rows(arm_ids)] @ x

    def rows(self, arm_ids: Sequence[Hashable]) -> np.ndarray:
        """Each arm's row (0, the prior, for arms never updated)."""
        rows = self._rows
        return np.fromiter(map(rows.get, arm_ids, repeat(0)), dtype=np.intp, count=len(arm_ids))

    def predict_rows(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._theta[rows] @ x

    def counts(self, rows: np.ndarray) -> np.ndarray:
        return self._count[rows]

    def count(self, arm_id: Hashable) -> int:
        """How many observations the arm has learned from."""
        row = self._rows.get(arm_id)
        return 0 if row is None else int(self._count[row])

    def learn_one(
        self, arm_id: Hashable, x: np.ndarray, reward: float, previous_reward: float | None = None
    ) -> None:
        """Learns one observation, or revises one already learned.

        With ``previous_reward`` given, the observation ``(x, previous_reward)`` was learned
        before and its reward is now ``reward`` (a click that became a purchase): only b moves.

        Raises ``ValueError``, changing nothing, if the update would leave the arm's state
        non-finite or its estimate beyond ``MAX_ESTIMATE`` (``check_one``).
        """
        self.check_one(arm_id, x, reward, previous_reward)
        self._apply_one(arm_id, x, reward, previous_reward)

    def check_one(
        self, arm_id: Hashable, x: np.ndarray, reward: float, previous_reward: float | None = None,
        x_norm: float | None = None,
    ) -> None:
        """Raises ``ValueError`` naming the reward if this update would leave the arm's state
        non-finite or its estimate beyond ``MAX_ESTIMATE``; changes nothing. ``x_norm`` is
        ``||x||``, when the caller checks several models with one x."""
        row = self._rows.get(arm_id)
        old = self._b[row] if row is not None else None
        delta = reward if previous_reward is None else reward - previous_reward
        keep = self.forget if previous_reward is None and self._data is not None else 1.0
        # ||theta|| = ||A^-1 b|| <= ||b|| / (smallest eigenvalue of A), and A >= alpha I
        # (decayed by at most forget^REFRESH between exact refreshes).
        floor = self.alpha * self.forget**REFRESH
        # First a bound by the triangle inequality, in Python floats (which overflow to inf
        # quietly): enough for every ordinary update, and costs one dot product.
        old_norm = math.sqrt(float(old @ old)) if old is not None else 0.0
        if x_norm is None:
            x_norm = math.sqrt(float(x @ x))
        if (keep * old_norm + abs(delta) * x_norm) / floor <= MAX_ESTIMATE:
            return
        # Near the bound (or beyond): the exact new b decides.
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what is being checked for
            b = (keep * old if old is not None else 0.0) + delta * x
            exact = float(np.sqrt(b @ b)) / floor
        if not exact <= MAX_ESTIMATE:  # also NaN
            change = f"reward {reward}" if previous_reward is None else f"reward {reward} (revising {previous_reward})"
            raise ValueError(f"{change} would take arm {arm_id!r}'s estimate beyond {MAX_ESTIMATE:g} "
                             "or out of the finite numbers; refused")

    def _apply_one(self, arm_id: Hashable, x: np.ndarray, reward: float, previous_reward: float | None) -> None:
        """Applies an update ``check_one`` accepted."""
        row = self._row(arm_id)
        ainv = self._ainv[row]
        if previous_reward is None:
            refresh = False
            if self._data is not None:
                # Discounted ridge: D <- forget D + x x^T, b <- forget b + r x.
                data = self._data[row]
                data *= self.forget
                dger(1.0, x, x, a=data.T, overwrite_a=True)
                self._b[row] *= self.forget
                refresh = (self._count[row] + 1) % REFRESH == 0
                if not refresh:
                    ainv /= self.forget  # the cheap step: alpha I decays a little until the refresh
            if refresh:
                ainv[...] = np.linalg.inv(self._data[row] + self.alpha * np.eye(self.dim))
            else:
                ax = ainv @ x
                # The rank-one downdate in place with BLAS dger: seven times faster than numpy's
                # outer product and subtraction, which allocate a d x d temporary. A^-1 is
                # symmetric, so its C-ordered row is a Fortran-ordered matrix dger updates in place.
                dger(-1.0 / (1.0 + x @ ax), ax, ax, a=ainv.T, overwrite_a=True)
            self._b[row] += reward * x
            self._count[row] += 1
        else:
            self._b[row] += (reward - previous_reward) * x
        np.dot(ainv, self._b[row], out=self._theta[row])

    def state_is_finite(self) -> bool:
        """Whether every number held is finite (a model restored from elsewhere is checked);
        the spare capacity beyond the rows in use is not state."""
        used = len(self._rows) + 1
        return all(bool(np.isfinite(getattr(self, name)[:used]).all()) for name in self._arrays())

    def _row(self, arm_id: Hashable) -> int:
        row = self._rows.get(arm_id)
        if row is not None:
            return row
        row = len(self._rows) + 1
        if row >= len(self._count):
            self._grow(2 * len(self._count))
        self._ainv[row] = np.eye(self.dim) / self.alpha
        self._b[row] = 0.0
        self._theta[row] = 0.0
        self._count[row] = 0
        if self._data is not None:
            self._data[row] = 0.0
        self._rows[arm_id] = row
        return row

    def _grow(self, capacity: int) -> None:
        n = len(self._count)
        for name in self._arrays():
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[:n] = old
            setattr(self, name, new)

    def __getstate__(self) -> dict:
        # Snapshots carry only the rows in use, not the spare capacity.
        used = len(self._rows) + 1
        state = self.__dict__.copy()
        for name in self._arrays():
            state[name] = state[name][:used].copy()
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_data", None)
        self.__dict__.update(state)

    def export_state(self, prefix: str = "", reuse: Mapping[str, np.ndarray] | None = None
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The arms in row order and copies of the rows in use, arrays named ``prefix`` +
        ``ainv``, ``b``, ``theta``, ``count`` (and ``data`` with forgetting); copied into
        ``reuse``'s arrays of the same name and shape, if given."""
        used = len(self._rows) + 1
        meta = {"arms": arm_list(sorted(self._rows, key=self._rows.__getitem__), f"{prefix}arms")}
        return meta, {f"{prefix}{name[1:]}": copied(getattr(self, name)[:used], f"{prefix}{name[1:]}", reuse)
                      for name in self._arrays()}

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Takes ``export_state``'s output (of a model of the same dimension); ``ValueError``
        naming what does not fit, before anything changes."""
        arms = arm_ids(meta.get("arms"), f"{prefix}arms")
        n, d = len(arms) + 1, self.dim
        loaded = {
            "_ainv": array(arrays, f"{prefix}ainv", (n, d, d)),
            "_b": array(arrays, f"{prefix}b", (n, d)),
            "_theta": array(arrays, f"{prefix}theta", (n, d)),
            "_count": array(arrays, f"{prefix}count", (n,), kind="i"),
        }
        if self._data is not None:
            loaded["_data"] = array(arrays, f"{prefix}data", (n, d, d))
        for name, value in loaded.items():
            setattr(self, name, value)
        self._rows = {arm: row for row, arm in enumerate(arms, start=1)}

    def _arrays(self) -> tuple[str, ...]:
        return ("_ainv", "_b", "_theta", "_count") + (("_data",) if self._data is not None else ())
