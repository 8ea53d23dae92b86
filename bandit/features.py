"""Turning a nested customer context into the fixed-size vector a linear learner needs.

Contexts arrive as nested JSON-like profiles whose fields come and go, whose strings take
values nobody listed in advance, and whose numbers range from a mood score to a lifetime
value. A learner shared by every replica needs the same vector for the same context on every
machine and after every restart, without a vocabulary that has to be agreed on first. So:

* the context is flattened to dotted leaves (``customer.flags.churn_risk``); lists stay lists;
* numbers are standardised with online statistics (Welford's running mean and variance, over
  all of a context's numbers at once) learned from the contexts the learner trains on, then
  clipped, so one huge value cannot dominate;
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
import operator
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bandit.state import array, copied

__all__ = ["Featurizer", "flatten", "unflatten"]

# Bounds the token cache so a field with unbounded distinct values (a free-text note)
# cannot grow memory without limit; past it, tokens are hashed on every use.
_CACHE_LIMIT = 200_000


def flatten(context: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings to dotted keys, keeping lists as they are.

    The result is lossless for JSON-like input whose keys hold no dots (an empty mapping stays,
    as ``{}``), so the decision log can store it and ``unflatten`` rebuild the nested context.

    >>> flatten({"customer": {"age": 41, "flags": {"vip": True}, "notes": {}}, "tags": ["a"]})
    {'customer.age': 41, 'customer.flags.vip': True, 'customer.notes': {}, 'tags': ['a']}
    """
    out: dict[str, Any] = {}
    stack: list[tuple[str, Mapping[str, Any]]] = [(prefix, context)]
    while stack:
        base, node = stack.pop()
        for key, value in node.items():
            name = f"{base}.{key}" if base else str(key)
            if isinstance(value, Mapping) and value:
                stack.append((name, value))
            else:
                out[name] = value
    return dict(sorted(out.items()))


def unflatten(features: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuilds a nested context from its flattened features.

    >>> unflatten({"customer.age": 30.0, "customer.flags.vip": True, "tags": ["a"]})
    {'customer': {'age': 30.0, 'flags': {'vip': True}}, 'tags': ['a']}
    """
    root: dict[str, Any] = {}
    for path, value in features.items():
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return root


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
    warmup
        A numeric feature's mean and variance stop moving after this many observations. They
        only put features on comparable scales, and they have converged by then; frozen, an
        observation's vector no longer depends on when it is computed, so a reward revised
        later (a click after the impression) revises exactly what was learned, and replicas
        that learn the same events in another order agree.

    >>> f = Featurizer(n_features=8)
    >>> f.learn_one({"age": 30, "segment": "gold"})
    >>> f.transform_one({"age": 30, "segment": "gold"}).shape
    (9,)
    """

    def __init__(self, n_features: int = 128, clip: float = 5.0, exclude: Iterable[str] = (), warmup: int = 1000) -> None:
        if n_features < 1:
            raise ValueError(f"n_features must be at least 1, got {n_features}")
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.n_features = n_features
        self.clip = clip
        self.exclude = tuple(exclude)
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1, got {warmup}")
        self.warmup = warmup
        #: bumped by every ``learn_one`` that moves a scale: a transform computed at one version
        #: stays valid
        self.version = 0
        # Running mean and variance of every numeric key, Welford's update over all the keys
        # of a context at once. river.stats.Var does the same per key, at about a microsecond
        # a value in Python: with 64 numeric fields that was most of a decision's cost.
        self._numeric: dict[str, int] = {}
        self._count = np.zeros(16)
        self._mean = np.zeros(16)
        self._m2 = np.zeros(16)
        #: 1 / standard deviation (1 before the variance is known; 0 before any observation)
        self._inv = np.zeros(16)
        self._slot_of = np.zeros(16, dtype=np.intp)
        self._sign_of = np.zeros(16)
        # Derived caches (not pickled): per key, excluded or not, its slot and sign; per string
        # token its slot and sign.
        self._keys: dict[str, tuple[bool, int, float]] = {}
        self._slots: dict[str, tuple[int, float]] = {}
        # The last transform's context and numbers (derived, not pickled), and whether every
        # numeric key's scale has stopped moving.
        self._memo: tuple[Any, Shape, list[int], list[float], bool] | None = None
        self._settled = True
        self._registered_since = False

    @property
    def dim(self) -> int:
        return self.n_features + 1

    def learn_one(self, context: Mapping[str, Any]) -> None:
        """Updates the running mean and variance of every numeric feature in ``context``.

        A context just transformed (the same object, unchanged) is not read again: its numbers
        were kept, and once every scale has settled and it holds no new key, nothing moves."""
        memo = self._memo
        if memo is not None and memo[0] is context and memo[4] and unchanged(context, memo[1]):
            if self._settled:
                return
            index, values = memo[2], memo[3]
        else:
            index, values, _ = self._numbers(_flat(context), register=True)
            self._settled = self._settled and not self._registered_since
        self._registered_since = False
        if index:
            i = np.asarray(index, dtype=np.intp)
            v = np.asarray(values)
            warm = self._count[i] < self.warmup
            if not warm.any():
                return  # every scale is settled: nothing moves, vectors computed before stay valid
            if not warm.all():
                i, v = i[warm], v[warm]
            self._count[i] += 1
            delta = v - self._mean[i]
            self._mean[i] += delta / self._count[i]
            self._m2[i] += delta * (v - self._mean[i])
            n = self._count[i]
            variance = np.divide(self._m2[i], n - 1, out=np.zeros(len(i)), where=n > 1)
            self._inv[i] = np.divide(1.0, np.sqrt(variance), out=np.ones(len(i)), where=variance > 0)
            self._settled = bool(np.all(self._count[: len(self._numeric)] >= self.warmup))
        self.version += 1

    def transform_one(self, context: Mapping[str, Any]) -> np.ndarray:
        """Returns the feature vector for ``context``; does not learn from it."""
        flat = _flat(context)
        index, values, complete = self._numbers(flat, register=False)
        # Kept for a learn_one of the same context (a decision's update), when it can be told
        # whether the context changed in place since.
        shape = shape_of(context) if flat is context else None
        self._memo = None if shape is None else (context, shape, index, values, complete)
        if index:
            i = np.asarray(index, dtype=np.intp)
            # A key never seen in training has scale 0: its mean is unknown, it says nothing yet.
            z = (np.asarray(values) - self._mean[i]) * self._inv[i]
            np.clip(z, -self.clip, self.clip, out=z)
            x: np.ndarray = np.bincount(self._slot_of[i], weights=self._sign_of[i] * z, minlength=self.dim)
        else:
            x = np.zeros(self.dim)
        keys = self._keys
        for key, value in flat.items():
            kind = type(value)
            if kind is float or kind is int:
                continue
            info = keys.get(key)
            if info is None:
                info = self._key(key)
            if info[0]:
                continue
            if kind is bool:
                if value:
                    x[info[1]] += info[2]
            elif kind is str:
                self._set(x, f"{key}={value}", 1.0)
            elif value is None:
                self._set(x, f"{key}=null", 1.0)
            elif kind is list or kind is tuple:
                count = 0
                for item in value:
                    count += 1
                    if isinstance(item, (str, bool)) or _is_number(item):
                        self._set(x, f"{key}={item}", 1.0)
                # log1p keeps a long order history from swamping the other features.
                self._set(x, f"{key}#count", math.log1p(count))
        x[-1] = 1.0
        return x

    def _numbers(self, flat: Mapping[str, Any], register: bool) -> tuple[list[int], list[float], bool]:
        """Indices and (bounded) values of the finite numeric features, registering new keys
        when learning; unknown keys are skipped when transforming (and then the last value,
        complete, is False)."""
        numeric = self._numeric
        index: list[int] = []
        values: list[float] = []
        complete = True
        for key, value in flat.items():
            kind = type(value)
            if kind is not float and kind is not int:
                continue
            if value != value or value in (math.inf, -math.inf):
                continue
            i = numeric.get(key)
            if i is None:
                if self._key(key)[0]:
                    continue
                if not register:
                    complete = False
                    continue
                i = self._register(key)
            index.append(i)
            values.append(RAW_LIMIT if value > RAW_LIMIT else -RAW_LIMIT if value < -RAW_LIMIT else float(value))
        return index, values, complete

    def _register(self, key: str) -> int:
        i = len(self._numeric)
        if i == len(self._count):
            for name in ("_count", "_mean", "_m2", "_inv", "_slot_of", "_sign_of"):
                old = getattr(self, name)
                grown = np.zeros(2 * len(old), dtype=old.dtype)
                grown[: len(old)] = old
                setattr(self, name, grown)
        _, slot, sign = self._key(key)
        self._slot_of[i], self._sign_of[i] = slot, sign
        self._numeric[key] = i
        self._settled = False
        self._registered_since = True
        return i

    def _key(self, key: str) -> tuple[bool, int, float]:
        info = self._keys.get(key)
        if info is None:
            excluded = any(fnmatch.fnmatchcase(key, pattern) for pattern in self.exclude)
            index, sign = self._slot(key)
            info = (excluded, index, sign)
            if len(self._keys) < _CACHE_LIMIT:
                self._keys[key] = info
        return info

    def _slot(self, token: str) -> tuple[int, float]:
        slot = self._slots.get(token)
        if slot is None:
            h = zlib.crc32(token.encode())
            slot = (h % self.n_features, -1.0 if h & 0x80000000 else 1.0)
            if len(self._slots) < _CACHE_LIMIT:
                self._slots[token] = slot
        return slot

    def _set(self, x: np.ndarray, token: str, value: float) -> None:
        index, sign = self._slot(token)
        x[index] += sign * value

    def export_state(
        self, prefix: str = "", reuse: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The numeric keys in order and copies of their running statistics, arrays named
        ``prefix`` + ``count``, ``mean``, ``m2``, ``inv`` (slots and signs are hashes of the
        keys, computed again on import); copied into ``reuse``'s arrays where they fit."""
        m = len(self._numeric)
        meta = {"numeric": list(self._numeric), "version": self.version}
        return meta, {
            f"{prefix}{name[1:]}": copied(getattr(self, name)[:m], f"{prefix}{name[1:]}", reuse)
            for name in ("_count", "_mean", "_m2", "_inv")
        }

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Takes ``export_state``'s output; ``ValueError`` naming what does not fit, before
        anything changes."""
        keys, version = meta.get("numeric"), meta.get("version")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
            raise ValueError(f"meta: {prefix}numeric must be a list of distinct feature names")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"meta: {prefix}version must be a count, got {version!r}")
        m = len(keys)
        loaded = {name: array(arrays, f"{prefix}{name[1:]}", (m,)) for name in ("_count", "_mean", "_m2", "_inv")}
        capacity = max(16, m)
        for name, values in loaded.items():
            grown = np.zeros(capacity)
            grown[:m] = values
            setattr(self, name, grown)
        self._slot_of, self._sign_of = np.zeros(capacity, dtype=np.intp), np.zeros(capacity)
        self._numeric, self._keys, self._slots = {}, {}, {}
        for i, key in enumerate(keys):
            _, self._slot_of[i], self._sign_of[i] = self._key(key)
            self._numeric[key] = i
        self.version = version
        self._memo, self._registered_since = None, False
        self._settled = bool(np.all(self._count[:m] >= self.warmup))

    def state_is_finite(self) -> bool:
        """Whether the running statistics are all finite."""
        used = len(self._numeric)
        return all(bool(np.isfinite(getattr(self, name)[:used]).all()) for name in ("_count", "_mean", "_m2", "_inv"))

    def __getstate__(self) -> dict[str, Any]:
        # The caches are derived; leave them out of snapshots.
        state = self.__dict__.copy()
        state["_slots"] = {}
        state["_keys"] = {}
        state["_memo"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles of earlier versions lack the memo and the settled flag.
        self.__dict__.update({"_memo": None, "_settled": False, "_registered_since": False, **state})


#: a flat context's keys and value objects, as ``shape_of`` takes them
Shape = tuple[tuple[str, ...], tuple[Any, ...]]


def shape_of(context: Mapping[str, Any]) -> Shape | None:
    """What ``unchanged`` compares a flat context against later; None for a nested context
    (a nested mapping changed in place keeps its identity, so no change could be told)."""
    if _flat(context) is not context:
        return None
    return tuple(context), tuple(context.values())


def unchanged(context: Mapping[str, Any], shape: Shape) -> bool:
    """Whether a flat context still holds the same keys and the very same value objects as
    when ``shape_of`` took it: by identity, so 1 turned into True, or 1.0 into 1, counts as a
    change (equality would not). Only for flat contexts: a nested mapping changed in place
    keeps its identity."""
    keys, values = shape
    return len(context) == len(keys) and all(map(operator.is_, context.values(), values)) and tuple(context) == keys


def _flat(context: Mapping[str, Any]) -> Mapping[str, Any]:
    for value in context.values():
        kind = type(value)
        if kind is dict or (kind not in _SCALARS and isinstance(value, Mapping)):
            return flatten(context)
    return context


_SCALARS = frozenset({float, int, str, bool, list, tuple, type(None)})


#: raw numbers beyond this magnitude are treated as this: one absurd value must not ruin the
#: running variance of a feature for good
RAW_LIMIT = 1e9


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
