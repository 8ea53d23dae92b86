"""Per-arm ridge regression kept exact online.

Each arm a holds b_a (sum of r x) and either A_a^-1 (A_a = alpha * I + sum of x x^T, kept with
the Sherman-Morrison identity) or, with forgetting, the discounted data sum D_a; its estimate is
theta_a = A_a^-1 b_a. Without forgetting, one update costs O(d^2) and the estimate after n
events equals the batch ridge solution, so a few responses already move the ranking, which is
what a service learning "from every response at once" needs. A_a and b_a are sums of per-event
terms: the order events arrive in does not change where the model ends up.

Estimates for all eligible arms are one matrix-vector product over stacked rows; arms never
updated share row 0, the prior (theta = 0).

**Forgetting** (``forget`` below 1) is exact discounted ridge on a clock shared by every arm.
Each step of the clock (``advance``: one observation learned by the owner, whichever arm it
was) moves the forgetting time tau on by 1 / K, K the arms known, and an observation learned
at tau_s weighs forget^(tau - tau_s), chosen or not:

    A_a = alpha I + sum_s forget^(tau - tau_s) x_s x_s^T,   b_a = sum_s forget^(tau - tau_s) r_s x_s

so a round of the catalogue discounts by ``forget``, and an arm at its fair share of the
updates remembers about 1 / (1 - forget) of its own observations however many arms there are.
The estimate of an arm nobody chooses any more decays towards the prior and its evidence
(``evidence``) towards 0, as a learner that follows change needs. The discount never reaches
the regularisation alpha I (that would let directions the data never cover grow without
bound). The exact solution costs an inverse, O(d^3) (about 100 microseconds at d = 129),
too much for every update; so each arm keeps D beside A^-1, and between exact solves takes the
cheap step: when it learns after a discount f, A <- f A + x x^T (Sherman-Morrison, O(d^2)),
which discounts alpha I along with the data. The weight left on alpha I is tracked, and the arm
is solved exactly from D before it falls more than ``STALE_DISCOUNT`` (5%) below 1; the
estimates of arms not learning are solved exactly once their discount since the last solve
reaches 5% (``stale_time()``), so none lags its exact value by more than a 5% discount
(``tests/bandit/test_adaptation.py`` checks the bound against the batch solution).

The state stays finite whatever the rewards: an update that would take an arm's estimate
beyond ``MAX_ESTIMATE`` in norm is refused before anything changes (``ValueError``). A^-1 is
bounded by construction (A includes alpha I, so its inverse has norm at most 1/alpha), and so
the check needs only b: the new b must be finite and small enough that A^-1 b cannot exceed the
bound. Rewards of any realistic size never come near it (a million observations of reward 1e6
over unit features is 1e12).

Li, Chu, Langford & Schapire (2010), "A Contextual-Bandit Approach to Personalized News Article
Recommendation", WWW (the disjoint linear model); discounted least squares as in Russac, Vernade
& Cappé (2019), "Weighted Linear Bandits for Non-Stationary Environments", NeurIPS (D-LinUCB).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
from scipy.linalg.blas import dger
from scipy.linalg.lapack import dpotrf, dpotri

from bandit.state import arm_ids, arm_list, array, copied

__all__ = ["RidgeArms"]

#: with forgetting, the largest share by which an estimate may lag its exact discounted value:
#: an arm not learning is solved again before its evidence has decayed by more than this, and
#: the regularisation inside an arm's A^-1 kept by the cheap step may fall this far below alpha
#: before the arm is solved again exactly
STALE_DISCOUNT = 0.05
#: with forgetting, a row whose discounted count of observations falls below this is emptied
EMPTY = 1e-9
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
        #: steps of the shared clock (``advance``); only forgetting reads it
        self.clock = 0
        #: forgetting time: each step adds 1 / (the arms known), so an arm's past decays by
        #: ``forget`` per round of the catalogue (only forgetting reads it)
        self.time = 0.0
        self._rows: dict[Hashable, int] = {}
        capacity = 8
        self._b = np.zeros((capacity, dim))
        self._theta = np.zeros((capacity, dim))
        self._count = np.zeros(capacity, dtype=np.int64)
        #: the clock when each arm first learned (or was last reset): its age, for exploration
        self._born = np.zeros(capacity, dtype=np.int64)
        self._ainv = np.empty((capacity, dim, dim))
        self._ainv[0] = np.eye(dim) / alpha
        if forget < 1.0:
            # The discounted sum of x x^T and the discounted count of each arm, current as of
            # step _seen; A^-1 and theta current as of step _solved.
            self._data: np.ndarray | None = np.zeros((capacity, dim, dim))
            self._weight = np.zeros(capacity)
            self._seen = np.zeros(capacity)
            self._solved = np.zeros(capacity)
            #: the weight of alpha I inside the A^-1 kept (1 after an exact solve; the cheap
            #: step discounts it with the data)
            self._ridge = np.ones(capacity)
        else:
            self._data = None

    def stale_time(self) -> float:
        """How long (in forgetting time) an estimate may go unsolved with forgetting: the most
        whose discount stays within ``STALE_DISCOUNT``."""
        if self.forget >= 1.0:
            return math.inf
        return math.log1p(-STALE_DISCOUNT) / math.log(self.forget)

    def advance(self, steps: int = 1) -> None:
        """Moves the shared clock on. With forgetting, every arm's past weighs ``forget`` less
        per round of the catalogue (a step adds 1 / the number of arms known to the forgetting
        time: an arm's memory holds about 1 / (1 - forget) of its own observations at its fair
        share of the updates, however many arms there are), and the estimates of arms not
        learning are solved again as they reach ``stale_time()`` (here, not when read: an
        estimate is then a function of the updates alone, so a replay of the same updates gives
        the same estimates, whoever read what)."""
        self.clock += steps
        if self._data is not None and self._rows:
            self.time += steps / len(self._rows)
            used = len(self._rows) + 1
            # Rows whose evidence has all decayed away (an offer long gone) are emptied once and
            # then cost nothing until they learn again.
            stale = (self.time - self._solved[1:used] >= self.stale_time()) & (self._weight[1:used] > 0.0)
            for row in np.flatnonzero(stale) + 1:
                self._solve(int(row))

    def predict(self, arm_ids: Sequence[Hashable], x: np.ndarray) -> np.ndarray:
        """Expected reward of each arm for features ``x``."""
        return self.predict_rows(self.rows(arm_ids), x)

    def rows(self, arm_ids: Sequence[Hashable]) -> np.ndarray:
        """Each arm's row (0, the prior, for arms never updated)."""
        rows = self._rows
        return np.fromiter(map(rows.get, arm_ids, repeat(0)), dtype=np.intp, count=len(arm_ids))

    def predict_rows(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._theta[rows] @ x

    def estimate(self, arm_id: Hashable) -> np.ndarray:
        """A copy of the arm's coefficients theta (zeros for an arm never updated)."""
        return self._theta[self._rows.get(arm_id, 0)].copy()

    def known_estimates(self, x: np.ndarray) -> np.ndarray:
        """Every arm's estimate for ``x`` (as last solved), the prior's row excluded."""
        return self._theta[1 : len(self._rows) + 1] @ x

    def evidence(self, rows: np.ndarray) -> np.ndarray:
        """Each row's weight of evidence now: its count, or with forgetting the discounted count
        (sum of forget^age over its observations), which decays while the arm is not chosen."""
        if self._data is None:
            return self._count[rows].astype(float)
        return self._weight[rows] * self.forget ** (self.time - self._seen[rows])

    def direction_evidence(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """How many observations like ``x`` each row has learned from, as ridge sees it:
        1 / (x^T A^-1 x) - alpha / ||x||^2, which is m after m observations of x itself (0 for
        an arm never updated) and stays small for an arm that learned only from customers
        unlike this one. O(d^2) per row."""
        xx = float(x @ x)
        if not xx:
            return self.evidence(rows)
        # Row by row: indexing the stacked matrices by rows would copy them (d^2 floats each).
        ainv = self._ainv
        v = np.fromiter((x @ (ainv[row] @ x) for row in rows.tolist()), dtype=float, count=len(rows))
        return np.maximum(1.0 / np.maximum(v, 1e-300) - self.alpha / xx, 0.0)

    def births(self, rows: np.ndarray) -> np.ndarray:
        """The clock's step at which each row first learned (or was last reset)."""
        return self._born[rows]

    def ages(self, rows: np.ndarray) -> np.ndarray:
        """Steps of the clock since each row first learned (0 for the prior row)."""
        return np.where(rows > 0, self.clock - self._born[rows], 0)

    def count(self, arm_id: Hashable) -> int:
        """How many observations the arm has learned from."""
        row = self._rows.get(arm_id)
        return 0 if row is None else int(self._count[row])

    def learn_one(self, arm_id: Hashable, x: np.ndarray, reward: float, previous_reward: float | None = None) -> None:
        """Learns one observation (one step of the clock), or revises one already learned.

        With ``previous_reward`` given, the observation ``(x, previous_reward)`` was learned
        before and its reward is now ``reward`` (a click that became a purchase): only b moves,
        and the clock does not.

        Raises ``ValueError``, changing nothing, if the update would leave the arm's state
        non-finite or its estimate beyond ``MAX_ESTIMATE`` (``check_one``).
        """
        self.check_one(arm_id, x, reward, previous_reward)
        if previous_reward is None:
            self.advance()
        self._apply_one(arm_id, x, reward, previous_reward)

    def check_one(
        self,
        arm_id: Hashable,
        x: np.ndarray,
        reward: float,
        previous_reward: float | None = None,
        x_norm: float | None = None,
    ) -> None:
        """Raises ``ValueError`` naming the reward if this update would leave the arm's state
        non-finite or its estimate beyond ``MAX_ESTIMATE``; changes nothing. ``x_norm`` is
        ``||x||``, when the caller checks several models with one x."""
        row = self._rows.get(arm_id)
        old = self._b[row] if row is not None else None
        delta = reward if previous_reward is None else reward - previous_reward
        # ||theta|| = ||A^-1 b|| <= ||b|| / (smallest eigenvalue of A), and A >= alpha I; with
        # forgetting, b only shrinks before the new term is added (so the undiscounted b bounds it).
        # First a bound by the triangle inequality, in Python floats (which overflow to inf
        # quietly): enough for every ordinary update, and costs one dot product.
        old_norm = math.sqrt(float(old @ old)) if old is not None else 0.0
        if x_norm is None:
            x_norm = math.sqrt(float(x @ x))
        if (old_norm + abs(delta) * x_norm) / self.alpha <= MAX_ESTIMATE:
            return
        # Near the bound (or beyond): the exact new b decides.
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what is being checked for
            b = (old if old is not None else 0.0) + delta * x
            exact = float(np.sqrt(b @ b)) / self.alpha
        if not exact <= MAX_ESTIMATE:  # also NaN
            change = f"reward {reward}" if previous_reward is None else f"reward {reward} (revising {previous_reward})"
            raise ValueError(
                f"{change} would take arm {arm_id!r}'s estimate beyond {MAX_ESTIMATE:g} or out of the finite numbers; refused"
            )

    def _apply_one(self, arm_id: Hashable, x: np.ndarray, reward: float, previous_reward: float | None) -> None:
        """Applies an update ``check_one`` accepted, at the current step of the clock."""
        row = self._row(arm_id)
        ainv = self._ainv[row]
        if self._data is not None:
            self._catch_up(row)
            if previous_reward is not None:
                # The revised observation's own discount is not known here: revised at full weight.
                self._b[row] += (reward - previous_reward) * x
                np.dot(ainv, self._b[row], out=self._theta[row])
                return
            # Discounted ridge: D <- D + x x^T, b <- b + r x at the current step.
            dger(1.0, x, x, a=self._data[row].T, overwrite_a=True)
            self._weight[row] += 1.0
            if self._ridge[row] < 1.0 - STALE_DISCOUNT:
                self._b[row] += reward * x
                self._count[row] += 1
                self._solve(row)
                return
        if previous_reward is None:
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
        if self._data is not None:
            self._solved[row] = self.time

    def _catch_up(self, row: int) -> None:
        """Discounts a row's D, b and weight to the current step, and its A^-1 by the cheap step:
        A <- factor * A discounts the regularisation with the data (A^-1 / factor, O(d^2)), which
        ``_ridge`` records; the estimate A^-1 b does not move."""
        elapsed = self.time - float(self._seen[row])
        if elapsed > 0.0:
            factor = self.forget**elapsed
            if factor * self._weight[row] < EMPTY:
                self._empty(row)
                return
            assert self._data is not None  # only forgetting moves the forgetting time
            self._data[row] *= factor
            self._b[row] *= factor
            self._weight[row] *= factor
            self._ainv[row] /= factor
            self._ridge[row] *= factor
            self._seen[row] = self.time

    def _empty(self, row: int) -> None:
        """A row whose evidence has decayed below ``EMPTY`` becomes the prior's (what is left
        would be below any reward's precision)."""
        assert self._data is not None  # only forgetting empties rows
        self._data[row] = 0.0
        self._b[row] = 0.0
        self._theta[row] = 0.0
        self._weight[row] = 0.0
        self._ainv[row] = np.eye(self.dim) / self.alpha
        self._ridge[row] = 1.0
        self._seen[row] = self._solved[row] = self.time

    def _solve(self, row: int) -> None:
        """A^-1 = (D + alpha I)^-1 and theta = A^-1 b at the current step, by Cholesky (D +
        alpha I is positive definite: D is a sum of squares and alpha > 0)."""
        self._catch_up(row)
        assert self._data is not None  # only forgetting solves from D
        a = self._data[row] + np.diag(np.full(self.dim, self.alpha))
        factor, info = dpotrf(a, lower=1, clean=1, overwrite_a=1)
        if info == 0:
            inverse, info = dpotri(factor, lower=1, overwrite_c=1)
        target = self._ainv[row]
        if info != 0:  # only if D stopped being a sum of squares: a general inverse
            target[...] = np.linalg.inv(self._data[row] + self.alpha * np.eye(self.dim))
        else:  # the lower triangle (the upper is zero), mirrored: L + L^T counts the diagonal twice
            np.add(inverse, inverse.T, out=target)
            target.flat[:: self.dim + 1] *= 0.5
        np.dot(target, self._b[row], out=self._theta[row])
        self._solved[row] = self.time
        self._ridge[row] = 1.0

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
        self._clear(row)
        self._rows[arm_id] = row
        return row

    def reset(self, arm_id: Hashable) -> None:
        """Forgets everything an arm learned: it is estimated as the prior again, and its age
        starts anew (a change was detected in what it earns)."""
        row = self._rows.get(arm_id)
        if row is not None:
            self._clear(row)

    def _clear(self, row: int) -> None:
        """A row as the prior's, born now."""
        self._b[row] = 0.0
        self._theta[row] = 0.0
        self._count[row] = 0
        self._born[row] = self.clock
        self._ainv[row] = np.eye(self.dim) / self.alpha
        if self._data is not None:
            self._data[row] = 0.0
            self._weight[row] = 0.0
            self._seen[row] = self._solved[row] = self.time
            self._ridge[row] = 1.0

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
        # Pickles of earlier versions: no clock, no ages (every arm as old as the clock).
        state.setdefault("_data", None)
        state.setdefault("clock", 0)
        state.setdefault("time", 0.0)
        if "_born" not in state:
            state["_born"] = np.zeros(len(state["_count"]), dtype=np.int64)
        if state["_data"] is not None and "_weight" not in state:
            raise ValueError(
                "a forgetting model pickled by an earlier version cannot be restored: its "
                "forgetting was per arm; rebuild it from the log"
            )
        self.__dict__.update(state)

    def export_state(
        self, prefix: str = "", reuse: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The arms in row order, the clock, and copies of the rows in use, arrays named
        ``prefix`` + ``b``, ``theta``, ``count``, ``born`` and ``ainv`` (without forgetting)
        or ``data``, ``weight``, ``seen``, ``solved`` (with); copied into ``reuse``'s arrays
        of the same name and shape, if given."""
        used = len(self._rows) + 1
        meta = {
            "arms": arm_list(sorted(self._rows, key=self._rows.__getitem__), f"{prefix}arms"),
            "clock": self.clock,
            "time": self.time,
        }
        return meta, {
            f"{prefix}{name[1:]}": copied(getattr(self, name)[:used], f"{prefix}{name[1:]}", reuse) for name in self._arrays()
        }

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Takes ``export_state``'s output (of a model of the same dimension); ``ValueError``
        naming what does not fit, before anything changes."""
        arms = arm_ids(meta.get("arms"), f"{prefix}arms")
        clock = meta.get("clock", 0)
        if not isinstance(clock, int) or isinstance(clock, bool) or clock < 0:
            raise ValueError(f"meta: {prefix}clock must be a count, got {clock!r}")
        n, d = len(arms) + 1, self.dim
        shapes = {
            "_b": ((n, d), "f"),
            "_theta": ((n, d), "f"),
            "_count": ((n,), "i"),
            "_born": ((n,), "i"),
            "_ainv": ((n, d, d), "f"),
            "_data": ((n, d, d), "f"),
            "_weight": ((n,), "f"),
            "_seen": ((n,), "f"),
            "_solved": ((n,), "f"),
            "_ridge": ((n,), "f"),
        }
        loaded = {}
        for name in self._arrays():
            shape, kind = shapes[name]
            if name == "_born" and f"{prefix}born" not in arrays:
                loaded[name] = np.zeros(n, dtype=np.int64)  # written before ages were kept
                continue
            loaded[name] = array(arrays, f"{prefix}{name[1:]}", shape, kind=kind)
        time = meta.get("time", 0.0)
        if isinstance(time, int) and not isinstance(time, bool):
            time = float(time)
        if not isinstance(time, float) or not 0.0 <= time < math.inf:
            raise ValueError(f"meta: {prefix}time must be a finite non-negative number, got {time!r}")
        for name, end in (("_born", clock), ("_seen", time), ("_solved", time)):
            if name in loaded and (loaded[name].min(initial=0) < 0 or loaded[name].max(initial=0) > end):
                raise ValueError(f"arrays: {prefix}{name[1:]} must lie within 0 to {end}")
        if "_ridge" in loaded and not np.all((loaded["_ridge"] > 0) & (loaded["_ridge"] <= 1)):
            raise ValueError(f"arrays: {prefix}ridge must lie in (0, 1]")
        if "_weight" in loaded and np.any(loaded["_weight"] < 0):
            raise ValueError(f"arrays: {prefix}weight must not be negative")
        for name, value in loaded.items():
            setattr(self, name, value)
        self._rows = {arm: row for row, arm in enumerate(arms, start=1)}
        self.clock, self.time = clock, time

    def _arrays(self) -> tuple[str, ...]:
        if self._data is not None:
            return ("_ainv", "_b", "_theta", "_count", "_born", "_data", "_weight", "_seen", "_solved", "_ridge")
        return ("_ainv", "_b", "_theta", "_count", "_born")
