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
