"""Row-wise top-k of ``pre + bias`` on the CPU without writing the sum, compiled with numba.

``torch.topk`` copies every row into (value, index) pairs before selecting (~12 ns per element), and adding
the encoder bias first costs a full extra pass over the (n, n_latents) block. This kernel reads each row
once, in four steps that leave the row in the core's cache after the first:

1. the largest and second-largest value of ``row + bias`` in each strided block (column c is in block
   c mod B) and where the largest sits, vectorised;
2. a bisection for a bound that between k and 1.25·k block maxima reach (starting from the previous row's
   bound, which usually already qualifies): since those blocks hold at least k elements at or above it, the
   bound is ≤ the row's k-th largest value;
3. every element at or above the bound (it can only sit in a block whose maximum reaches it) becomes a
   candidate: about k to 1.3·k of them. Most such blocks hold one (their second value is below the bound),
   known from step 1; the others are gathered;
4. the few surplus candidates are dropped, smallest first (a k-element min-heap when there are many, e.g.
   ties), which leaves the top k exactly.

Compiled on first use and cached on disk; rows run in parallel on as many threads as torch uses, each thread
claiming chunks of rows as it finishes the last (``runtime.claim``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .runtime import CHUNK_ROWS, FASTMATH, claim, compiled_threads
from .select import bound_reached_by, heap_top_k

DROP_LIMIT = 16
"""Up to this many surplus candidates are dropped one smallest at a time (a few short branch-free scans);
beyond it a k-element heap is cheaper."""


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def _topk_rows(pre, bias, k, size, n_parts, out_values, out_indices, counter):  # pragma: no cover - compiled
    n, m = pre.shape
    n_blocks = m // size
    for _thread in numba.prange(n_parts):
        block_max = np.empty(n_blocks, np.float32)
        block_second = np.empty(n_blocks, np.float32)
        block_arg = np.empty(n_blocks, np.int32)
        scratch_low = np.empty(n_blocks, np.float32)
        scratch_high = np.empty(n_blocks, np.float32)
        cand_values = np.empty(m, np.float32)
        cand_indices = np.empty(m, np.int64)
        chosen = np.empty(n_blocks, np.int64)
        start = claim(counter, CHUNK_ROWS)
        while start < n:
            guess = -np.inf  # afresh per chunk: a row's result (and its order) must not depend on the thread's history
            for i in range(start, min(n, start + CHUNK_ROWS)):
                row, values, indices = pre[i], out_values[i], out_indices[i]
                # 1. each block's largest and second-largest value of row + bias and the largest's position
                # (column c is in block c mod n_blocks): contiguous and vectorised, and the row's first read from
                # memory, which leaves time for the extra compares
                for b in range(n_blocks):
                    block_max[b] = row[b] + bias[b]
                    block_second[b] = -np.inf
                    block_arg[b] = 0
                for e in range(1, size):
                    row_part = row[e * n_blocks : (e + 1) * n_blocks]
                    bias_part = bias[e * n_blocks : (e + 1) * n_blocks]
                    for b in range(n_blocks):
                        v, top = row_part[b] + bias_part[b], block_max[b]
                        block_second[b] = max(block_second[b], min(top, v))
                        block_arg[b] = np.int32(e) if v > top else block_arg[b]
                        block_max[b] = max(top, v)
                # 2. a threshold that k to 1.25k block maxima reach: a lower bound on the k-th value. Rows of a batch
                # are alike, so the previous row's threshold is tried first (it often qualifies); else bisect.
                guess = bound_reached_by(block_max, k, k // 4, guess, scratch_low, scratch_high)
                # 3. every element >= the bound lies in a block whose maximum reaches it; where the block's second value
                # does not (most blocks), its maximum is the only candidate, else gather the block
                n_chosen = 0
                for b in range(n_blocks):
                    chosen[n_chosen] = b
                    n_chosen += block_max[b] >= guess
                count = 0
                for c in range(n_chosen):
                    b = chosen[c]
                    if block_second[b] < guess:
                        cand_values[count] = block_max[b]
                        cand_indices[count] = block_arg[b] * n_blocks + b
                        count += 1
                        continue
                    for e in range(size):
                        v = row[e * n_blocks + b] + bias[e * n_blocks + b]
                        cand_values[count] = v
                        cand_indices[count] = e * n_blocks + b
                        count += v >= guess
                # 4. the k largest of the (at least k) candidates: drop the few smallest, or keep a k-heap when
                # there are many more (ties)
                if count - k <= DROP_LIMIT:
                    while count > k:
                        smallest = 0
                        for j in range(1, count):
                            if cand_values[j] < cand_values[smallest]:
                                smallest = j
                        count -= 1
                        cand_values[smallest], cand_indices[smallest] = cand_values[count], cand_indices[count]
                    for j in range(k):
                        values[j], indices[j] = cand_values[j], cand_indices[j]
                    continue
                heap_top_k(cand_values, cand_indices, count, k, values, indices)
            start = claim(counter, CHUNK_ROWS)


def topk_with_bias(
    pre: torch.Tensor, bias: torch.Tensor, k: int, size: int, out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Write the top k of ``pre + bias`` per row into ``out`` = (values (n, k), int64 indices (n, k)), in no
    particular order, as ``(pre + bias).topk(k, sorted=False)`` up to ties.

    ``pre`` (n, m): contiguous float32 on the CPU, finite; ``bias`` (m,) float32; ``size``: elements per
    strided block, a divisor of m with at least k blocks (see ``topk.block_size``). ``out`` tensors are
    contiguous.
    """
    _topk_rows(
        pre.numpy(),
        bias.detach().contiguous().numpy(),
        k,
        size,
        compiled_threads(),
        out[0].numpy(),
        out[1].numpy(),
        np.zeros(1, np.int64),
    )
