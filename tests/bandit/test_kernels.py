"""The compiled draw (bandit.kernels) gives the numbers the numpy draw gives, bit for bit: the
first slot's probabilities, every slot's arm and propensity, and the same use of the random
generator, over many sizes, ties, scales, and per-arm evidence."""

from __future__ import annotations

import numpy as np
import pytest

from bandit.exploration import InverseGapWeighting, _compiled_draw, _numpy_draw, draw_slots
from bandit.kernels import _pairwise_sum


@pytest.mark.parametrize("seed", range(6))
def test_the_compiled_draw_is_the_numpy_draw(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(300):
        n = int(rng.choice([1, 2, 3, 7, 8, 9, 67, 128, 129, 300, 1000, 5000]))
        scores = rng.normal(size=n) * rng.choice([1e-3, 1.0, 50.0])
        if rng.random() < 0.3:  # ties at the top and elsewhere
            scores = np.round(scores, 1)
        if rng.random() < 0.1:
            scores[rng.integers(n)] = np.nan  # not all finite: every arm tied
        exploration = InverseGapWeighting(gamma_scale=float(rng.choice([0.0, 1.0, 10.0])), gamma_exponent=0.5)
        t: int | np.ndarray = int(rng.integers(0, 10_000))
        if rng.random() < 0.5:
            t = rng.integers(0, 500, size=n)
        k = int(rng.integers(0, 6))
        scale = float(rng.choice([1.0, 2.5, 0.0]))
        a, b = np.random.default_rng(seed + 100), np.random.default_rng(seed + 100)
        first_c, slots_c = _compiled_draw(exploration, scores, k, a, scale, t)
        first_n, slots_n = _numpy_draw(exploration, scores, k, b, scale, t)
        assert np.array_equal(first_c, first_n), (n, k)
        assert slots_c == slots_n, (n, k)
        assert a.random() == b.random()  # as many draws taken from the generator


def test_draw_slots_uses_the_compiled_draw_for_inverse_gap_weighting() -> None:
    scores = np.array([0.5, 0.1, 0.5, 0.3])
    first, slots = draw_slots(InverseGapWeighting(10.0, 0.5), scores, 3, np.random.default_rng(1), 1.0, 4)
    assert first.sum() == pytest.approx(1.0)
    assert len({i for i, _ in slots}) == 3 and all(0 < p <= 1 for _, p in slots)
    assert first[0] == first[2] > first[3] > first[1]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 255, 256, 257, 1000, 1025, 9000])
def test_the_compiled_sum_adds_in_numpys_order(n: int) -> None:
    values = np.random.default_rng(n).random(n) ** 3 * 1e-2
    assert _pairwise_sum(values, 0, n) == values.sum()
    if n > 1:  # a sum in plain order differs somewhere among these: the order is what is tested
        assert _pairwise_sum(values, 1, n - 1) == values[1:].sum()
