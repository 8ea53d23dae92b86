"""Turning a nested customer context into the fixed-size vector a linear learner needs.

Contexts arrive as nested JSON-like profiles whose fields come and go, whose strings take
values nobody listed in advance, and whose numbers range from a mood score to a lifetime
value. A learner shared by every replica needs the same vector for the same context on every
machine and after every restart, without a vocabulary that has to be agreed on first. So:

* the context is flattened to dotted leaves (``customer.flags.churn_risk``); lists stay lists;
* numbers are standardised with online statistics (``river.stats.Var``) learned from the
  contexts the learner trains on, then clipped, so one huge value cannot dominate;
* booleans are 0/1; strings are one-hot tokens ``key=value``; a list of scalars sets one token
  per member and a numeric ``key#count``; ``None`` sets ``key=null``; absent means "unknown";
* every token lands in one of ``n_features`` slots by a stable hash (CRC-32, not Python's
  salted ``hash``), with a hashed sign so collisions cancel rather than add up
  (Weinberger et al., 2009, "Feature hashing for large scale multitask learning");
* the last slot is a constant 1, the intercept.
"""

from __future__ import annotations

import fnmatch
import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from river import stats

__all__ = ["Featurizer", "flatten"]

# Bounds the token cache so a field with unbounded distinct values (a free-text note)
# cannot grow memory without limit; past it, tokens are hashed on every use.
_CACHE_LIMIT = 200_000


def flatten(context: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings to dotted keys, keeping lists as they are.

    The result is lossless for JSON-like input whose keys hold no dots, so the decision log can
    store it and a later policy can rebuild the nested context from it.

    >>> flatten({"customer": {"age": 41, "flags": {"vip": True}}, "tags": ["a"]})
    {'customer.age': 41, 'customer.flags.vip': True, 'tags': ['a']}
    """
    out: dict[str, Any] = {}
    stack: list[tuple[str, Mapping[str, Any]]] = [(prefix, context)]
    while stack:
        base, node = stack.pop()
        for key, value in node.items():
            name = f"{base}.{key}" if base else str(key)
            if isinstance(value, Mapping):
                stack.append((name, value))
            else:
                out[name] = value
    return dict(sorted(out.items()))


class Featurizer:
    """Hashes a (nested or flat) context into a dense vector of ``n_features + 1`` floats.

    Parameters
    ----------
    n_features
        Hashed slots; the vector has one more, the intercept.
    clip
        Standardised numbers are clipped to ``[-clip, clip]``.
    exclude
        Glob patterns of flattened keys never used as features (identifiers, e-mail
        addresses: a per-customer token would only memorise).

    >>> f = Featurizer(n_features=8)
    >>> f.learn_one({"age": 30, "segment": "gold"})
    >>> f.transform_one({"age": 30, "segment": "gold"}).shape
    (9,)
    """

    def __init__(
        self, n_features: int = 128, clip: float = 5.0, exclude: Iterable[str] = ()
    ) -> None:
        if n_features < 1:
            raise ValueError(f"n_features must be at least 1, got {n_features}")
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.n_features = n_features
        self.clip = clip
        self.exclude = tuple(exclude)
        self._stats: dict[str, stats.Var] = {}
        self._slots: dict[str, tuple[int, float]] = {}
        self._excluded: dict[str, bool] = {}

    @property
    def dim(self) -> int:
        return self.n_features + 1

    def learn_one(self, context: Mapping[str, Any]) -> None:
        """Updates the running mean and variance of every numeric feature in ``context``."""
        for key, value in self._leaves(context):
            if _is_number(value):
                var = self._stats.get(key)
                if var is None:
                    var = self._stats[key] = stats.Var()
                var.update(_bounded(value))

    def transform_one(self, context: Mapping[str, Any]) -> np.ndarray:
        """Returns the feature vector for ``context``; does not learn from it."""
        x = np.zeros(self.dim)
        for key, value in self._leaves(context):
            self._add(x, key, value)
        x[-1] = 1.0
        return x

    def _leaves(self, context: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
        flat = context if all(not isinstance(v, Mapping) for v in context.values()) else flatten(context)
        excluded = self._excluded
        for key, value in flat.items():
            skip = excluded.get(key)
            if skip is None:
                skip = any(fnmatch.fnmatchcase(key, pattern) for pattern in self.exclude)
                if len(excluded) < _CACHE_LIMIT:
                    excluded[key] = skip
            if not skip:
                yield key, value

    def _add(self, x: np.ndarray, key: str, value: Any) -> None:
        if isinstance(value, bool):
            if value:
                self._set(x, key, 1.0)
        elif _is_number(value):
            x_ = _bounded(value)
            var = self._stats.get(key)
            if var is not None:
                x_ -= var.mean.get()
                variance = var.get()
                if variance > 0:
                    x_ /= math.sqrt(variance)
            else:
                # Never seen in training: the mean is unknown, so the value says nothing yet.
                x_ = 0.0
            self._set(x, key, max(-self.clip, min(self.clip, x_)))
        elif isinstance(value, str):
            self._set(x, f"{key}={value}", 1.0)
        elif value is None:
            self._set(x, f"{key}=null", 1.0)
        elif isinstance(value, (list, tuple)):
            count = 0
            for item in value:
                count += 1
                if isinstance(item, (str, bool)) or _is_number(item):
                    self._set(x, f"{key}={item}", 1.0)
            # log1p keeps a long order history from swamping the other features.
            self._set(x, f"{key}#count", math.log1p(count))

    def _set(self, x: np.ndarray, token: str, value: float) -> None:
        slot = self._slots.get(token)
        if slot is None:
            h = zlib.crc32(token.encode())
            slot = (h % self.n_features, -1.0 if h & 0x80000000 else 1.0)
            if len(self._slots) < _CACHE_LIMIT:
                self._slots[token] = slot
        x[slot[0]] += slot[1] * value

    def __getstate__(self) -> dict[str, Any]:
        # The caches are derived; leave them out of snapshots.
        state = self.__dict__.copy()
        state["_slots"] = {}
        state["_excluded"] = {}
        return state


#: raw numbers beyond this magnitude are treated as this: one absurd value must not ruin the
#: running variance of a feature for good
RAW_LIMIT = 1e9


def _bounded(value: float) -> float:
    return max(-RAW_LIMIT, min(RAW_LIMIT, float(value)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
