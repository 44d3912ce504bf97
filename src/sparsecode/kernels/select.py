"""Compiled pieces shared by the row-wise top-k kernels (``topk_rows`` and ``screen``): a bound that about k
of a row's block maxima reach, and a k-element min-heap for the rare rows with many candidates."""

from __future__ import annotations

import numba
import numpy as np

from .runtime import FASTMATH


@numba.njit(inline="always")
def sift_down(values, indices, k, pos):  # pragma: no cover - compiled
    v, ix = values[pos], indices[pos]
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and values[child + 1] < values[child]:
            child += 1
        if values[child] >= v:
            break
        values[pos], indices[pos] = values[child], indices[child]
        pos = child
    values[pos], indices[pos] = v, ix


@numba.njit(inline="always", fastmath=FASTMATH)
def count_at_least(values, bound):  # pragma: no cover - compiled
    count = np.int32(0)
    for b in range(values.shape[0]):
        count += np.int32(1) if values[b] >= bound else np.int32(0)  # int32: vectorises
    return count


@numba.njit(inline="always", fastmath=FASTMATH)
def min_max(values, low, high):  # pragma: no cover - compiled
    """(min, max) of ``values`` by pairwise halving in the scratch ``low``/``high`` (each as long as ``values``):
    element-wise steps vectorise, a running min/max does not."""
    n = values.shape[0]
    for b in range(n):
        low[b] = high[b] = values[b]
    while n > 1:
        half = n // 2
        for b in range(half):
            low[b], high[b] = min(low[b], low[b + half]), max(high[b], high[b + half])
        if n % 2:
            low[0], high[0] = min(low[0], low[n - 1]), max(high[0], high[n - 1])
        n = half
    return low[0], high[0]


@numba.njit(inline="always", fastmath=FASTMATH)
def bound_reached_by(values, k, spare, guess, scratch_low, scratch_high):  # pragma: no cover - compiled
    """A bound that between k and k + ``spare`` of ``values`` reach: ``guess`` (e.g. the previous row's) if it
    qualifies, else found by bisection between their min and max (the largest bound tried that k reach)."""
    above = count_at_least(values, guess)
    if k <= above <= k + spare:
        return guess
    low, high = min_max(values, scratch_low, scratch_high)
    guess = max(low, min(high, guess))
    for _ in range(40):
        above = count_at_least(values, guess)
        if above >= k:
            low = guess
            if above <= k + spare:
                break
        else:
            high = guess
        guess = 0.5 * (low + high)
    return low


@numba.njit(inline="always")
def heap_top_k(cand_values, cand_indices, count, k, values, indices):  # pragma: no cover - compiled
    """The k largest of the ``count`` candidates into ``values``/``indices`` by a k-element min-heap."""
    for j in range(k):
        values[j], indices[j] = cand_values[j], cand_indices[j]
    for pos in range(k // 2 - 1, -1, -1):
        sift_down(values, indices, k, pos)
    for j in range(k, count):
        if cand_values[j] > values[0]:
            values[0], indices[0] = cand_values[j], cand_indices[j]
            sift_down(values, indices, k, 0)
