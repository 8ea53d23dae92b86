"""The reward model q(x, a) of the direct method and doubly robust: a cross-fitted, L2-regularised
logistic regression whose predictions stay within the rewards' range.

Rewards are scaled to [0, 1] with the range ``[low, high]`` (given, or the smallest and largest
reward of the log) and fit with the logistic loss, which for a fraction y is the
quasi-binomial (fractional logit) loss of Papke & Wooldridge (1996),
"Econometric methods for fractional response variables":

    minimise  sum_j c_j [log(1 + e^z_j) - y_j z_j]  +  1/2 sum_k lambda_k beta_k^2,
    z_j = b + x_j . beta,   q = low + (high - low) / (1 + e^-z)

so every prediction lies strictly inside the range, whatever the features. For 0/1 rewards it
is ordinary logistic regression. Fit by L-BFGS (scipy) on sparse features; the intercept is not
penalised (a 0.4% click rate needs an intercept near -5.5).

Features of a (decision, offer) pair, encoded from the log alone (no reward enters them):

* the context: each number standardised over the log's decisions (clipped to ±5 standard
  deviations), each true/false as 0/1, each string (and each string in a list) one-hot as
  ``key=value`` (values seen in fewer than ``MIN_COUNT`` decisions share ``key=<other>``);
* the offer's identity, one-hot;
* the offer's features (``features`` on a candidate, or the ``--offers`` catalogue), encoded
  as the context is; an offer the log never showed is predicted from these and the context;
* the offer's identity crossed with every context column (each offer's own response to the
  customer), shrunk towards the shared effects when an offer has few rewards (left out when
  there would be more than ``MAX_CROSSED`` such columns: 2,000 context columns x 250 offers);
* the slot, for logs with several: the model is trained on every answered slot's reward and
  predicts the first slot's.

Cross-fitting (Chernozhukov et al. (2018), "Double/debiased machine learning"): decision i is in
fold i mod K; its predictions come from the model fit on the other K - 1 folds, so no decision
is predicted by a model that saw its reward.

The penalty is fixed (a standard normal prior on each standardised coefficient's log-odds), not
chosen for the best held-out prediction: DM averages the predictions over every decision and
every offer a target might choose, so their variance mostly averages away while the bias of
shrinkage stays. Choosing the penalty by held-out log loss (tried: nested, per fold, weighted by
inverse propensity) picked penalties 10 to 30 times stronger, a Brier score 1% better on a
simulated log, and a DM for uniform random 13% above its true value instead of 0.2%.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import sparse

from nba.evaluation.logs import LoggedDecision

__all__ = ["MAX_CROSSED", "MIN_COUNT", "RewardModel"]

#: a string value seen in fewer decisions than this is encoded as its key's ``<other>``
MIN_COUNT = 2
#: most columns kept for the context (the most frequent first), and for the offers' features
MAX_COLUMNS = 2000
#: standardised numbers are clipped to this many standard deviations
CLIP = 5.0
#: most offer x context columns (each offer's own response to the customer); beyond, left out
MAX_CROSSED = 500_000


class _Encoder:
    """Flattened feature mappings -> sparse rows, with the vocabulary and scales of a sample."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        counts: Counter[str] = Counter()
        numbers: dict[str, list[float]] = {}
        for row in rows:
            seen = set()
            for key, value in row.items():
                if isinstance(value, bool):
                    seen.add(f"{key}=true" if value else f"{key}=false")
                elif isinstance(value, int | float):
                    numbers.setdefault(key, []).append(float(value))
                elif isinstance(value, str):
                    seen.add(f"{key}={value}")
                elif isinstance(value, list):
                    seen.update(f"{key}={v}" for v in value if isinstance(v, str))
            counts.update(seen)
        columns: list[str] = [k for k in sorted(numbers) if np.std(numbers[k]) > 0]
        self._scale = {k: (float(np.mean(numbers[k])), float(np.std(numbers[k]))) for k in columns}
        frequent = sorted((c for c, n in counts.items() if n >= MIN_COUNT), key=lambda c: (-counts[c], c))
        rare_keys = sorted({c.split("=", 1)[0] for c, n in counts.items() if n < MIN_COUNT})
        columns += frequent + [f"{k}=<other>" for k in rare_keys]
        columns = columns[:MAX_COLUMNS]
        self.index = {c: j for j, c in enumerate(columns)}
        self.width = len(columns)

    def encode(self, row: Mapping[str, Any]) -> tuple[list[int], list[float]]:
        cols: list[int] = []
        vals: list[float] = []

        def put(name: str, value: float) -> None:
            j = self.index.get(name)
            if j is None and "=" in name:
                j = self.index.get(name.split("=", 1)[0] + "=<other>")
            if j is not None and value != 0.0:
                cols.append(j)
                vals.append(value)

        for key, value in row.items():
            if isinstance(value, bool):
                put(f"{key}={'true' if value else 'false'}", 1.0)
            elif isinstance(value, int | float):
                scale = self._scale.get(key)
                if scale is not None:
                    put(key, min(CLIP, max(-CLIP, (float(value) - scale[0]) / scale[1])))
            elif isinstance(value, str):
                put(f"{key}={value}", 1.0)
            elif isinstance(value, list):
                for v in dict.fromkeys(v for v in value if isinstance(v, str)):
                    put(f"{key}={v}", 1.0)
        return cols, vals

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> sparse.csr_matrix:
        """One row each; a mapping repeated (the same object, as a catalogue's) is encoded once."""
        indptr, indices, data = [0], [], []
        cache: dict[int, tuple[list[int], list[float]]] = {}
        for row in rows:
            encoded = cache.get(id(row))
            if encoded is None:
                encoded = cache[id(row)] = self.encode(row)
            cols, vals = encoded
            indices += cols
            data += vals
            indptr.append(len(indices))
        return sparse.csr_matrix(
            (np.asarray(data, dtype=float), np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
            shape=(len(rows), self.width),
        )


_NONE: Mapping[str, Any] = {}


class RewardModel:
    """q(x, a): the expected reward of each offer in each logged context, cross-fitted.

    ``decisions``: the log. ``folds``: K of the cross-fit (at least 2). ``reward_range``:
    ``(low, high)`` of the rewards (default: the log's smallest and largest reward); every
    prediction is inside it. ``penalty``: the L2 penalty of the shared effects (context, offer
    identity, offer features; 1 is a standard normal prior on each standardised column's
    log-odds); ``interaction_penalty``: that of each offer's own response to the context (left
    out, ``crossed`` false, when offers x context columns exceed ``MAX_CROSSED``). ``offers``:
    offer id -> features (a catalogue, ``read_offers``), for offers a decision carries none
    for, such as those a target makes eligible that the log did not. Raises ``ValueError`` for
    an empty log, fewer than 2 folds, or a range that is not finite, has high < low, or leaves
    out a logged reward.

    >>> from nba.evaluation.sources import from_records
    >>> lines = [{"features": {"age": a}, "candidates": [{"offer_id": "x", "probability": 1.0}],
    ...           "chosen": "x", "propensity": 1.0, "reward": float(a > 40)} for a in range(20, 60)]
    >>> model = RewardModel(list(from_records(lines)))
    >>> bool(0 < model.predict(0, model.decisions[0], ["x"])[0] < 1)
    True
    """

    def __init__(
        self,
        decisions: Sequence[LoggedDecision],
        folds: int = 5,
        reward_range: tuple[float, float] | None = None,
        penalty: float = 1.0,
        interaction_penalty: float = 1.0,
        offers: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not decisions:
            raise ValueError("a reward model needs at least one logged decision")
        if folds < 2:
            raise ValueError(f"folds: {folds}: cross-fitting needs at least 2")
        self.decisions = decisions
        self._catalogue = dict(offers or {})
        self.folds = min(folds, len(decisions)) if len(decisions) >= 2 else 2
        n = len(decisions)
        self._fold = np.arange(n) % self.folds
        # Training rows: every answered slot of every decision, with its reward.
        train_decision, train_offer, train_slot, rewards = [], [], [], []
        for i, d in enumerate(decisions):
            for k, (offer_id, _) in enumerate(d.slots):
                train_decision.append(i)
                train_offer.append(offer_id)
                train_slot.append(k)
                rewards.append(d.rewards.get(offer_id, 0.0))
        r = np.asarray(rewards, dtype=float)
        low, high = reward_range if reward_range is not None else (float(r.min()), float(r.max()))
        if not (np.isfinite(low) and np.isfinite(high)) or high < low:
            raise ValueError(f"reward range [{low}, {high}]: low must be at most high, both finite")
        if len(r) and (r.min() < low or r.max() > high):
            raise ValueError(f"a logged reward ({r.min():g} to {r.max():g}) is outside the reward range [{low:g}, {high:g}]")
        self.low, self.high = float(low), float(high)
        self._y = (r - low) / (high - low) if high > low else np.zeros_like(r)
        self._train_decision = np.asarray(train_decision, dtype=np.int64)

        self._context = _Encoder(d.features for d in decisions)
        offer_ids = sorted({a for d in decisions for a in (*d.eligible, *(o for o, _ in d.slots))})
        self._offer_index = {a: j for j, a in enumerate(offer_ids)}
        distinct = {id(f): f for d in decisions for f in (d.offer_features or {}).values()}
        distinct.update((id(f), f) for f in self._catalogue.values())
        self._offer_encoder = _Encoder(distinct.values())
        self._slots = max(len(d.slots) for d in decisions)
        self._context_rows = self._context.matrix([d.features for d in decisions])
        dc, do, na = self._context.width, self._offer_encoder.width, len(offer_ids)
        self.crossed = dc * na <= MAX_CROSSED
        # intercept, context, offer identity, offer features, slot, offer x context
        self._blocks = (1, dc, na, do, max(self._slots - 1, 0), dc * na if self.crossed else 0)
        self._width = sum(self._blocks)
        penalties = [0.0, penalty, penalty, penalty, penalty, interaction_penalty]
        self._penalty = np.concatenate([np.full(w, p) for w, p in zip(self._blocks, penalties, strict=True)])

        self._x_train = self._design(self._train_decision, train_offer, np.asarray(train_slot))
        # Prediction pairs: every decision's eligible and answered offers (more are added on demand).
        self._pairs: list[dict[str, int]] = [{} for _ in decisions]
        pair_decision: list[int] = []
        pair_offer: list[str] = []
        for i, d in enumerate(decisions):
            for a in dict.fromkeys((*d.eligible, *(o for o, _ in d.slots))):
                self._pairs[i][a] = len(pair_decision)
                pair_decision.append(i)
                pair_offer.append(a)
        self._pair_decision = np.asarray(pair_decision, dtype=np.int64)
        self._x_pairs = self._design(self._pair_decision, pair_offer, np.zeros(len(pair_offer), dtype=np.int64))
        self._coef = self._fit_folds(np.ones(n))
        self._predictions = self._predict(self._coef, self._x_pairs, self._pair_decision)
        # Pairs added on demand (offers a target makes eligible that the log did not), kept
        # apart and stacked once when needed, so that adding one costs O(1).
        self._extra_x: list[sparse.csr_matrix] = []
        self._extra_decision: list[int] = []
        self._extra_predictions: list[float] = []

    # Features ------------------------------------------------------------------------------

    def _design(self, decision: np.ndarray, offer_ids: Sequence[str], slot: np.ndarray) -> sparse.csr_matrix:
        """Rows of the design matrix for (decision, offer, slot) triples (slot 0 = first)."""
        m = len(offer_ids)
        if m == 0:
            return sparse.csr_matrix((0, self._width))
        _, dc, na, do, ns, _ = self._blocks
        ctx = self._context_rows[decision]
        ident = np.array([self._offer_index.get(a, -1) for a in offer_ids], dtype=np.int64)
        known = ident >= 0
        rows = np.arange(m)
        id_block = sparse.csr_matrix((np.ones(int(known.sum())), (rows[known], ident[known])), shape=(m, na))
        offer_block = self._offer_encoder.matrix(
            [self._offer_features(self.decisions[i], a) for i, a in zip(decision.tolist(), offer_ids, strict=True)]
        )
        later = slot > 0
        slot_block = sparse.csr_matrix((np.ones(int(later.sum())), (rows[later], slot[later] - 1)), shape=(m, ns))
        # Each offer's own copy of the context columns: shift the context's columns by offer.
        counts = np.diff(ctx.indptr)
        keep = np.repeat(known & self.crossed, counts)
        cross = sparse.csr_matrix(
            (ctx.data[keep], (np.repeat(rows, counts)[keep], (ctx.indices + np.repeat(ident * dc, counts))[keep])),
            shape=(m, self._blocks[5]),
        )
        intercept = sparse.csr_matrix(np.ones((m, 1)))
        return sparse.hstack([intercept, ctx, id_block, offer_block, slot_block, cross], format="csr")

    def _offer_features(self, d: LoggedDecision, offer_id: str) -> Mapping[str, Any]:
        found = d.offer_features.get(offer_id) if d.offer_features else None
        return found if found is not None else self._catalogue.get(offer_id, _NONE)

    # Fitting -------------------------------------------------------------------------------

    def _fit(self, x: sparse.csr_matrix, y: np.ndarray, c: np.ndarray, start: np.ndarray | None) -> np.ndarray:
        total = c.sum()
        if self.high == self.low or total <= 0:
            return np.zeros(self._width)
        mean = float(np.clip((c @ y) / total, 1e-6, 1 - 1e-6))
        if start is None:
            start = np.zeros(self._width)
            start[0] = np.log(mean / (1 - mean))
        lam = self._penalty
        xt = x.T.tocsr()

        def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
            z = x @ beta
            value = float(c @ (np.logaddexp(0.0, z) - y * z)) + 0.5 * float(lam @ (beta * beta))
            p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
            return value, xt @ (c * (p - y)) + lam * beta

        # scipy.optimize (about 0.17 s of CPU to import) by name, when a model is first fitted:
        # every server process imports this module for the console's evaluations, few fit
        optimize = importlib.import_module("scipy.optimize")
        result = optimize.minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-6})
        return np.asarray(result.x)

    def _fit_folds(self, counts: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """One coefficient vector per fold, each fit on the other folds' decisions (weighted by
        ``counts``, how often each decision was drawn)."""
        coef = np.zeros((self.folds, self._width))
        weight = counts[self._train_decision]
        train_fold = self._fold[self._train_decision]
        for f in range(self.folds):
            mask = (train_fold != f) & (weight > 0)
            coef[f] = self._fit(self._x_train[mask], self._y[mask], weight[mask], None if start is None else start[f])
        return coef

    def _predict(self, coef: np.ndarray, x: sparse.csr_matrix, decision: np.ndarray) -> np.ndarray:
        if self.high == self.low:
            return np.full(x.shape[0], self.low)
        fold = self._fold[decision]
        z = np.zeros(x.shape[0])
        for f in range(self.folds):
            rows = np.flatnonzero(fold == f)
            if len(rows):
                z[rows] = x[rows] @ coef[f]
        return self.low + (self.high - self.low) * 0.5 * (1.0 + np.tanh(0.5 * z))

    # Predictions ---------------------------------------------------------------------------

    def pair(self, index: int, d: LoggedDecision, offer_id: str) -> int:
        """The row of (decision ``index``, ``offer_id``) among the predictions, added (and
        predicted by that decision's fold model) when the log did not make it eligible."""
        row = self._pairs[index].get(offer_id)
        if row is None:
            x = self._design(np.array([index]), [offer_id], np.zeros(1, dtype=np.int64))
            row = len(self._predictions) + len(self._extra_predictions)
            self._extra_x.append(x)
            self._extra_decision.append(index)
            self._extra_predictions.append(float(self._predict(self._coef, x, np.array([index]))[0]))
            self._pairs[index][offer_id] = row
        return row

    @property
    def predictions(self) -> np.ndarray:
        """Every (decision, offer) prediction so far, by row (``pair``)."""
        self._stack()
        return self._predictions

    def _stack(self) -> None:
        if self._extra_predictions:
            self._predictions = np.concatenate([self._predictions, self._extra_predictions])
            self._x_pairs = sparse.vstack([self._x_pairs, *self._extra_x], format="csr")
            self._pair_decision = np.concatenate([self._pair_decision, self._extra_decision])
            self._extra_x, self._extra_decision, self._extra_predictions = [], [], []

    def predict(self, index: int, d: LoggedDecision, offer_ids: Sequence[str]) -> np.ndarray:
        """q(x_index, a) for each offer in ``offer_ids``, from the model that did not see decision
        ``index``'s reward; always within the reward range."""
        if not len(offer_ids):
            return np.zeros(0)
        rows = [self.pair(index, d, a) for a in offer_ids]
        base = len(self._predictions)
        return np.array([self._predictions[r] if r < base else self._extra_predictions[r - base] for r in rows])

    def refit(self, counts: np.ndarray) -> np.ndarray:
        """Every prediction again, from cross-fit models refit on a resample of the decisions
        (``counts[i]``: how often decision i was drawn); the folds stay those of the original
        decisions, so a repeated decision never predicts itself."""
        coef = self._fit_folds(np.asarray(counts, dtype=float), start=self._coef)
        self._stack()
        return self._predict(coef, self._x_pairs, self._pair_decision)

    def brier(self) -> tuple[float, float]:
        """Held-out Brier scores on the logged rewards (scaled to [0, 1]): the model's
        cross-fitted predictions, and a constant's (each fold's training mean), for comparison."""
        q = self._predict(self._coef, self._x_train, self._train_decision)
        p = (q - self.low) / (self.high - self.low) if self.high > self.low else np.zeros_like(q)
        fold = self._fold[self._train_decision]
        constant = np.array([self._y[fold != f].mean() if (fold != f).any() else 0.0 for f in range(self.folds)])[fold]
        return float(np.mean((p - self._y) ** 2)), float(np.mean((constant - self._y) ** 2))
