"""Compiled CPU pieces of the sparse step's backward (numba): the decoder-gradient projection in one pass,
and the latent-major order of a sparse pattern by counting sort.

(A single compiled pass for all of the backward's gathers was tried and removed: on two threads it was no
faster than torch's embedding-bag kernels, see issue 6's notes.)
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .cpu_topk import FASTMATH, compiled_threads


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _project_rows(grad, W, n_parts):  # pragma: no cover - compiled
    m, d = W.shape
    per_part = (m + n_parts - 1) // n_parts
    for part in numba.prange(n_parts):
        for j in range(part * per_part, min(m, (part + 1) * per_part)):
            g, w = grad[j], W[j]
            dot = np.float32(0.0)
            for c in range(d):
                dot += g[c] * w[c]
            for c in range(d):
                g[c] -= dot * w[c]


def project_out_rows_(grad: torch.Tensor, W: torch.Tensor) -> None:
    """In place, ``grad[j] -= (grad[j] · W[j]) W[j]`` for every row: one pass that keeps each row in cache
    (torch needs a dot pass and an update pass). Contiguous float32 (m, d) tensors on the CPU."""
    _project_rows(grad.numpy(), W.detach().numpy(), compiled_threads())


@numba.njit(cache=True, nogil=True)
def _counting_sort(flat, m, order, offsets):  # pragma: no cover - compiled
    offsets[:] = 0
    for latent in flat:
        offsets[latent + 1] += 1
    for j in range(m):
        offsets[j + 1] += offsets[j]
    cursor = offsets[:-1].copy()
    for slot in range(flat.shape[0]):
        latent = flat[slot]
        order[cursor[latent]] = slot
        cursor[latent] += 1


def latent_order(flat: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, offsets) of a flat int64 pattern on the CPU: ``flat[order]`` sorted by latent, stably, and latent
    j's slots at ``order[offsets[j]:offsets[j+1]]``; a counting sort (two passes over the n·k slots)."""
    order = torch.empty_like(flat)
    offsets = torch.empty(n_latents + 1, dtype=torch.long)
    _counting_sort(flat.numpy(), n_latents, order.numpy(), offsets.numpy())
    return order, offsets


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _decode_and_fvu_grads(values, indices, W, b_dec, target, scale, n_parts, x_hat, grad_out, grad_values,
                          squared_errors):  # pragma: no cover - compiled
    n, k = indices.shape
    d = W.shape[1]
    per_part = (n + n_parts - 1) // n_parts
    for part in numba.prange(n_parts):
        total = 0.0  # float64: a sum over the whole batch
        for i in range(part * per_part, min(n, (part + 1) * per_part)):
            row, grad_row, target_row = x_hat[i], grad_out[i], target[i]
            for c in range(d):
                row[c] = b_dec[c]
            for j in range(k):
                v, w = values[i, j], W[indices[i, j]]
                for c in range(d):
                    row[c] += v * w[c]
            row_total = np.float32(0.0)
            for c in range(d):
                error = row[c] - target_row[c]
                row_total += error * error
                grad_row[c] = scale * error
            total += row_total
            for j in range(k):  # the k decoder rows were just read: still in this core's cache
                w = W[indices[i, j]]
                dot = np.float32(0.0)
                for c in range(d):
                    dot += grad_row[c] * w[c]
                grad_values[i, j] = dot
        squared_errors[part] = total


def decode_and_fvu_grads(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                         target: torch.Tensor, variance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         torch.Tensor]:
    """One pass over the rows: x_hat = Σ_j values[i,j]·W_dec[indices[i,j]] + b_dec, the FVU Σ‖x_hat − target‖² /
    variance, and its gradients with respect to x_hat (n, d) and to the values (n, k), each row's k decoder
    rows read once for both (torch needs a second gather pass for the values' gradient).
    Contiguous float32 CPU tensors; returns (fvu (0-d), x_hat, grad_x_hat, grad_values)."""
    n, k = indices.shape
    x_hat = torch.empty(n, W_dec.shape[1], dtype=torch.float32)
    grad_out = torch.empty_like(x_hat)
    grad_values = torch.empty(n, k, dtype=torch.float32)
    threads = compiled_threads()
    squared_errors = np.zeros(threads, np.float64)
    _decode_and_fvu_grads(values.numpy(), indices.numpy(), W_dec.detach().numpy(), b_dec.detach().numpy(),
                          target.numpy(), np.float32(2.0 / variance), threads, x_hat.numpy(), grad_out.numpy(),
                          grad_values.numpy(), squared_errors)
    fvu = torch.tensor(squared_errors.sum() / variance, dtype=torch.float32)
    return fvu, x_hat, grad_out, grad_values
