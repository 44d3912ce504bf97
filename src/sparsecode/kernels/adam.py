"""Adam's step for a weight whose rows are kept at unit norm, in one compiled pass (numba): the gradient projected
onto each row's tangent space, the Adam update, the row rescaled. The weight, its gradient and the two moment
estimates are each read once (torch needs a pass for each of the three)."""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch

from .runtime import CHUNK_ROWS, FASTMATH, claim, compiled_threads

MIN_NORM = 1e-8
"""A row with a smaller norm is divided by this instead when rescaled (it stays near zero)."""


class AdamScalars(NamedTuple):
    """The step's float32 constants, as the update uses them."""

    one_minus_beta1: np.float32
    beta2: np.float32
    one_minus_beta2: np.float32
    step_size: np.float32
    """lr / (1 − β1^t)."""
    bias_correction2_sqrt: np.float32
    """√(1 − β2^t)."""
    eps: np.float32


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _adam_unit_rows(W, G, exp_avg, exp_avg_sq, s, n_parts, counter):  # pragma: no cover - compiled
    m, d = W.shape
    for _thread in numba.prange(n_parts):
        start = claim(counter, CHUNK_ROWS)
        while start < m:
            for j in range(start, min(m, start + CHUNK_ROWS)):
                w, g, mean, square = W[j], G[j], exp_avg[j], exp_avg_sq[j]
                along = np.float32(0.0)
                for c in range(d):
                    along += g[c] * w[c]
                norm_sq = np.float32(0.0)
                for c in range(d):
                    grad = g[c] - along * w[c]  # the gradient without its component along the (unit) row
                    mean[c] += s.one_minus_beta1 * (grad - mean[c])
                    square[c] = s.beta2 * square[c] + s.one_minus_beta2 * grad * grad
                    w[c] -= s.step_size * mean[c] / (np.sqrt(square[c]) / s.bias_correction2_sqrt + s.eps)
                    norm_sq += w[c] * w[c]
                scale = np.float32(1.0) / max(np.sqrt(norm_sq), np.float32(MIN_NORM))
                for c in range(d):
                    w[c] *= scale
            start = claim(counter, CHUNK_ROWS)


def adam_unit_rows_(
    weight: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    step: float,
) -> None:
    """In place: Adam's update (step number ``step``, counted from 1) of ``weight`` (m, d) with ``grad``'s
    component along each row removed, then each row rescaled to unit norm; ``exp_avg``/``exp_avg_sq`` are
    updated as torch's Adam does. All contiguous float32 CPU tensors (``optim.Adam`` checks)."""
    beta1, beta2 = betas
    scalars = AdamScalars(
        np.float32(1 - beta1),
        np.float32(beta2),
        np.float32(1 - beta2),
        np.float32(lr / (1 - beta1**step)),
        np.float32(np.sqrt(1 - beta2**step)),
        np.float32(eps),
    )
    _adam_unit_rows(
        weight.detach().numpy(),
        grad.numpy(),
        exp_avg.numpy(),
        exp_avg_sq.numpy(),
        scalars,
        compiled_threads(),
        np.zeros(1, np.int64),
    )
