"""The sparse backward of a top-k dictionary in one compiled pass over latents, and the decoder-gradient
projection, for float32 on the CPU (numba).

For winners with pre-activations ``pre`` (n, k) at latents ``idx`` (n, k) the reconstruction is
``x_hat[i] = Σ_j v[i,j] · W_dec[idx[i,j]]`` with ``v = relu(pre) · keep``. Given ``dx = dL/dx_hat`` (n, d_out):

    dL/dv[i,j]   = dx[i] · W_dec[idx[i,j]]                       (the value gradients)
    G[i,j]       = dL/dv[i,j] · keep[i,j] · [pre[i,j] > 0]         (the pre-activation gradients)
    dW_dec[l]    = Σ_{(i,j): idx=l} v[i,j] · dx[i]
    dW_enc[:, l] = Σ_{(i,j): idx=l} G[i,j] · (x[i] − b_dec)       (pre = (x − b_dec) W_enc + b_enc)
    db_enc[l]    = Σ_{(i,j): idx=l} G[i,j]

Computed separately these are three gathers of 1.5 KB rows per winner (W_dec rows for dL/dv, dx rows for
dW_dec, x rows for dW_enc) plus a transposing copy into W_enc's layout. Walking the winners latent by latent
(the CSR order of ``SparsePattern.by_latent``) reads each latent's W_dec row once, and each winner's dx and x
rows once: dL/dv comes from the dx row already loaded for dW_dec, and G from it at once. Latents are taken in
tiles of ``TILE`` so that dW_enc is written in whole cache lines straight into its (d_in, n_latents) layout.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .cpu_topk import FASTMATH, compiled_threads

TILE = 16
"""Latents per tile: 16 float32 columns of dW_enc are one 64-byte cache line."""


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _latent_major_backward(order, offsets, k, values, gate, dx, x, b_dec, W_dec, n_parts,
                           dW_dec, dW_enc, grad_b_enc):  # pragma: no cover - compiled
    m = W_dec.shape[0]
    d_in, d_out = x.shape[1], dx.shape[1]
    n_tiles = (m + TILE - 1) // TILE
    for part in numba.prange(n_parts):
        acc = np.empty((TILE, d_in), np.float32)  # this tile's rows of dW_encᵀ
        for tile in range(part, n_tiles, n_parts):  # interleaved: frequent latents spread over the parts
            first, stop = tile * TILE, min(m, tile * TILE + TILE)
            for latent in range(first, stop):
                enc_row, dec_row, w = acc[latent - first], dW_dec[latent], W_dec[latent]
                enc_row[:] = 0.0
                dec_row[:] = 0.0
                g_sum = np.float32(0.0)
                for e in range(offsets[latent], offsets[latent + 1]):
                    slot = order[e]
                    dx_row = dx[slot // k]
                    v = values[slot]
                    dv = np.float32(0.0)
                    for c in range(d_out):
                        dv += dx_row[c] * w[c]
                        dec_row[c] += v * dx_row[c]
                    g = dv * gate[slot]
                    if g != 0.0:
                        x_row = x[slot // k]
                        for c in range(d_in):
                            enc_row[c] += g * x_row[c]
                        g_sum += g
                for c in range(d_in):
                    enc_row[c] -= g_sum * b_dec[c]
                grad_b_enc[latent] = g_sum
            for c in range(d_in):
                out = dW_enc[c]
                for latent in range(first, stop):
                    out[latent] = acc[latent - first, c]


def latent_major_backward(order: torch.Tensor, offsets: torch.Tensor, k: int, values: torch.Tensor,
                          gate: torch.Tensor, dx: torch.Tensor, x: torch.Tensor, b_dec: torch.Tensor,
                          W_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dW_dec (n_latents, d_out), dW_enc (d_in, n_latents), db_enc (n_latents,)) as in the module docstring.

    ``order``/``offsets``: the pattern's CSR order by latent (``SparsePattern.by_latent``); ``values`` (n·k,)
    the decoded values v; ``gate`` (n·k,) keep · [pre > 0]; ``dx`` (n, d_out), ``x`` (n, d_in), ``b_dec`` (d_in,),
    ``W_dec`` (n_latents, d_out). All contiguous float32 on the CPU.
    """
    m, d_out = W_dec.shape
    d_in = x.shape[1]
    dW_dec = torch.empty(m, d_out)
    dW_enc = torch.empty(d_in, m)
    grad_b_enc = torch.empty(m)
    threads = compiled_threads()
    _latent_major_backward(order.numpy(), offsets.numpy(), k, values.numpy(), gate.numpy(), dx.numpy(), x.numpy(),
                           b_dec.numpy(), W_dec.numpy(), threads, dW_dec.numpy(), dW_enc.numpy(), grad_b_enc.numpy())
    return dW_dec, dW_enc, grad_b_enc


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
