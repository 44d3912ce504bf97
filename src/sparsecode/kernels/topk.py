"""The encoder's top-k, the one dense product of a TopK step: ``encoder_topk`` picks how (the bfloat16 screen, the
float32 product with the compiled selection, or torch's), block by block into reused scratch memory; and
``exact_topk``, the top-k of a dense block of pre-activations by strided blocks (torch operations)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .backend import compiled_for, screen_wanted
from .screen import EncoderScreen, screened_topk
from .topk_rows import topk_with_bias

if TYPE_CHECKING:
    from .auxk import DeadLatents

PRE_BLOCK_ELEMENTS = 4096 * 6144
"""Pre-activations computed per block of rows (elements, 96 MiB in fp32): bounds the scratch memory for
any batch size. Measured on a 2-core CPU at d=384, m=6144: blocks of 4096 rows beat 1024 by ~20% and 256
by ~2x (small GEMMs run far below peak), so the block is as big as this memory budget allows."""


class EncoderScratch:
    """Buffers ``encoder_topk`` reuses from step to step (fresh multi-megabyte buffers cost page faults on every
    step): the (rows, n_latents) pre-activation block, and the bfloat16 screen's."""

    def __init__(self) -> None:
        self.pre: torch.Tensor | None = None
        self.screen = EncoderScreen()

    def block(self, rows: int, n_latents: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A (rows, n_latents) scratch block, reallocated only when a larger one or another dtype is needed."""
        pre = self.pre
        if (
            pre is None
            or pre.shape[0] < rows
            or pre.shape[1] != n_latents
            or pre.dtype != dtype
            or pre.device != device
        ):
            pre = self.pre = torch.empty(rows, n_latents, dtype=dtype, device=device)
        return pre[:rows]


def block_rows(n: int, n_latents: int) -> int:
    """Rows per encoder product (``PRE_BLOCK_ELEMENTS`` bounds its scratch)."""
    return max(1, min(n, PRE_BLOCK_ELEMENTS // n_latents))


@torch.no_grad()
def encoder_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    *,
    scratch: EncoderScratch,
    dead: DeadLatents | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` pre-activations ``(x − b_dec) W_enc + b_enc`` of every row and their latents: values (n, k), not
    ReLU'd, in x's dtype, and indices (n, k), in no particular order, without gradient.

    Where the backend wants it (``screen_applies``), the product is bfloat16 and the winners are rescored exactly
    (``screen``): the same winners and values as the float32 product. Else the product runs block by block into
    ``scratch`` (in autocast's dtype if enabled, see ``gemm_dtype``) and each block's top k is taken by the
    compiled selection (float32 on the CPU) or by ``exact_topk``. ``dead`` (AuxK's sparse way) collects the dead
    latents' top k_aux as well: from each block, or, with the screen, from a float32 product over their columns.
    """
    rows = block_rows(x.shape[0], W_enc.shape[1])
    sparse_auxk = dead is not None and not dead.dense
    if screen_applies(x, W_enc, k):
        winners = screened_topk_rows(x, W_enc, b_enc, b_dec, k, scratch.screen, rows)
        if sparse_auxk:
            dead.see_dead_columns(x, W_enc, b_enc - b_dec @ W_enc)
        return winners
    block = scratch.block(rows, W_enc.shape[1], gemm_dtype(x), x.device)
    with torch.autocast(x.device.type, enabled=False):
        bias = b_enc - b_dec @ W_enc  # (n_latents,)
        top_pre, indices = chunked_topk(
            x, W_enc, bias, k, buffer=block, extra=[dead.see] if sparse_auxk else None
        )  # (n, k) each
        return top_pre.to(x.dtype), indices


def screen_applies(x: torch.Tensor, W_enc: torch.Tensor, k: int) -> bool:
    """Whether ``screened_topk`` serves this step: float32 on the CPU (no autocast), the latent-major encoder,
    k small enough for the strided blocks, and the backend (``backend.screen_wanted``)."""
    if not screen_wanted():
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == W_enc.dtype == gemm_dtype(x) == torch.float32
        and W_enc.T.is_contiguous()
        and block_size(W_enc.shape[1], k) is not None
    )


@torch.no_grad()
def screened_topk_rows(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    screen: EncoderScreen,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k values (n, k) (not ReLU'd) and indices (n, k) of ``(x − b_dec) W_enc + b_enc``, as ``chunked_topk``
    gives them, from a bfloat16 product ``rows`` rows at a time (where ``screen_applies``)."""
    return screened_topk((x - b_dec).contiguous(), W_enc, b_enc, k, block_size(W_enc.shape[1], k), rows, screen)


@torch.no_grad()
def chunked_topk(
    x: torch.Tensor, W_enc: torch.Tensor, bias: torch.Tensor, k: int, *, buffer: torch.Tensor, extra: list | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``x @ W_enc + bias`` per row, computed ``len(buffer)`` rows at a time into ``buffer``.

    The scratch ``buffer`` is reused from step to step (no fresh pages to fault in) and bounds the memory
    for any batch size. On the CPU in float32 the bias is never written into the block: the compiled
    selection (``topk_rows``) adds it as it reads. ``extra`` callbacks ``f(start, block, pending_bias)`` see
    each block too (e.g. AuxK); ``pending_bias`` is the bias still to add to ``block``, or None.
    Returns values (n, k) (not ReLU'd) and indices (n, k).
    """
    n, m = x.shape[0], W_enc.shape[1]
    rows = buffer.shape[0]
    values = torch.empty(n, k, dtype=buffer.dtype, device=x.device)
    indices = torch.empty(n, k, dtype=torch.long, device=x.device)
    dtype = buffer.dtype  # the GEMM's precision (lower than x's under autocast, see ``gemm_dtype``)
    x, W_enc, bias = x.to(dtype), W_enc.to(dtype), bias.to(dtype)
    size = block_size(m, k)
    compiled = size is not None and compiled_for(buffer)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        pre = buffer[: stop - start]  # (rows, n_latents)
        if compiled:
            torch.mm(x[start:stop], W_enc, out=pre)
            topk_with_bias(pre, bias, k, size, out=(values[start:stop], indices[start:stop]))
        else:
            torch.addmm(bias, x[start:stop], W_enc, out=pre)
            values[start:stop], indices[start:stop] = exact_topk(pre, k)
        for f in extra or ():
            f(start, pre, bias if compiled else None)
    return values, indices


def exact_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (values, indices) as ``pre.topk(k, dim=-1, sorted=False)`` (up to order and ties) for a
    contiguous (n, m) block with k ≪ m, in about two thirds of ``torch.topk``'s CPU time.

    Split each row into B strided blocks (column c is in block c mod B) and take each block's max: one
    vectorised pass. A row's top k lie in the k blocks with the largest maxima (an element of any other
    block is exceeded by k distinct block maxima), so the top k of the (n, B) maxima pick k blocks whose
    k·m/B elements are gathered, and the top k of those candidates are the row's top k. Two small top-k
    calls (over B and k·m/B values) replace one over m; B ≈ √(m·k) balances them. Falls back to
    ``torch.topk`` off-CPU, for other than contiguous 2-d blocks, and when k is too large for the split to pay.
    Differentiable: the values are gathered from ``pre``.
    """
    if pre.dim() != 2 or pre.device.type != "cpu" or not pre.is_contiguous():
        return pre.topk(k, dim=-1, sorted=False)
    n, m = pre.shape
    size = block_size(m, k)
    if size is None:
        return pre.topk(k, dim=-1, sorted=False)
    n_blocks = m // size
    blocks = pre.view(n, size, n_blocks)  # [r, i, b] is column i·n_blocks + b
    block = blocks.amax(1).topk(k, dim=-1, sorted=False).indices  # (n, k) the blocks holding the top k
    candidates = blocks.gather(2, block.unsqueeze(1).expand(n, size, k)).view(n, size * k)  # slot i·k + j
    values, slot = candidates.topk(k, dim=-1, sorted=False)  # (n, k)
    return values, block.gather(1, slot % k) + (slot // k) * n_blocks


def block_size(m: int, k: int) -> int | None:
    """Elements per block for ``exact_topk`` (a divisor of m near √(m/k)), or None where it would not pay:
    unless the k blocks hold at most a quarter of the row, one ``torch.topk`` is cheaper."""
    divisors = [s for s in range(2, m // (4 * k) + 1) if m % s == 0 and s * k <= m // 4]
    return min(divisors, key=lambda s: abs(math.log(s * s * k / m)), default=None)


def gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The encoder GEMM's dtype: autocast's (e.g. bfloat16, set by the trainer's ``dtype``) if enabled, else x's.
    Only this dense product runs in lower precision; the sparse parts and the weights stay in x's dtype."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
