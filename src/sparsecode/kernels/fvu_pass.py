"""The reconstruction's FVU with its gradients in one compiled pass over the rows (numba), and the batch variance
(the FVU's denominator) in one pass.

(A single compiled pass for all of the backward's gathers was tried and removed: on two threads it was no
faster than torch's embedding-bag kernels, see issue 6's notes.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
import torch

from .runtime import CHUNK_ROWS, FASTMATH, claim, compiled_threads


class RowsOut(NamedTuple):
    """Where the FVU pass writes, per row (numpy views)."""

    x_hat: np.ndarray
    """(n, d) float32."""
    error: np.ndarray
    """(n, d) float32: x_hat − target."""
    grad_values: np.ndarray
    """(n, k) float32: error · W_dec[indices], unscaled."""
    squared_errors: np.ndarray
    """(n,) float64: ‖error‖²."""


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _decode_and_fvu_grads(values, indices, W, b_dec, target, n_parts, out, counter):  # pragma: no cover - compiled
    x_hat, error, grad_values, squared_errors = out.x_hat, out.error, out.grad_values, out.squared_errors
    n, k = indices.shape
    d = W.shape[1]
    for _thread in numba.prange(n_parts):
        start = claim(counter, CHUNK_ROWS)
        while start < n:
            for i in range(start, min(n, start + CHUNK_ROWS)):
                row, error_row, target_row = x_hat[i], error[i], target[i]
                for c in range(d):
                    row[c] = b_dec[c]
                for j in range(k):
                    v, w = values[i, j], W[indices[i, j]]
                    for c in range(d):
                        row[c] += v * w[c]
                row_total = np.float32(0.0)
                for c in range(d):
                    e = row[c] - target_row[c]
                    row_total += e * e
                    error_row[c] = e
                squared_errors[i] = row_total  # per row: the sum below does not depend on who took which rows
                for j in range(k):  # the k decoder rows were just read: still in this core's cache
                    w = W[indices[i, j]]
                    dot = np.float32(0.0)
                    for c in range(d):
                        dot += error_row[c] * w[c]
                    grad_values[i, j] = dot
            start = claim(counter, CHUNK_ROWS)


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _shifted_moments(x, shift, n_parts, sums, squares):  # pragma: no cover - compiled
    n, d = x.shape
    per_part = (n + n_parts - 1) // n_parts
    block_sums = np.empty((n_parts, d), np.float32)
    block_squares = np.empty((n_parts, d), np.float32)
    for part in numba.prange(n_parts):
        stop = min(n, (part + 1) * per_part)
        for start in range(part * per_part, stop, MOMENT_ROWS):
            block_sum, block_square = block_sums[part], block_squares[part]
            block_sum[:] = 0
            block_square[:] = 0
            for i in range(start, min(stop, start + MOMENT_ROWS)):
                row = x[i]
                for c in range(d):
                    centred = row[c] - shift[c]
                    block_sum[c] += centred
                    block_square[c] += centred * centred
            for c in range(d):
                sums[part, c] += block_sum[c]
                squares[part, c] += block_square[c]


MOMENT_ROWS = 64
"""Rows summed in float32 (vectorised) before adding into the float64 column sums."""


def batch_variance(x: torch.Tensor) -> float:
    """Σ‖x_i − mean‖² of a contiguous float32 (n, d) CPU tensor, in one parallel pass without a centred copy:
    Σ‖x − s‖² − ‖Σ(x − s)‖²/n with the shift s = x[0] (a row near the mean, so the difference keeps its
    digits)."""
    threads = compiled_threads()
    sums, squares = np.zeros((threads, x.shape[1])), np.zeros((threads, x.shape[1]))
    _shifted_moments(x.numpy(), x[0].numpy(), threads, sums, squares)
    return float(squares.sum() - np.square(sums.sum(0)).sum() / x.shape[0])


@dataclass
class FVUPass:
    """What ``decode_and_fvu_grads`` computes in its one pass over the rows."""

    fvu: torch.Tensor
    """0-d: Σ‖x_hat − target‖² / variance."""
    x_hat: torch.Tensor
    """(n, d) the reconstruction Σ_j values[i,j]·W_dec[indices[i,j]] + b_dec."""
    error: torch.Tensor
    """(n, d) x_hat − target; dFVU/dx_hat = ``scale`` · error."""
    grad_values: torch.Tensor
    """(n, k) dFVU/dvalues."""
    scale: float
    """2 / variance."""
    variance: float
    """The FVU's denominator: as given, or the target batch's total variance Σ‖t − mean‖²."""


def decode_and_fvu_grads(
    values: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    target: torch.Tensor,
    variance: float | None = None,
) -> FVUPass:
    """One pass over the rows: the reconstruction, the FVU and its gradients with respect to the values and
    x_hat, each row's k decoder rows read once for the decode and the values' gradient (torch needs a second
    gather pass). ``variance`` None: the target batch's total variance (``batch_variance``).
    Contiguous float32 CPU tensors."""
    n, k = indices.shape
    d = W_dec.shape[1]
    x_hat = torch.empty(n, d, dtype=torch.float32)
    error = torch.empty_like(x_hat)
    grad_values = torch.empty(n, k, dtype=torch.float32)
    squared_errors = np.empty(n)
    _decode_and_fvu_grads(
        values.numpy(),
        indices.numpy(),
        W_dec.detach().numpy(),
        b_dec.detach().numpy(),
        target.numpy(),
        compiled_threads(),
        RowsOut(x_hat.numpy(), error.numpy(), grad_values.numpy(), squared_errors),
        np.zeros(1, np.int64),
    )
    if variance is None:
        variance = batch_variance(target)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant batch: inf or nan, as on the torch path
        scale = np.float64(2.0) / variance
        fvu = squared_errors.sum() / np.float64(variance)
    grad_values *= scale
    return FVUPass(
        fvu=torch.tensor(fvu, dtype=torch.float32),
        x_hat=x_hat,
        error=error,
        grad_values=grad_values,
        scale=scale,
        variance=variance,
    )
