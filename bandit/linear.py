"""The default learner: a linear model per arm over hashed context features."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from bandit.base import Learner
from bandit.exploration import Exploration, InverseGapWeighting
from bandit.features import Featurizer
from bandit.ridge import RidgeArms

__all__ = ["LinearBandit"]


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
        In (0, 1]: below 1, every new observation of an arm discounts its older ones by this
        factor, so the learner follows drifting preferences (0.99 halves the weight of
        evidence after about 70 newer observations).
    prior
        The expected reward of an arm nothing is known about yet. The model learns each arm's
        difference from it, so before any evidence every arm is estimated at ``prior`` (and
        business weights already rank them), not at zero.
    clip, exclude
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
        prior: float = 0.0,
        forget: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(exploration or InverseGapWeighting(), seed)
        self.n_features = n_features
        self.alpha = alpha
        self.prior = prior
        self.forget = forget
        self.clip = clip
        self.exclude = tuple(exclude)
        self._featurizer = Featurizer(n_features, clip, self.exclude)
        self._model = RidgeArms(self._featurizer.dim, alpha, forget)

    def count(self, arm_id: Hashable) -> int:
        """How many observations ``arm_id`` has learned from."""
        return self._model.count(arm_id)

    def _predict(self, arm_ids: list[Hashable], context: Mapping[str, Any]) -> np.ndarray:
        return self.prior + self._model.predict(arm_ids, self._featurizer.transform_one(context))

    def _update(
        self,
        arm_id: Hashable,
        context: Mapping[str, Any],
        reward: float,
        previous_reward: float | None,
    ) -> None:
        if previous_reward is None:
            self._featurizer.learn_one(context)
        x = self._featurizer.transform_one(context)
        previous = None if previous_reward is None else previous_reward - self.prior
        self._model.learn_one(arm_id, x, reward - self.prior, previous)
