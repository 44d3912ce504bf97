"""Small compiled passes of the sparse step (numba): the decoder gradient's projection onto its rows' tangent
spaces, and a sparse pattern's latent-major order by counting sort."""

from __future__ import annotations

import numba
import numpy as np
import torch

from .backend import compiled_for
from .runtime import FASTMATH, compiled_threads


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


@torch.no_grad()
def project_out_rows_(grad: torch.Tensor, W: torch.Tensor) -> None:
    """In place, ``grad[j] -= (grad[j] · W[j]) W[j]`` for every row of the (m, d) ``grad``: for contiguous float32
    CPU tensors one compiled pass that keeps each row in cache (torch needs a dot pass and an update pass)."""
    if compiled_for(grad, W) and grad.is_contiguous() and W.is_contiguous():
        _project_rows(grad.numpy(), W.detach().numpy(), compiled_threads())
    else:
        grad.addcmul_(torch.linalg.vecdot(grad, W)[:, None], W, value=-1)  # in place: no (m, d) temporaries


@numba.njit(cache=True, nogil=True)
def _counting_sort(flat, m, k, order, rows, offsets):  # pragma: no cover - compiled
    offsets[:] = 0
    for latent in flat:
        offsets[latent + 1] += 1
    for j in range(m):
        offsets[j + 1] += offsets[j]
    cursor = offsets[:-1].copy()
    for slot in range(flat.shape[0]):
        latent = flat[slot]
        order[cursor[latent]] = slot
        rows[cursor[latent]] = slot // k
        cursor[latent] += 1


def latent_order(flat: torch.Tensor, n_latents: int, k: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, rows, offsets) of a flat int64 pattern with ``k`` slots per row, on the CPU: ``flat[order]`` sorted
    by latent, stably, ``rows = order // k`` (the row of each slot in that order), and latent j's slots at
    ``order[offsets[j]:offsets[j+1]]``; a counting sort (two passes over the n·k slots)."""
    order, rows = torch.empty_like(flat), torch.empty_like(flat)
    offsets = torch.empty(n_latents + 1, dtype=torch.long)
    _counting_sort(flat.numpy(), n_latents, k, order.numpy(), rows.numpy(), offsets.numpy())
    return order, rows, offsets
