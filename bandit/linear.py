"""The default learner: a linear model per arm over hashed context features."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from itertools import repeat
from typing import Any

import numpy as np

from bandit.base import Learner
from bandit.drift import PageHinkley
from bandit.exploration import Exploration, InverseGapWeighting
from bandit.features import Featurizer, Shape, shape_of, unchanged
from bandit.ridge import RidgeArms
from bandit.state import arm_ids, arm_list

__all__ = ["LinearBandit"]

#: an arm that first learns after this many updates of the learner is a newcomer to it
LATE = 1000
#: a newcomer is judged by its evidence about the customer at hand until it has this many times
#: ``optimism`` observations in all
YOUNG = 20


def change_test() -> PageHinkley:
    """The change test a learner runs on each arm's residuals: for drops only, at a threshold
    of 20. A drop is the change that costs (the learner keeps choosing an arm that stopped
    earning, and its residuals say so at once); a rise is learned as the arm is observed. The
    two-sided test at 15 mistook estimates still catching up (residuals rising early in an
    arm's life) for changes, and each false alarm threw an arm's model away: 3 to 9 a run on
    the learning benchmark's synthetic-10 and synthetic-50 streams, where the defaults then
    lost 6 points of reward. Over 8 seeds of the benchmark this test raised 2 alarms in 64 runs of
    stationary streams and 4-5 on every run of the change stream (5 segments swapped; the new
    best arm then takes 72-96% of decisions 1,600-2,000 after the swap), and the defaults
    stayed within 0.1 point of the learner without adaptation on every stationary stream
    (``make bench-adaptation``)."""
    return PageHinkley(threshold=20.0, drops_only=True)


class LinearBandit(Learner):
    """Per-arm ridge regression on hashed, online-scaled context features, exploring by
    inverse gap weighting.

    Why this pairing: exact online ridge learns from the first responses (no learning rate to
    tune), scoring all arms is one matrix product, and IGW turns its estimates into an explicit
    distribution with full support, the propensities offline evaluation needs. It is the
    regression-oracle approach of SquareCB (Foster & Rakhlin, 2020) with the disjoint linear
    model of LinUCB (Li et al., 2010), without UCB's deterministic argmax.

    Parameters
    ----------
    n_features
        Hashed feature slots (memory per arm grows with its square).
    alpha
        Ridge regularisation: the weight of the prior that every arm earns 0.
    exploration
        How estimates become probabilities; ``InverseGapWeighting()`` by default.
    forget
        In (0, 1]: below 1, every round of the catalogue (K updates of the learner, with K arms
        known, whichever arms they concern) discounts every arm's earlier observations by this
        factor: exact discounted ridge (``RidgeArms``), so the learner follows preferences that
        change, and an arm nobody chooses any more drifts back towards what is assumed of an
        unknown arm (its evidence decays, and with it the trust in its old estimate). At 0.999
        an arm at its fair share of the updates remembers about 1,000 of its observations.
    optimism
        A pseudo-count, 0 to turn it off. Above 0, an arm with evidence n (its observations,
        discounted with forgetting) is estimated as n / (n + optimism) of its own estimate and
        the rest the best that any arm the learner knows earns for this context: an arm nobody
        knows yet (an offer added to a running catalogue), or one whose evidence was
        forgotten, is tried as if it were as good as the best, until its own observations say
        otherwise. An arm with evidence is barely touched (weight optimism / (n + optimism)).
        An arm never observed is estimated as the best from the start; the pseudo-count (the
        weight of that guess against an arm's first observations) grows from 0 to ``optimism``
        over the learner's first ``LATE`` (1,000) updates, while inverse gap weighting still
        explores every arm.
    detect_changes
        Run a change test (``change_test()``: Page-Hinkley, ``bandit.drift``) on each arm's
        residuals; when what an arm earns has dropped abruptly, its own model starts again from
        nothing (and, with ``optimism``, is tried again like a new arm), rather than unlearning
        its past one observation at a time.
    explore_by_age
        With inverse gap weighting, scale each arm's gamma by its own age (updates of the
        learner since the arm first learned) rather than by the learner's total updates: an
        arm that joins late is explored as a young learner explores, not as one that has
        seen everything.
    shared
        A pseudo-count, 0 to turn it off. Above 0, a second set of ridge models, one per arm
        *attribute* (``set_arm_attributes``: its group, its tags, and ``*`` for every arm),
        learns from every arm that has the attribute, and an arm's estimate blends its own
        model with the mean of its attributes' models, with weight n / (n + shared) on its own
        after n observations. A new arm starts from what similar arms taught, not from the
        prior (as hybrid LinUCB's shared features do, at the cost of one more update per
        attribute).
    prior
        The expected reward of an arm nothing is known about yet. The model learns each arm's
        difference from it, so before any evidence every arm is estimated at ``prior`` (and
        business weights already rank them), not at zero.
    clip, exclude, warmup
        See ``Featurizer``.
    seed
        Seeds the draws: the same seed and the same events give the same choices.

    >>> learner = LinearBandit(n_features=16, seed=1)
    >>> for _ in range(200):
    ...     learner.update("tea", {"time": "morning"}, 1.0)
    ...     learner.update("coffee", {"time": "morning"}, 0.0)
    >>> draw = learner.pull(["tea", "coffee"], {"time": "morning"})
    >>> draw.chosen, round(float(draw.probabilities[0]), 3)
    (['tea'], 0.995)
    """

    name = "linear-igw"

    def __init__(
        self,
        n_features: int = 128,
        alpha: float = 1.0,
        exploration: Exploration | None = None,
        clip: float = 5.0,
        exclude: Iterable[str] = (),
        warmup: int = 1000,
        prior: float = 0.0,
        forget: float = 0.999,
        shared: float = 0.0,
        optimism: float = 5.0,
        explore_by_age: bool = True,
        detect_changes: bool = True,
        seed: int | None = None,
    ) -> None:
        if shared < 0:
            raise ValueError(f"shared must be non-negative, got {shared}")
        if not optimism >= 0:
            raise ValueError(f"optimism must be non-negative, got {optimism}")
        super().__init__(exploration or InverseGapWeighting(), seed)
        self.n_features = n_features
        self.alpha = alpha
        self.prior = prior
        self.forget = forget
        self.clip = clip
        self.exclude = tuple(exclude)
        self.shared = shared
        self.optimism = optimism
        self.explore_by_age = explore_by_age
        self.detect_changes = detect_changes
        self._detector = change_test()
        self._changes_detected = 0
        self.warmup = warmup
        self._featurizer = Featurizer(n_features, clip, self.exclude, warmup)
        self._model = RidgeArms(self._featurizer.dim, alpha, forget)
        self._attributes = RidgeArms(self._featurizer.dim, alpha, forget)
        self._arm_attributes: dict[Hashable, tuple[str, ...]] = {}
        # For the blend: every attribute's name in a fixed order, and a matrix whose row for an
        # arm averages its attributes (row 0: an arm not described, which has only "*").
        self._attribute_names: list[str] = ["*"]
        self._arm_slot: dict[Hashable, int] = {}
        self._membership = np.ones((1, 1))
        self._solo = np.zeros(1, dtype=bool)
        self._cached: tuple[Mapping[str, Any], int, np.ndarray, Shape] | None = None

    def set_arm_attributes(self, attributes: Mapping[Hashable, Iterable[str] | None]) -> None:
        """Declares each arm's attributes (e.g. ``group=retention``, ``tag=credit-card``);
        every arm also has ``*``. Arms not named keep only ``*``. An arm given None stands
        alone: it neither teaches nor borrows from the shared model (a fallback, say, whose
        responses say nothing about what the other offers are worth)."""
        self._arm_attributes = {
            arm: () if attrs is None else tuple(dict.fromkeys(("*", *attrs))) for arm, attrs in attributes.items()
        }
        names = ["*", *sorted({a for attrs in self._arm_attributes.values() for a in attrs} - {"*"})]
        column = {name: j for j, name in enumerate(names)}
        membership = np.zeros((len(self._arm_attributes) + 1, len(names)))
        membership[0, 0] = 1.0
        solo = np.zeros(len(self._arm_attributes) + 1, dtype=bool)
        self._arm_slot = {}
        for i, (arm, attrs) in enumerate(self._arm_attributes.items(), start=1):
            if attrs:
                membership[i, [column[a] for a in attrs]] = 1.0 / len(attrs)
            else:
                solo[i] = True
            self._arm_slot[arm] = i
        self._attribute_names, self._membership, self._solo = names, membership, solo

    @property
    def changes_detected(self) -> int:
        """How many times a change was detected in what an arm earns (and its model restarted)."""
        return self._changes_detected

    def _attributes_of(self, arm_id: Hashable) -> tuple[str, ...]:
        return self._arm_attributes.get(arm_id, ("*",))

    def count(self, arm_id: Hashable) -> int:
        """How many observations ``arm_id`` has learned from."""
        return self._model.count(arm_id)

    def _features(self, context: Mapping[str, Any]) -> np.ndarray:
        """The context's vector, reused when the same context object is asked for again before
        the featurizer learned anything (a pull followed by its update)."""
        cached = self._cached
        if (
            cached is not None
            and cached[0] is context
            and cached[1] == self._featurizer.version
            and unchanged(context, cached[3])
        ):
            return cached[2]
        x = self._featurizer.transform_one(context)
        # The context's keys and value objects too: a dict changed in place between the pull
        # and the update must not get the vector of what it held before (a nested one, whose
        # changes cannot be told, is not kept).
        shape = shape_of(context)
        self._cached = None if shape is None else (context, self._featurizer.version, x, shape)
        return x

    def _predict(self, arm_ids: list[Hashable], context: Mapping[str, Any]) -> np.ndarray:
        x = self._features(context)
        rows = self._model.rows(arm_ids)
        own = self._model.predict_rows(rows, x)
        n = self._model.evidence(rows)
        if self.shared:
            # Every attribute's estimate, then each arm's mean of its own: two matrix products.
            per_attribute = self._attributes.predict(self._attribute_names, x)
            slots = np.fromiter(map(self._arm_slot.get, arm_ids, repeat(0)), dtype=np.intp, count=len(arm_ids))
            from_attributes = self._membership[slots] @ per_attribute
            trust = np.where(self._solo[slots], 1.0, n / (n + self.shared))
            own = trust * own + (1 - trust) * from_attributes
        # The pseudo-count grows with the learner's updates to its full value at LATE: in its
        # first updates every arm is young and inverse gap weighting explores enough (full
        # optimism from the start cost up to a point of reward on 150-row data sets, 30 seeds
        # of the learning benchmark's iris and wine).
        pseudo = self.optimism * min(1.0, self._model.clock / LATE)
        if pseudo > 0 and len(rows):
            # The best any known arm is expected to earn here, over every arm the learner knows
            # (not only those offered): the same for any subset of arms, so a later slot's
            # probabilities, computed over the arms left, agree with the first slot's.
            best = float(np.max(self._model.known_estimates(x), initial=0.0))
            # An arm that joined a learner which had already learned (a newcomer to a running
            # catalogue) is judged by its evidence about customers like this one: tried only
            # elsewhere, it is still unknown here. Not the arms a learner starts with, which
            # all know equally little: on contexts of many dimensions every customer would be
            # new to every arm, and optimism would never end. O(d^2) per young newcomer.
            newcomers = np.flatnonzero((n < YOUNG * self.optimism) & (self._model.births(rows) >= LATE))
            if len(newcomers):
                n = n.copy()
                n[newcomers] = np.minimum(n[newcomers], self._model.direction_evidence(rows[newcomers], x))
            trust = n / (n + pseudo)
            own = trust * own + (1 - trust) * best
        return self.prior + own

    def describe_exploration(self) -> str:
        if self.explore_by_age and isinstance(self.exploration, InverseGapWeighting):
            e = self.exploration
            return f"inverse gap weighting, gamma {e.gamma_scale:g} x (each offer's age in updates)^{e.gamma_exponent:g}"
        return super().describe_exploration()

    def _exploration_t(self, arm_ids: list[Hashable]) -> int | np.ndarray:
        if not self.explore_by_age:
            return self.n_updates
        ages = self._model.ages(self._model.rows(arm_ids))
        return ages

    def _export_state(self, reuse: Mapping[str, np.ndarray] | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        features, feature_arrays = self._featurizer.export_state("features.", reuse)
        arms, arm_arrays = self._model.export_state("arms.", reuse)
        attributes, attribute_arrays = self._attributes.export_state("attributes.", reuse)
        described: list[list[Any]] = [
            [arm, None if not attrs else list(attrs[1:])] for arm, attrs in self._arm_attributes.items()
        ]
        arm_list((arm for arm, _ in described), "arm_attributes")
        drift, drift_arrays = self._detector.export_state("drift.", reuse)
        meta = {
            "features": features,
            "arms": arms,
            "attributes": attributes,
            "arm_attributes": described,
            "drift": drift,
            "changes_detected": self._changes_detected,
        }
        return meta, {**feature_arrays, **arm_arrays, **attribute_arrays, **drift_arrays}

    def _import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        featurizer = Featurizer(self.n_features, self.clip, self.exclude, self.warmup)
        model = RidgeArms(featurizer.dim, self.alpha, self.forget)
        attributes = RidgeArms(featurizer.dim, self.alpha, self.forget)
        for part, name in ((featurizer, "features"), (model, "arms"), (attributes, "attributes")):
            if not isinstance(meta.get(name), dict):
                raise ValueError(f"meta: {name} is missing")
            part.import_state(meta[name], arrays, f"{name}.")
        described = meta.get("arm_attributes", [])
        if not isinstance(described, list) or not all(
            isinstance(item, list)
            and len(item) == 2
            and (item[1] is None or (isinstance(item[1], list) and all(isinstance(a, str) for a in item[1])))
            for item in described
        ):
            raise ValueError("meta: arm_attributes must be a list of [arm id, [attribute, ...] or null]")
        arm_ids([arm for arm, _ in described], "arm_attributes")
        detector = change_test()
        if isinstance(meta.get("drift"), dict):  # absent from states written before change detection
            detector.import_state(meta["drift"], arrays, "drift.")
        changes = meta.get("changes_detected", 0)
        if not isinstance(changes, int) or isinstance(changes, bool) or changes < 0:
            raise ValueError(f"meta: changes_detected must be a count, got {changes!r}")
        self._detector, self._changes_detected = detector, changes
        self._featurizer, self._model, self._attributes, self._cached = featurizer, model, attributes, None
        self.set_arm_attributes({arm: attrs for arm, attrs in described})

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cached"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Snapshots of earlier versions lack newer fields: start those empty (the service
        # describes the arms again after restoring).
        fresh: dict[str, Any] = {
            "_attribute_names": ["*"],
            "_arm_slot": {},
            "_membership": np.ones((1, 1)),
            "_solo": np.zeros(1, dtype=bool),
            "_cached": None,
            "shared": 0.0,
            "warmup": 1000,
            "optimism": 0.0,
            "explore_by_age": False,
            "detect_changes": False,
            "_detector": change_test(),
            "_changes_detected": 0,
        }
        self.__dict__.update({**fresh, **state})

    def _update(
        self,
        arm_id: Hashable,
        context: Mapping[str, Any],
        reward: float,
        previous_reward: float | None,
    ) -> None:
        # The observation is the vector as it was scored (before this context moves the running
        # statistics), so a pull's vector serves its update, and a replay rebuilds the same.
        x = self._features(context)
        previous = None if previous_reward is None else previous_reward - self.prior
        target = reward - self.prior
        # Every model this update touches is checked before any changes: a refused update
        # (one that would leave a model non-finite) leaves the learner exactly as it was.
        attributes = self._attributes_of(arm_id) if self.shared else ()
        x_norm = math.sqrt(float(x @ x))
        self._model.check_one(arm_id, x, target, previous, x_norm)
        for attribute in attributes:
            self._attributes.check_one(attribute, x, target, previous, x_norm)
        if previous_reward is None:
            if self.detect_changes:
                residual = target - float(self._model.predict([arm_id], x)[0])
                if self._detector.update(arm_id, residual):
                    self._model.reset(arm_id)
                    self._changes_detected += 1
            self._featurizer.learn_one(context)
            self._model.advance()
            self._attributes.advance()
        self._model._apply_one(arm_id, x, target, previous)
        for attribute in attributes:
            self._attributes._apply_one(attribute, x, target, previous)

    def state_is_finite(self) -> bool:
        return (
            self._model.state_is_finite()
            and self._attributes.state_is_finite()
            and self._featurizer.state_is_finite()
            and self._detector.state_is_finite()
        )
