"""The learning benchmark's propensity check catches a learner that logs wrong probabilities."""

from __future__ import annotations

import random
import sys

import numpy as np
from conftest import ROOT

from bandit import LinearBandit, UniformRandom

sys.path.insert(0, str(ROOT / "loadtests"))
from bench_learning import Ours, Stream, run


def stream(n: int = 2000, classes: int = 4) -> Stream:
    rng = np.random.default_rng(1)
    y = rng.integers(0, classes, n)
    X = np.eye(classes)[y] + rng.normal(0, 0.3, (n, classes))
    return Stream("toy", X, y, classes)


class Deterministic:
    """Always the learner's best guess, claiming probability 1: what a plain UCB logs."""

    name = "argmax"

    def __init__(self) -> None:
        self.learner = LinearBandit(seed=1)

    def play(self, x, arms, rng: random.Random):
        arm = arms[int(np.argmax(self.learner.scores(arms, x)))]
        return arm, 1.0, lambda reward: self.learner.update(arm, x, reward)


def test_correct_propensities_pass_and_claimed_certainty_fails() -> None:
    data = stream()
    uniform = run(data, Ours("uniform", UniformRandom(seed=1)), seed=1)
    learner = run(data, Ours("linear", LinearBandit(seed=1)), seed=1)
    greedy = run(data, Deterministic(), seed=1)
    assert uniform.propensities_ok and learner.propensities_ok
    assert not greedy.propensities_ok
    assert learner.reward > 0.8 > 0.35 > uniform.reward  # it also learns the toy problem
