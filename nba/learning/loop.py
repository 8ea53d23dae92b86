"""The learning loop: one learner shared by every request, updated by every feedback event.

Decide threads draw from the learner while the decision-log writer applies feedback to it, so
both go through one lock; each holds it for microseconds. The learner's state survives a
restart as a periodic snapshot plus the feedback logged after it: events are applied in the
order they were made durable, and replaying that order rebuilds the same state.

A snapshot is the learner's state as data (``bandit.state``: NumPy arrays and a JSON header,
never a pickle, so loading one from the database cannot run code). Its arrays are copied under
the lock, which is all a Decide can wait for, and encoded and written outside it.

Every event, whether from this process, the log replayed at start, or another worker or
replica (the database and Redis buses), passes one guard before the learner sees it: an event
whose reward is not finite or outside the configured range (a log written by an older
version, or a replica configured otherwise), or that the learner refuses (one that would leave
its state non-finite), is skipped with a warning and counted in
``nba_learning_events_skipped_total``. Every process applies the same rule to the same log, so
replicas still agree. An event revising a reward that was skipped is learned as the
observation it then is: new.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from bandit import Draw, InverseGapWeighting, Learner, LinearBandit
from bandit import state as learner_state
from nba import metrics
from nba.config import Settings
from nba.learning.feedback import DEFAULT_REWARD_RANGE, reward_problem
from nba.records import LearningEvent

__all__ = ["LearningLoop", "SnapshotStore", "build_learner"]

log = logging.getLogger(__name__)


class SnapshotStore(Protocol):
    def save_snapshot(self, signature: str, model_version: str, last_feedback_id: int, state: bytes) -> None: ...

    def latest_snapshot(self) -> tuple[str, int, bytes] | None: ...

    def learning_events(self, after_id: int) -> Iterable[LearningEvent]: ...


def build_learner(settings: Settings) -> Learner:
    return LinearBandit(
        n_features=settings.learner_features,
        alpha=settings.learner_alpha,
        prior=settings.learner_prior,
        forget=settings.learner_forget,
        shared=settings.learner_shared,
        optimism=settings.learner_optimism,
        explore_by_age=settings.learner_explore_by_age,
        detect_changes=settings.learner_detect_changes,
        exploration=InverseGapWeighting(settings.learner_gamma_scale, settings.learner_gamma_exponent),
        exclude=settings.learner_exclude,
        seed=settings.seed,
    )


def signature(learner: Learner) -> str:
    """What a snapshot must match to be reused: its format (``bandit.state``'s), the
    learner's kind and its hyperparameters. Snapshots from before the format existed
    (pickles) have no format here, so they never match."""
    params = {k: v for k, v in sorted(vars(learner).items()) if not k.startswith("_") and k not in ("n_updates", "seed")}
    return f"{learner_state.FORMAT} {type(learner).__name__}({params})"


class LearningLoop:
    def __init__(
        self, learner: Learner, snapshot_seconds: float = 60.0, reward_range: tuple[float, float] = DEFAULT_REWARD_RANGE
    ) -> None:
        self._learner = learner
        #: the rewards that may be learned (reward_min, reward_max); others are skipped
        self._reward_range = reward_range
        self._signature = signature(learner)
        self._lock = threading.Lock()
        self._snapshot_seconds = snapshot_seconds
        self._last_snapshot = time.monotonic()
        self._last_feedback_id = 0
        self._snapshot_feedback_id = 0
        self._attributes: dict[Hashable, Sequence[str] | None] = {}
        #: one snapshot at a time; the last one's arrays are reused by the next
        self._snapshotting = threading.Lock()
        self._last_state: learner_state.LearnerState | None = None

    @property
    def version(self) -> str:
        return self._learner.version

    @property
    def last_feedback_id(self) -> int:
        return self._last_feedback_id

    def draw(
        self, arm_ids: Sequence[Hashable], features: Mapping[str, Any], k: int, weights: np.ndarray
    ) -> tuple[Draw, str, str]:
        """Ranks ``k`` arms; returns the draw, the model version it ran under, and how
        exploration turned scores into probabilities."""
        with self._lock:
            learner = self._learner
            return (
                learner.pull(arm_ids, features, k, weights),
                learner.version,
                learner.describe_exploration(),
            )

    def distribution(self, arm_ids: Sequence[Hashable], features: Mapping[str, Any], weights: np.ndarray) -> np.ndarray:
        """First-slot probabilities without drawing (what-if preview)."""
        with self._lock:
            return self._learner.distribution(arm_ids, features, weights)[0]

    def describe_arms(self, attributes: Mapping[Hashable, Sequence[str] | None]) -> None:
        """Tells the learner each offer's attributes (group, tags), for its shared model; None
        keeps an offer out of it (the fallbacks)."""
        self._attributes = dict(attributes)
        with self._lock:
            setter = getattr(self._learner, "set_arm_attributes", None)
            if setter is not None:
                setter(self._attributes)

    def scores(self, arm_ids: Sequence[Hashable], features: Mapping[str, Any]) -> np.ndarray:
        with self._lock:
            return self._learner.scores(arm_ids, features)

    def apply(self, events: Iterable[LearningEvent]) -> None:
        """Learns each event in order; one that may not be learned is skipped (logged, counted)
        and the rest go on."""
        now = time.time()
        with self._lock:
            for event in events:
                self._last_feedback_id = max(self._last_feedback_id, event.feedback_id)
                problem = reward_problem(event.reward, self._reward_range)
                reason = None if problem is None else f"reward: {problem}"
                previous = event.previous_reward
                if previous is not None and reward_problem(previous, self._reward_range) is not None:
                    previous = None  # the reward it revises was skipped: this is the observation
                if reason is None:
                    try:
                        self._learner.update(event.offer_id, event.features, event.reward, previous)
                    except ValueError as exc:  # a context or reward the learner refuses
                        reason = str(exc)
                if reason is not None:
                    log.warning(
                        "feedback event not learned",
                        extra={"feedback_id": event.feedback_id, "offer_id": event.offer_id, "reason": reason},
                    )
                    metrics.LEARNING_SKIPPED.inc()
                    continue
                metrics.LEARNING_UPDATES.inc()
                if event.received_at:
                    metrics.LEARNING_LAG.observe(max(0.0, now - event.received_at))

    def restore(self, store: SnapshotStore, seed: int | None) -> int:
        """Loads the newest compatible snapshot and replays the feedback logged after it.

        Returns how many events were replayed. A snapshot of another learner configuration is
        ignored and the whole feedback log replayed, so a change of hyperparameters rebuilds
        the model from everything it has seen.
        """
        snapshot = store.latest_snapshot()
        after = 0
        if snapshot is not None:
            stored_signature, last_id, data = snapshot
            if stored_signature != self._signature:
                log.warning(
                    "snapshot is of another format or learner configuration; rebuilding from the feedback log",
                    extra={"snapshot": stored_signature[:200], "configured": self._signature},
                )
            else:
                try:
                    state = learner_state.loads(data)
                    with self._lock:
                        self._learner.import_state(state)
                    after = last_id
                except (ValueError, TypeError) as exc:  # damaged or forged: the log is the truth
                    log.error("snapshot unusable; rebuilding from the feedback log", extra={"error": str(exc)[:500]})
        self._last_feedback_id = after
        if self._attributes:
            self.describe_arms(self._attributes)
        replayed = 0
        batch: list[LearningEvent] = []
        for event in store.learning_events(after):
            batch.append(event)
            if len(batch) >= 1000:
                self.apply(batch)
                replayed += len(batch)
                batch = []
        self.apply(batch)
        replayed += len(batch)
        self._snapshot_feedback_id = after
        # Draws after a restart must not repeat the ones before it.
        with self._lock:
            self._learner.reseed(seed)
        return replayed

    def maybe_snapshot(self, store: SnapshotStore, force: bool = False) -> bool:
        """Snapshots when the interval has passed and something was learned since."""
        due = time.monotonic() - self._last_snapshot >= self._snapshot_seconds
        if not (force or due) or self._last_feedback_id == self._snapshot_feedback_id:
            return False
        with self._snapshotting:
            with self._lock:  # a copy of the arrays (into the last snapshot's): all a Decide can wait for
                state = self._learner.export_state(reuse=self._last_state)
                version, last_id = self._learner.version, self._last_feedback_id
            data = learner_state.dumps(state)
            self._last_state = state
        store.save_snapshot(self._signature, version, last_id, data)
        self._last_snapshot = time.monotonic()
        self._snapshot_feedback_id = last_id
        metrics.SNAPSHOTS.inc()
        return True
