"""Predictive scores: the chance that a customer's event happens within a horizon, learned online
from the profiles' own history, with its quality measured as it learns.

A score is declared in the ``profile:`` section::

    scores:
      churn_risk: predicts account_closed within 90d
      upsell: predicts order where properties.tier == "premium" within 30d

**Labels, without leakage.** Each customer holds one open prediction per score
(``Prediction``): made at a moment t (their latest event, or the end of their previous
prediction's horizon), from the profile's non-personal values at t (``features``), with the
score the model gave then. It matures **positive** when a predicted event happens strictly after
t and within the horizon (an event dated at or before t is in the features, never in the label),
**negative** when the horizon passes without one (the segment clock looks at it then). A new
event before either replaces the open prediction with one made from the newer state: a label is
always about what followed the moment it predicts from.

**Learning and quality.** A matured prediction is first judged against the score it was given
when made, in the score's progressive quality (river's ``ROCAUC`` and ``LogLoss``, and the
expected calibration error over ten bins, which river does not have), then learned (river:
standardised features, logistic regression). Quality counts only matured labels. A score whose
AUC is below its ``min_auc`` (or which has seen fewer than ``MIN_EXAMPLES`` labels of each
kind) is **flagged**: GetProfile, ``nba profiles scores`` and ``nba_score_flagged`` say so, so a
marketer can tell whether it is worth a rule.

**One model for every process.** The models live in the database (``score_models``: pickled
river objects, written only by nba, like the learner's snapshots); each write transaction that
matures labels reads the newest, learns, and writes it back, so workers and replicas learn one
model together; each process predicts from its copy, read again when the stored version moves.
"""

from __future__ import annotations

import importlib
import logging
import math
import pickle
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import cel

from nba.policy.profile import ProfileDefinition, Score

log = logging.getLogger("nba.profiles")

__all__ = ["MIN_EXAMPLES", "Example", "Prediction", "ScoreModel", "ScoreModels", "features", "is_target", "load_river"]

#: labels of each kind a score needs before its quality says anything
MIN_EXAMPLES = 20
#: calibration bins (equal width over [0, 1])
BINS = 10
#: hashed one-hot buckets per text feature (``features``)
BUCKETS = 256


@dataclass(frozen=True)
class Prediction:
    """An open prediction: made at ``at`` (epoch seconds) from ``x``, given ``p``; matures by ``due``."""

    at: float
    due: float
    p: float
    x: Mapping[str, float] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return {"at": self.at, "due": self.due, "p": self.p, "x": dict(self.x)}

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> Prediction:
        return cls(float(data["at"]), float(data["due"]), float(data["p"]), {str(k): float(v) for k, v in data["x"].items()})


@dataclass(frozen=True)
class Example:
    """A matured label: the score's name, the features and score it was made with, the outcome."""

    score: str
    x: Mapping[str, float]
    p: float
    y: bool


#: held while river is imported (``load_river``)
_river_lock = threading.Lock()
#: river, once ``load_river`` has imported it
_river: Any = None


def load_river() -> Any:
    """river, imported now if not yet. Importing it costs about 0.75 s of CPU (its metrics and
    linear models pull in scipy.stats), which a process whose profile defines no score (most,
    and every short-lived command) need not pay: the models import it when the first is made or
    read, and a service whose definition has scores loads it beside its start-up.

    Every import of river goes through here, under one lock and in one order, unpickling a
    stored model included: river's subpackages import each other in circles, and two threads
    importing them in different orders at once can make Python's import raise a deadlock error
    instead of waiting."""
    global _river
    if _river is None:
        with _river_lock:
            for part in ("linear_model", "metrics", "optim", "preprocessing"):
                importlib.import_module(f"river.{part}")
            _river = importlib.import_module("river")
    return _river


def features(values: Mapping[str, Any]) -> dict[str, float]:
    """The model's input from a profile's values: numbers as they are, booleans 0/1, text and
    the items of lists one-hot into one of ``BUCKETS`` hashed buckets per name (``tier#17``):
    the model stays bounded however many distinct values arrive, and holds no value itself (an
    erased customer's text is not in any model); nothing for an absent value.

    >>> features({"spend": 12.5, "vip": True, "tier": "gold", "channels": ["web", "app"], "mood": None})
    {'spend': 12.5, 'vip': 1.0, 'tier#81': 1.0, 'channels#81': 1.0, 'channels#207': 1.0}
    """
    out: dict[str, float] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            if math.isfinite(value):
                out[name] = float(value)
        elif isinstance(value, str):
            out[_bucket(name, value)] = 1.0
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, str | int | float) and not isinstance(item, bool):
                    out[_bucket(name, str(item))] = 1.0
    return out


def _bucket(name: str, value: str) -> str:
    # crc32, not hash(): the same bucket in every process and after every restart
    return f"{name}#{zlib.crc32(value.encode('utf-8', 'replace')) % BUCKETS}"


def is_target(score: Score, event_type: str, source: str, properties: Mapping[str, Any]) -> bool:
    """Whether an event is one the score predicts (its type, and its ``where``)."""
    if event_type != score.event:
        return False
    if score.where is None:
        return True
    props = dict(properties)
    context = cel.Context(
        {
            "event": {"type": event_type, "source": source, "properties": props},
            "properties": props,
            "source": source,
            "type": event_type,
        }
    )
    return score.where.evaluate(context)[0]


class ScoreModel:
    """One score's model and progressive quality."""

    def __init__(self, score: Score) -> None:
        self.score: Score | None = score
        river = load_river()
        self.model = river.preprocessing.StandardScaler() | river.linear_model.LogisticRegression(optimizer=river.optim.SGD(0.05))
        self.auc = river.metrics.ROCAUC(n_thresholds=100)
        self.log_loss = river.metrics.LogLoss()
        #: per bin: predictions, their sum, positives
        self.bins = [[0, 0.0, 0] for _ in range(BINS)]
        self.positives = 0
        self.negatives = 0

    def predict(self, x: Mapping[str, float]) -> float:
        """The chance now; 0.5 when the model cannot say (nothing learned, or a fault in it)."""
        try:
            p = float(self.model.predict_proba_one(dict(x)).get(True, 0.5))
        except Exception:  # a decision must not fail on a score: the fault is logged, once a call
            log.exception("a score could not be computed", extra={"score": self.score.name if self.score else ""})
            return 0.5
        return p if math.isfinite(p) else 0.5

    def __getstate__(self) -> dict[str, Any]:
        # the score's definition holds compiled CEL (not picklable), and is the live set's to give
        state = dict(self.__dict__)
        state["score"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def learn(self, example: Example) -> None:
        """Judged against its score as it was when made, then learned."""
        p = min(max(example.p, 1e-6), 1 - 1e-6) if math.isfinite(example.p) else 0.5
        self.auc.update(example.y, {True: p, False: 1 - p})
        self.log_loss.update(example.y, {True: p, False: 1 - p})
        held = self.bins[min(int(p * BINS), BINS - 1)]
        held[0] += 1
        held[1] += p
        held[2] += int(example.y)
        if example.y:
            self.positives += 1
        else:
            self.negatives += 1
        self.model.learn_one(dict(example.x), example.y)

    def quality(self) -> dict[str, Any]:
        """examples, positives, auc, log_loss, calibration_error (expected, over the bins) and
        flagged (too few labels of either kind, or an AUC below the score's min_auc)."""
        min_auc = self.score.min_auc if self.score is not None else 0.6
        examples = self.positives + self.negatives
        calibration = sum(abs(total - hits) for _, total, hits in self.bins) / examples if examples else 0.0
        enough = min(self.positives, self.negatives) >= MIN_EXAMPLES
        auc = float(self.auc.get()) if self.positives and self.negatives else 0.5
        return {
            "examples": examples,
            "positives": self.positives,
            "auc": auc,
            "log_loss": float(self.log_loss.get()) if examples else 0.0,
            "calibration_error": calibration,
            "flagged": not enough or auc < min_auc,
        }


class ScoreStore(Protocol):
    """What the models need of storage (``nba.storage.scores.ScoreModelRows``)."""

    def score_models(self, conn: Any, names: list[str]) -> dict[str, tuple[str, int, bytes]]: ...

    def score_model_versions(self, conn: Any) -> dict[str, tuple[str, int]]: ...

    def save_score_model(self, conn: Any, name: str, source: str, version: int, state: bytes) -> None: ...

    def read(self) -> Any: ...


class ScoreModels:
    """Every score of the live definition, shared through the database: ``predict`` from this
    process's copies; ``learn`` inside a write transaction; ``refresh`` reads what other
    processes learned."""

    def __init__(self, store: ScoreStore, definition: Callable[[], ProfileDefinition]) -> None:
        self._store = store
        self._definition = definition
        self._lock = threading.Lock()
        #: name -> (source, version, model): copies are replaced, never changed, so readers need no lock
        self._models: dict[str, tuple[str, int, ScoreModel]] = {}

    def model(self, score: Score) -> ScoreModel:
        held = self._models.get(score.name)
        if held is None or held[0] != score.source:
            fresh = ScoreModel(score)
            with self._lock:
                held = self._models.get(score.name)
                if held is None or held[0] != score.source:
                    self._models[score.name] = held = (score.source, 0, fresh)
        return held[2]

    def predict(self, name: str, x: Mapping[str, float]) -> float:
        score = next((s for s in self._definition().scores if s.name == name), None)
        return self.model(score).predict(x) if score is not None else 0.5

    def predict_all(self, values: Mapping[str, Any]) -> dict[str, float]:
        """Every score for a profile's (non-personal) values now: what rules read as profile.scores."""
        scores = self._definition().scores
        if not scores:
            return {}
        x = features(values)
        return {s.name: self.model(s).predict(x) for s in scores}  # (predict never raises)

    def _version(self, name: str) -> int:
        held = self._models.get(name)
        return held[1] if held is not None else 0

    def quality(self) -> dict[str, dict[str, Any]]:
        return {s.name: self.model(s).quality() for s in self._definition().scores}

    def learn(self, conn: Any, examples: list[Example]) -> None:
        """Learns matured labels into the newest stored models (inside the caller's write transaction)."""
        if not examples:
            return
        scores = {s.name: s for s in self._definition().scores}
        names = sorted({e.score for e in examples} & set(scores))
        stored = self._store.score_models(conn, names)
        for name in names:
            score = scores[name]
            row = stored.get(name)
            model = _unpickled(row[2]) if row is not None and row[0] == score.source else ScoreModel(score)
            model.score = score
            for example in examples:
                if example.score == name:
                    model.learn(example)
            version = (row[1] if row is not None else 0) + 1
            self._store.save_score_model(conn, name, score.source, version, pickle.dumps(model))
            with self._lock:
                self._models[name] = (score.source, version, model)

    def refresh(self) -> None:
        """Reads the models other processes moved on since this one's copies."""
        scores = {s.name: s for s in self._definition().scores}
        if not scores:
            return
        with self._store.read() as conn:
            versions = self._store.score_model_versions(conn)
            newer = [
                name
                for name, (source, version) in versions.items()
                if name in scores and source == scores[name].source and version != self._version(name)
            ]
            stored = self._store.score_models(conn, newer) if newer else {}
        for name, (source, version, state) in stored.items():
            held = self._models.get(name)
            if source == scores[name].source and (held is None or held[1] < version):
                model = _unpickled(state)
                model.score = scores[name]
                with self._lock:
                    self._models[name] = (source, version, model)


def _unpickled(state: bytes) -> ScoreModel:
    """A stored model, river imported first (``load_river``: not by the unpickler, in its own order)."""
    load_river()
    model: ScoreModel = pickle.loads(state)
    return model
