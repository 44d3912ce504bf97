"""The encoder product's exact top-k from a bfloat16 product, on CPUs with bfloat16 matrix units (AMX).

A TopK step needs only the k largest pre-activations of each row, and their float32 values. On AMX a
bfloat16 product runs several times faster than float32 (``python bench/screen.py`` measures both), but its
inputs carry 8 significant bits. This module turns it into an exact selection:

1. Split both factors into a bfloat16 head and a float32 tail: ``xc = xh + xl``, ``Wᵀ = Wh + Wl`` (each tail
   exact in float32). ``q = xh · Wh`` is the bfloat16 product (float32 accumulation, rounded to bfloat16).
2. The exact ``p = xc · W + b_enc`` differs from ``q + b_enc`` by at most, per element,
   ``e = ‖xh_i‖·‖Wl_j‖ + ‖xl_i‖·(‖Wh_j‖ + ‖Wl_j‖) + u·|q_ij|`` (Cauchy–Schwarz on the tail terms; u covers
   the rounding of q to bfloat16), plus slack for every float32 sum involved, so p lies in [q̂ − e, q̂ + e]
   with q̂ = q + b_enc.
3. Per row, one pass takes each strided block's largest ``z = q + b_enc``. As ``e`` is at most ``u·|z|`` plus the
   block's largest column terms, and ``z ∓ u·|z|`` grows with z, that gives each block a lower end for its
   largest exact value and an upper end for every element's. A bound T that the lower ends of k blocks reach
   is ≤ the row's k-th largest exact value (as in ``topk_rows``); in the blocks whose upper end reaches T, every
   element whose own upper end ``q̂ + e`` reaches T is a candidate, and no other element can be in the top k
   (``bench/screen.py`` reports how many candidates a row has).
4. Each candidate's float32 pre-activation is computed exactly (a dot product with its encoder row) and the
   top k of those are the result — the same selection and values a float32 product would give, up to
   float32 rounding (a different summation order).

Compiled with numba, cached on disk; rows run in parallel as in ``topk_rows``.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch

from .runtime import CHUNK_ROWS, FASTMATH, claim, compiled_threads
from .select import bound_reached_by, heap_top_k

UNIT_ROUNDOFF = 2.0**-8 * 1.01 + 2.0**-20
"""Bound on |q_out − q| / |q_out| for the bfloat16-rounded product q_out (2⁻⁸), with slack for the float32
arithmetic on it (adding b_enc, forming q̂ ± e)."""

BIAS_ROUNDOFF = 2.0**-20
"""Slack per unit of |b_enc| for the float32 additions of b_enc (screen and rescoring)."""


SLACK_BLOCKS = 2
"""The bound T is one that between k and k + this many blocks' lower ends reach: the closer to the k-th, the fewer
candidates to rescore (a few more bisection steps cost far less)."""

RANK_LIMIT = 128
"""Up to this many candidates the top k are picked by rank (count² branch-free compares); beyond, a k-heap."""


def float32_sum_slack(d: int) -> float:
    """Relative bound (as a multiple of ‖a‖·‖b‖) on the rounding of a float32 dot product of length d,
    counted twice: the product's accumulation and the exact rescoring's."""
    return 2 * (d + 2) * 2.0**-24


def screen_supported() -> bool:
    """Whether this CPU has bfloat16 matrix units (where the bfloat16 product pays)."""
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(is_amx and is_amx())
    except RuntimeError:
        return False


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _split_rows(rows, bits, head, head_norm, tail_norm, n_parts, counter):  # pragma: no cover - compiled
    """Per row: the bfloat16 head (round to nearest even, as raw bits) and the norms of head and tail."""
    n, d = rows.shape
    for _thread in numba.prange(n_parts):
        widened = np.empty(d, np.uint32)
        head_f32 = widened.view(np.float32)
        start = claim(counter, CHUNK_ROWS)
        while start < n:
            for i in range(start, min(n, start + CHUNK_ROWS)):
                row, row_bits, out = rows[i], bits[i], head[i]
                for c in range(d):
                    b = row_bits[c]
                    rounded = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
                    out[c] = np.uint16(rounded)
                    widened[c] = rounded << np.uint32(16)
                hh, tt = 0.0, 0.0  # float64: squares of tiny tails would underflow in float32
                for c in range(d):
                    h = head_f32[c]
                    t = np.float64(row[c] - h)
                    hh += np.float64(h) * h
                    tt += t * t
                # rounded up to float32, so the bounds built on them stay bounds
                head_norm[i], tail_norm[i] = np.sqrt(hh) * (1 + 2.0**-22), np.sqrt(tt) * (1 + 2.0**-22)
            start = claim(counter, CHUNK_ROWS)


class ScreenColumns(NamedTuple):
    """What the screen knows of the encoder's columns (numpy views, shared by all rows of a call)."""

    b_enc: np.ndarray
    """(m,) float32 encoder bias."""
    columns: np.ndarray
    """(n_blocks, size, 3) float32: per column, by block, its upper end's terms (b_enc + slack, the ‖Wl_j‖ and ‖w_j‖
    bounds)."""
    block_terms: np.ndarray
    """(n_blocks, 3) float32: per block, the largest of u·|b_enc| + slack and of those two bounds."""
    w_rows: np.ndarray
    """(m, d) float32: the encoder's rows, for the exact rescoring."""
    unit: np.float32
    """``UNIT_ROUNDOFF``: the bfloat16 product's relative rounding, with slack."""


class ScreenRows(NamedTuple):
    """One block of rows of the input (numpy views)."""

    q_bits: np.ndarray
    """(n, m) uint16: the bfloat16 product's raw bits."""
    x_head_norm: np.ndarray
    """(n,) float32: bounds on the norms of the rows' bfloat16 heads."""
    x_tail_norm: np.ndarray
    """(n,) float32: ... and of their float32 tails (with slack)."""
    xc: np.ndarray
    """(n, d) float32: the centred rows, for the exact rescoring."""


class RowsTopK(NamedTuple):
    """Where the screen writes each row's result (numpy views)."""

    values: np.ndarray
    """(n, k) float32."""
    indices: np.ndarray
    """(n, k) int64."""
    counts: np.ndarray
    """(n,) int64: candidates rescored."""


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _screened_rows(rows, cols, k, size, n_parts, out, counter):  # pragma: no cover - compiled
    """The exact top ``k`` of each row of ``rows`` (``ScreenRows``) into ``out`` (``RowsTopK``), with the columns'
    bounds ``cols`` (``ScreenColumns``) and ``size`` elements per strided block."""
    q_bits, x_head_norm, x_tail_norm, xc = rows.q_bits, rows.x_head_norm, rows.x_tail_norm, rows.xc
    b_enc, columns, block_terms, w_rows, unit = cols.b_enc, cols.columns, cols.block_terms, cols.w_rows, cols.unit
    out_values, out_indices, out_counts = out.values, out.indices, out.counts
    n, m = q_bits.shape
    d = xc.shape[1]
    n_blocks = m // size
    for _thread in numba.prange(n_parts):
        widened = np.empty(m, np.uint32)
        q = widened.view(np.float32)
        z_max = np.empty(n_blocks, np.float32)
        block_error = np.empty(n_blocks, np.float32)
        block_low = np.empty(n_blocks, np.float32)
        scratch_low = np.empty(n_blocks, np.float32)
        scratch_high = np.empty(n_blocks, np.float32)
        chosen = np.empty(n_blocks, np.int64)
        cand_values = np.empty(m, np.float32)
        cand_indices = np.empty(m, np.int64)
        start = claim(counter, CHUNK_ROWS)
        while start < n:
            guess = -np.inf  # afresh per chunk: results must not depend on which thread took the rows
            for i in range(start, min(n, start + CHUNK_ROWS)):
                row_bits, x_row, values, indices = q_bits[i], xc[i], out_values[i], out_indices[i]
                a, c = x_head_norm[i], x_tail_norm[i]
                for j in range(m):
                    widened[j] = np.uint32(row_bits[j]) << np.uint32(16)
                # 1. per strided block (column j in block j mod n_blocks) the largest z = q + b_enc — the only pass
                # over every element, so it does nothing else. Every element's error e is at most u·|z| + the
                # block's error (u·|b_enc| + slack + a·‖Wl‖ + c·‖w‖, each the block's largest), and z ∓ u·|z| grows
                # with z, so [z_max − u·|z_max| − block error, z_max + u·|z_max| + block error] brackets the block's
                # largest exact value from below and every element's from above
                for b in range(n_blocks):
                    z_max[b] = q[b] + b_enc[b]
                for r in range(1, size):
                    part, bias_part = q[r * n_blocks : (r + 1) * n_blocks], b_enc[r * n_blocks : (r + 1) * n_blocks]
                    for b in range(n_blocks):
                        z_max[b] = max(z_max[b], part[b] + bias_part[b])
                for b in range(n_blocks):
                    block_error[b] = block_terms[b, 0] + a * block_terms[b, 1] + c * block_terms[b, 2]
                    block_low[b] = z_max[b] - unit * abs(z_max[b]) - block_error[b]
                # 2. a bound that k to k + SLACK_BLOCKS of those lower ends reach: as they lie in distinct blocks,
                # it is ≤ the row's k-th largest exact value
                guess = bound_reached_by(block_low, k, SLACK_BLOCKS, guess, scratch_low, scratch_high)
                # 3. candidates: in the blocks whose upper end reaches the bound, every element whose own upper end
                # q̂ + e does (the columns' terms packed by block: a few cache lines per block, not one per element)
                n_chosen = 0
                for b in range(n_blocks):
                    chosen[n_chosen] = b
                    n_chosen += z_max[b] + unit * abs(z_max[b]) + block_error[b] >= guess
                count = 0
                for t in range(n_chosen):
                    b = chosen[t]
                    terms = columns[b]
                    for r in range(size):
                        j = r * n_blocks + b
                        cand_indices[count] = j
                        count += q[j] + unit * abs(q[j]) + terms[r, 0] + a * terms[r, 1] + c * terms[r, 2] >= guess
                if count < k:  # only with NaN or inf in the inputs: score every column
                    for j in range(m):
                        cand_indices[j] = j
                    count = m
                out_counts[i] = count
                # 4. each candidate's exact float32 pre-activation, four at a time (their encoder rows come from
                # far caches: four loads in flight instead of one)
                in_fours = count - count % 4
                for t in range(0, in_fours, 4):
                    w0, w1, w2, w3 = (
                        w_rows[cand_indices[t]],
                        w_rows[cand_indices[t + 1]],
                        w_rows[cand_indices[t + 2]],
                        w_rows[cand_indices[t + 3]],
                    )
                    acc0 = acc1 = acc2 = acc3 = np.float32(0.0)
                    for l in range(d):
                        acc0 += x_row[l] * w0[l]
                        acc1 += x_row[l] * w1[l]
                        acc2 += x_row[l] * w2[l]
                        acc3 += x_row[l] * w3[l]
                    cand_values[t] = acc0 + b_enc[cand_indices[t]]
                    cand_values[t + 1] = acc1 + b_enc[cand_indices[t + 1]]
                    cand_values[t + 2] = acc2 + b_enc[cand_indices[t + 2]]
                    cand_values[t + 3] = acc3 + b_enc[cand_indices[t + 3]]
                for t in range(in_fours, count):
                    w = w_rows[cand_indices[t]]
                    acc = np.float32(0.0)
                    for l in range(d):
                        acc += x_row[l] * w[l]
                    cand_values[t] = acc + b_enc[cand_indices[t]]
                # 5. the k largest: by rank (ties to the earlier candidate), branch-free, when few; else a k-heap
                if count <= RANK_LIMIT:
                    kept = 0
                    for t in range(count):
                        v, rank = cand_values[t], np.int32(0)
                        for u in range(count):
                            w_value = cand_values[u]
                            rank += np.int32(1) if (w_value > v) or (w_value == v and u < t) else np.int32(0)
                        if rank < k and kept < k:  # (kept < k: a NaN ranks first yet counts in no other rank)
                            values[kept], indices[kept] = v, cand_indices[t]
                            kept += 1
                    continue
                heap_top_k(cand_values, cand_indices, count, k, values, indices)
            start = claim(counter, CHUNK_ROWS)


def split_bfloat16(rows: torch.Tensor, head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``rows`` (r, d) float32, rounded to bfloat16, into ``head`` (r, d) bfloat16; return the norms of
    head and of the float32 tail ``rows − head``, each (r,)."""
    rows = rows.detach().contiguous()
    head_norm = torch.empty(rows.shape[0], dtype=torch.float32)
    tail_norm = torch.empty(rows.shape[0], dtype=torch.float32)
    array = rows.numpy()
    _split_rows(
        array,
        array.view(np.uint32),
        head.view(torch.int16).numpy().view(np.uint16),
        head_norm.numpy(),
        tail_norm.numpy(),
        compiled_threads(),
        np.zeros(1, np.int64),
    )
    return head_norm, tail_norm


class EncoderScreen:
    """Reused buffers for ``screened_topk``: the bfloat16 heads of the encoder and of x, and the product; and
    ``candidates``, each row's number of rescored candidates in the last call (for diagnostics)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.candidates = torch.empty(0, dtype=torch.int64)

    def buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A bfloat16 scratch tensor of ``shape``, allocated once (fresh pages would fault in every step)."""
        held = self._buffers.get(name)
        if held is None or held.numel() < int(np.prod(shape)):
            held = self._buffers[name] = torch.empty(int(np.prod(shape)), dtype=torch.bfloat16)
        return held[: int(np.prod(shape))].view(shape)


def _by_block(column: torch.Tensor, size: int) -> torch.Tensor:
    """(n_blocks, size) view of an (m,) per-column tensor: column j at [j mod n_blocks, j // n_blocks]."""
    return column.view(size, -1).T


def screened_topk(
    xc: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, size: int, rows: int, screen: EncoderScreen
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``xc @ W_enc + b_enc`` per row: values (n, k) float32, not ReLU'd, and int64 indices (n, k), in
    no particular order; the same as float32's ``(xc @ W_enc + b_enc).topk(k)`` up to float32 rounding and ties.

    ``xc`` (n, d) float32 (the centred input, x − b_dec); ``W_enc`` (d, m) float32, latent-major (its transpose
    contiguous); ``size``: elements per strided block (``topk.block_size``); ``rows``: rows per bfloat16
    product (bounds the scratch).
    """
    n, d = xc.shape
    m = W_enc.shape[1]
    # the kernel indexes without bounds checks: a mismatch here would read past the arrays
    if W_enc.shape[0] != d or b_enc.shape != (m,) or m % size:
        raise ValueError(
            f"screened_topk: xc {tuple(xc.shape)}, W_enc {tuple(W_enc.shape)}, b_enc "
            f"{tuple(b_enc.shape)} and block size {size} do not fit together"
        )
    w_rows = W_enc.detach().T  # (m, d), contiguous
    # e_ij = ‖xh_i‖·‖Wl_j‖ + ‖xl_i‖·‖w_j‖ + u·|q_ij| + the float32 sums' slack (norms, the product's accumulation,
    # the exact rescoring: each within ``slack``·‖xc_i‖·‖w_j‖), every norm rounded up by ``fudge``
    slack = float32_sum_slack(d)
    fudge = 1 + 2 * slack
    w_head = screen.buffer("w_head", (m, d))
    w_head_norm, w_tail_norm = split_bfloat16(w_rows, w_head)
    w_norm = (w_head_norm + w_tail_norm) * fudge  # (m,) ≥ ‖w_j‖
    w_tail_bound = w_tail_norm * fudge + slack * w_norm  # (m,)
    x_head = screen.buffer("x_head", (n, d))
    x_head_norm, x_tail_norm = split_bfloat16(xc, x_head)
    x_head_norm = x_head_norm * fudge  # (n,)
    x_tail_norm = x_tail_norm * fudge + slack * x_head_norm  # (n,)
    b_enc = b_enc.detach().contiguous()
    column_slack = b_enc.abs() * BIAS_ROUNDOFF  # (m,)
    columns = torch.stack(
        [_by_block(b_enc + column_slack, size), _by_block(w_tail_bound, size), _by_block(w_norm, size)], 2
    ).contiguous()  # (n_blocks, size, 3)
    # (u·|b_enc| + slack) rounded up: the block bound counts it apart from z = q + b_enc
    bias_error = (UNIT_ROUNDOFF * b_enc.abs() + column_slack) * (1 + BIAS_ROUNDOFF)  # (m,)
    block_terms = torch.stack(
        [_by_block(bias_error, size).amax(1), _by_block(w_tail_bound, size).amax(1), _by_block(w_norm, size).amax(1)], 1
    ).contiguous()  # (n_blocks, 3)
    values = torch.empty(n, k, dtype=torch.float32)
    indices = torch.empty(n, k, dtype=torch.long)
    screen.candidates = torch.empty(n, dtype=torch.int64)
    xc = xc.detach().contiguous()
    cols = ScreenColumns(b_enc.numpy(), columns.numpy(), block_terms.numpy(), w_rows.numpy(), np.float32(UNIT_ROUNDOFF))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        q = screen.buffer("product", (stop - start, m))
        torch.mm(x_head[start:stop], w_head.T, out=q)  # (rows, m) bfloat16, float32 accumulation
        rows_in = ScreenRows(
            q.view(torch.int16).numpy().view(np.uint16),
            x_head_norm[start:stop].numpy(),
            x_tail_norm[start:stop].numpy(),
            xc[start:stop].numpy(),
        )
        out = RowsTopK(values[start:stop].numpy(), indices[start:stop].numpy(), screen.candidates[start:stop].numpy())
        _screened_rows(rows_in, cols, k, size, compiled_threads(), out, np.zeros(1, np.int64))
    return values, indices
