"""A learner's state as data: JSON metadata and numpy arrays, never code.

``Learner.export_state()`` copies what a learner has learned into a ``LearnerState``, and
``Learner.import_state(state)`` puts it into a learner of the same kind and hyperparameters.
``dumps``/``loads`` turn a state into bytes and back: a NumPy ``.npz`` archive, one ``.npy``
member per array plus a ``header`` member holding UTF-8 JSON::

    {"format": "bandit-state/1", "kind": "LinearBandit", "params": {...}, "meta": {...}}

Unlike a pickle, loading these bytes cannot run code (arrays are read with
``allow_pickle=False``, so an object array is refused), which matters when they come from a
database someone else could write to. Exporting is a copy of the arrays and nothing else, so
a caller can hold a learner's lock only for the copy and encode the copy outside it.

>>> from bandit import LinearBandit
>>> learner = LinearBandit(n_features=8, seed=1)
>>> learner.update("tea", {"time": "morning"}, 1.0)
>>> clone = LinearBandit(n_features=8, seed=1)
>>> clone.import_state(loads(dumps(learner.export_state())))
>>> clone.scores(["tea"], {"time": "morning"}) == learner.scores(["tea"], {"time": "morning"})
array([ True])
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FORMAT", "LearnerState", "dumps", "loads"]

#: the layout of ``dumps``; a state of another format is refused by ``loads``
FORMAT = "bandit-state/1"
_HEADER = "header"


@dataclass(frozen=True)
class LearnerState:
    """What a learner has learned, as data.

    ``kind`` is the learner's class name and ``params`` its hyperparameters (JSON values):
    a state is imported only into a learner with the same. ``meta`` holds JSON values (arm
    ids, counters, key names), ``arrays`` numeric arrays, each owned by the state (copies).
    """

    kind: str
    params: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def dumps(state: LearnerState) -> bytes:
    """The state as ``.npz`` bytes (uncompressed: the arrays are dense floats that would not
    shrink much, and encoding stays a copy). ``ValueError`` for metadata that is not JSON
    or an array of objects."""
    header = json.dumps(
        {"format": FORMAT, "kind": state.kind, "params": state.params, "meta": state.meta}, allow_nan=False, separators=(",", ":")
    )
    if _HEADER in state.arrays:
        raise ValueError(f"arrays: {_HEADER!r} is reserved for the header")
    for name, array in state.arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"arrays: {name!r} holds Python objects; only numeric arrays are data")
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {_HEADER: np.frombuffer(header.encode(), dtype=np.uint8), **state.arrays}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def loads(data: bytes) -> LearnerState:
    """Reads ``dumps``'s bytes. ``ValueError`` for anything else: another format, a pickle,
    a damaged archive, an array of objects. Never runs code from ``data``."""
    if not data.startswith(b"PK"):
        raise ValueError("not a bandit state (a .npz archive); perhaps a pickle, which is never loaded")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if _HEADER not in archive.files:
                raise ValueError("no header: not a bandit state")
            header = json.loads(bytes(archive[_HEADER]).decode())
            arrays = {name: archive[name] for name in archive.files if name != _HEADER}
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"a damaged bandit state ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"a bandit state of format {found!r}; this library reads {FORMAT!r}")
    kind, params, meta = header.get("kind"), header.get("params"), header.get("meta")
    if not isinstance(kind, str) or not isinstance(params, dict) or not isinstance(meta, dict):
        raise ValueError("a bandit state header needs kind (text), params and meta (objects)")
    return LearnerState(kind, params, meta, arrays)


def copied(source: np.ndarray, name: str, reuse: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """A copy of ``source``, written into ``reuse[name]`` when that array has the same shape
    and type: a periodic export then allocates (and page-faults) no new megabytes.

    The bytes are copied through memoryviews, which keep the GIL: numpy's own copy of a large
    array releases it, and a caller copying under a lock then queues for the GIL behind every
    thread that ran meanwhile (measured with one other busy thread: 1.5 ms either way at the
    median, but 38 ms at worst with numpy's copy against 2.3 ms)."""
    target = reuse.get(name) if reuse is not None else None
    if target is None or target.shape != source.shape or target.dtype != source.dtype or not target.flags.writeable:
        target = np.empty(source.shape, dtype=source.dtype)
    if source.flags.c_contiguous and target.flags.c_contiguous and source.size:
        target.data.cast("B")[:] = source.data.cast("B")
    else:
        np.copyto(target, source)
    return target


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists): what hyperparameters are
    compared as."""
    return json.loads(json.dumps(value))


def arm_list(arms: Iterable[Hashable], what: str) -> list[str | int]:
    """Arm ids as JSON values: text or integers (``TypeError`` for others, which JSON would
    not give back as they were: pickle such a learner instead)."""
    out: list[str | int] = []
    for arm in arms:
        if not isinstance(arm, (str, int)) or isinstance(arm, bool):
            raise TypeError(f"{what}: arm id {arm!r} is neither text nor an integer; export_state keeps only those")
        out.append(arm)
    return out


def arm_ids(values: Any, what: str) -> list[str | int]:
    """Arm ids read from a state: a list of distinct texts or integers (``ValueError``
    naming ``what`` otherwise)."""
    if not isinstance(values, list):
        raise ValueError(f"meta: {what} must be a list of arm ids")
    try:
        arms = arm_list(values, what)
    except TypeError as exc:
        raise ValueError(f"meta: {exc}") from None
    if len(set(arms)) != len(arms):
        raise ValueError(f"meta: {what} names an arm twice")
    return arms


def array(arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...], kind: str = "f") -> np.ndarray:
    """The array ``name`` checked for its shape and kind (``f``: finite floats, ``i``:
    integers), as a writable array of its own; ``ValueError`` naming it otherwise."""
    found = arrays.get(name)
    if found is None:
        raise ValueError(f"arrays: {name!r} is missing")
    if found.shape != shape:
        raise ValueError(f"arrays: {name!r} has shape {found.shape}, expected {shape}")
    if kind == "f":
        if found.dtype.kind not in "fi" or not np.all(np.isfinite(found)):
            raise ValueError(f"arrays: {name!r} must hold finite numbers")
        return np.array(found, dtype=float)
    if found.dtype.kind not in "iu":
        raise ValueError(f"arrays: {name!r} must hold integers, not {found.dtype}")
    return np.array(found, dtype=np.int64)
