"""Exploration turns scores into exact probabilities; draws follow them."""

from __future__ import annotations

import numpy as np
import pytest

from bandit import EpsilonGreedy, InverseGapWeighting, draw_slots


@pytest.mark.parametrize("strategy", [InverseGapWeighting(), InverseGapWeighting(5, 0), EpsilonGreedy(0.2)])
@pytest.mark.parametrize("t", [0, 10, 10_000])
def test_probabilities_sum_to_one_and_are_positive(strategy, t: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.random(int(rng.integers(1, 30)))
        p = strategy.probabilities(scores, t=t)
        assert p.sum() == pytest.approx(1.0)
        assert np.all(p > 0)
        assert np.argmax(p) == np.argmax(scores)


def test_igw_matches_the_formula() -> None:
    scores = np.array([0.30, 0.10, 0.25])
    gamma = 10 * 100**0.5
    p = InverseGapWeighting(10, 0.5).probabilities(scores, t=100)
    expected_1 = 1 / (3 + gamma * 0.20)
    expected_2 = 1 / (3 + gamma * 0.05)
    assert p[1] == pytest.approx(expected_1)
    assert p[2] == pytest.approx(expected_2)
    assert p[0] == pytest.approx(1 - expected_1 - expected_2)


def test_scale_makes_gaps_currency_free() -> None:
    igw = InverseGapWeighting(10, 0)
    in_units = igw.probabilities(np.array([0.5, 0.2]))
    in_money = igw.probabilities(np.array([50.0, 20.0]), scale=100.0)
    np.testing.assert_allclose(in_units, in_money)


def test_ties_share_the_best_mass() -> None:
    p = InverseGapWeighting().probabilities(np.zeros(4), t=1000)
    np.testing.assert_allclose(p, 0.25)
    p = EpsilonGreedy(0.1).probabilities(np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(p, [0.1 / 3 + 0.45, 0.1 / 3 + 0.45, 0.1 / 3])


@pytest.mark.parametrize("bad", [{"gamma_scale": -1}, {"gamma_exponent": -0.5}])
def test_igw_refuses_negative_parameters(bad) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        InverseGapWeighting(**bad)


def test_epsilon_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="epsilon must be within"):
        EpsilonGreedy(1.5)


def test_draw_frequencies_match_reported_propensities() -> None:
    """The logged propensity is the true probability: empirical frequencies agree, for the
    first slot and for the second slot given the first."""
    scores = np.array([0.5, 0.4, 0.1, 0.3])
    igw = InverseGapWeighting(3, 0)
    rng = np.random.default_rng(42)
    n = 20_000
    first_counts = np.zeros(4)
    second_given_0 = np.zeros(4)
    reported_second: dict[int, float] = {}
    given_0 = 0
    for _ in range(n):
        first, slots = draw_slots(igw, scores, 2, rng)
        (a, pa), (b, pb) = slots
        assert pa == pytest.approx(first[a])
        first_counts[a] += 1
        if a == 0:
            given_0 += 1
            second_given_0[b] += 1
            reported_second[b] = pb
    np.testing.assert_allclose(first_counts / n, first, atol=0.01)
    for b, p in reported_second.items():
        assert second_given_0[b] / given_0 == pytest.approx(p, abs=0.015)
    # The second slot's distribution is the same rule over the arms that remain.
    remaining = igw.probabilities(scores[[1, 2, 3]])
    assert reported_second[1] == pytest.approx(remaining[0])
