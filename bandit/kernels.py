"""Compiled kernels (numba, from wheels): inverse gap weighting's probabilities and the draw of
every slot with its propensity, in one pass over the arms.

In numpy the draw of ``k`` slots over ``n`` arms is some thirty array operations of a few
microseconds each whatever ``n`` (about 100 µs for 3 slots over 67 arms, measured): numpy's cost
per call, not the arithmetic. Compiled, the same pass costs a few microseconds, and it releases
the GIL while it runs.

The kernels compute what ``bandit.exploration``'s numpy code computes, operation for operation,
so that the propensities logged are the numbers the numpy code gives (``tests/bandit/
test_kernels.py`` holds them equal, bit for bit): the same divisions and products in the same
order, and sums in numpy's own pairwise order (``_pairwise_sum``), since a float sum depends on
its order.

Compiled on first import with explicit signatures, and cached beside this file (numba's cache):
later processes load the machine code instead of compiling it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["igw_draw"]

#: numpy's pairwise summation block (PW_BLOCKSIZE in numpy/_core/src/umath/loops_utils.h.src)
_BLOCK = 128


@numba.njit("float64(float64[::1], int64, int64)", cache=True, nogil=True, error_model="numpy")
def _pairwise_sum(a: np.ndarray, start: int, n: int) -> float:  # pragma: no cover - compiled
    """The sum of ``a[start:start + n]`` in numpy's order for float64 (``np.sum``): eight
    running sums over blocks of up to 128 numbers, halves of longer runs summed apart."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[start + i]
        return res
    if n <= _BLOCK:
        r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
        r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
        i = 8
        end = n - (n % 8)
        while i < end:
            j = start + i
            r0 += a[j]
            r1 += a[j + 1]
            r2 += a[j + 2]
            r3 += a[j + 3]
            r4 += a[j + 4]
            r5 += a[j + 5]
            r6 += a[j + 6]
            r7 += a[j + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[start + i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_sum(a, start, half) + _pairwise_sum(a, start + half, n - half)


@numba.njit("void(float64[::1], float64[::1], boolean[::1], int64, float64[::1])", cache=True, nogil=True, error_model="numpy")
def _igw(scores: np.ndarray, gammas: np.ndarray, alive: np.ndarray, count: int, p: np.ndarray) -> None:  # pragma: no cover
    """Inverse gap weighting over the ``alive`` arms into ``p`` (0 for the others): each gets
    1 / (count + gamma * gap), the best (gap <= 1e-12) share the rest equally."""
    n = scores.shape[0]
    best_score = -np.inf
    for i in range(n):
        if alive[i] and scores[i] > best_score:
            best_score = scores[i]
    tied = 0
    for i in range(n):
        if not alive[i]:
            p[i] = 0.0
            continue
        gap = best_score - scores[i]
        if gap <= 1e-12:
            p[i] = 0.0
            tied += 1
        else:
            p[i] = 1.0 / (count + gammas[i] * gap)
    rest = (1.0 - _pairwise_sum(p, 0, n)) / tied
    for i in range(n):
        if alive[i] and best_score - scores[i] <= 1e-12:
            p[i] = rest


@numba.njit(
    "int64(float64[::1], float64[::1], int64, float64[::1], float64[::1], int64[::1], float64[::1])",
    cache=True,
    nogil=True,
    error_model="numpy",
)
def igw_draw(
    scores: np.ndarray,
    gammas: np.ndarray,
    k: int,
    uniforms: np.ndarray,
    first: np.ndarray,
    chosen: np.ndarray,
    propensities: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Draws ``min(k, n)`` distinct arms slot by slot under inverse gap weighting.

    ``scores``: (n,) finite, in units of the largest weight; ``gammas``: (n,) each arm's gamma;
    ``uniforms``: one draw in [0, 1) for each slot that has more than one arm left to choose
    from. Writes the first slot's probabilities into ``first`` (n,), and each slot's arm and
    its probability given the earlier slots into ``chosen`` and ``propensities`` (k,); returns
    the number of slots drawn."""
    n = scores.shape[0]
    alive = np.ones(n, dtype=np.bool_)
    _igw(scores, gammas, alive, n, first)
    p = first.copy()
    cumulative = np.empty(n)
    used = 0
    slots = min(k, n)
    for slot in range(slots):
        if slot:
            _igw(scores, gammas, alive, n - slot, p)
        if n - slot == 1:
            i = 0
            while not alive[i]:
                i += 1
        else:
            # inverse CDF: the first arm whose running total passes the draw
            total = 0.0
            for j in range(n):
                total += p[j]
                cumulative[j] = total
            target = uniforms[used] * total
            used += 1
            i = np.searchsorted(cumulative, target, side="right")
            if i > n - 1:
                i = n - 1
            while not alive[i]:  # only at the float edge of the last interval
                i -= 1
        chosen[slot] = i
        propensities[slot] = p[i]
        alive[i] = False
    return slots
