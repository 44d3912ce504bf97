"""Sparse kernels for dictionaries whose latents have a few non-zeros per row (TopK and kin).

Only the encoder's forward product ``x @ W_enc`` is inherently dense. Once each row keeps ``k`` latents,
the decoder forward, the decoder gradient and the encoder gradient touch only those ``k`` latents, so
they cost O(n·k·d) instead of three more dense (n, d) × (d, n_latents) products:

    x_hat   = Σ_j v[i,j] · W_dec[idx[i,j]]             embedding_bag over rows
    dW_dec  = Fᵀ · dx_hat,   dW_encᵀ = Gᵀ · (x − b_dec)  embedding_bag over latents (same pattern)

where F holds the selected values and G their gradients, both (n, n_latents) with the pattern ``idx``.
Both transposed products are embedding_bag calls over the pattern sorted by latent, which a
``SparsePattern`` computes once per step and shares between the decoder and the encoder backward.

Architectures use two autograd functions: ``gathered_pre_acts`` (the selected pre-activations, with a
sparse backward into W_enc, b_enc, b_dec) and ``sparse_decode`` (values, pattern → reconstruction).
Whatever nonlinearity sits between them (ReLU, a threshold with a straight-through estimator, ...) is
plain autograd on (n, k) tensors.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .base import data_parallel, total_variance
from .cpu_backward import decode_and_fvu_grads, latent_order
from .cpu_screen import EncoderScreen, screen_supported, screened_topk
from .cpu_topk import topk_with_bias


class SparsePattern:
    """The (n, k) latent indices of a batch, plus their latent-major order (computed on first use).

    Padding is allowed: set a padded slot's value to 0 (its index may be any valid latent).
    """

    def __init__(self, indices: torch.Tensor, n_latents: int) -> None:
        self.indices = indices  # (n, k) int64
        self.n_latents = n_latents
        self._by_latent: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def flat(self) -> torch.Tensor:
        return self.indices.reshape(-1)  # (n·k,)

    @property
    def offsets(self) -> torch.Tensor:
        """Bag offsets for a row-major embedding_bag over ``flat`` (one bag per row)."""
        n, k = self.indices.shape
        return torch.arange(0, n * k, k, device=self.indices.device)

    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order, rows, offsets): ``flat[order]`` is sorted by latent, ``rows`` the row of each entry in
        that order, and latent j's entries are ``offsets[j]:offsets[j+1]`` — the CSR form of the
        transposed (n_latents, n) pattern."""
        if self._by_latent is None:
            flat, k, m = self.flat, self.indices.shape[1], self.n_latents
            if flat.device.type == "cpu":
                self._by_latent = latent_order(flat.contiguous(), m, k)  # a compiled counting sort
            else:
                order = torch.sort(flat.to(torch.int32), stable=True).indices
                offsets = torch.zeros(m + 1, dtype=torch.long, device=flat.device)
                torch.cumsum(torch.bincount(flat, minlength=m), 0, out=offsets[1:])
                self._by_latent = (order, order // k, offsets)
        return self._by_latent

    def transposed_matmul(self, weights: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(n_latents, d) = Wᵀ · dense, where W is (n, n_latents) with ``weights`` (n, k) on this pattern and
        ``dense`` is (n, d)."""
        order, rows, offsets = self.by_latent()
        return F.embedding_bag(
            rows,
            dense,
            offsets,
            per_sample_weights=weights.reshape(-1).index_select(0, order),
            mode="sum",
            include_last_offset=True,
        )  # (n_latents, d)

    def column_sums(self, weights: torch.Tensor) -> torch.Tensor:
        """(n_latents,) column sums of the (n, n_latents) matrix with ``weights`` (n, k) on this pattern."""
        out = torch.zeros(self.n_latents, dtype=weights.dtype, device=weights.device)
        return out.index_add_(0, self.flat, weights.reshape(-1))


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, W_dec, pattern):  # type: ignore[override]
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        return F.embedding_bag(pattern.indices, W_dec, per_sample_weights=values, mode="sum")  # (n, d)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad_out = grad_out.contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            # dL/dv[i,j] = grad_out[i] · W_dec[idx[i,j]], without gathering an (n, k, d) tensor
            n, k = pattern.indices.shape
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out,
                W_dec,
                pattern.flat,
                pattern.offsets,
                torch.arange(n, device=grad_out.device).repeat_interleave(k),
                0,
                -1,
            ).view(n, k)
        if ctx.needs_input_grad[1]:
            grad_W = pattern.transposed_matmul(values, grad_out)  # (n_latents, d)
        return grad_values, grad_W, None


class _SparseDecodeFVU(torch.autograd.Function):
    """FVU of the sparse reconstruction, its gradients computed in the forward's pass over the rows (CPU)."""

    @staticmethod
    def forward(ctx, values, W_dec, b_dec, target, pattern, variance):  # type: ignore[override]
        result = decode_and_fvu_grads(values, pattern.indices, W_dec, b_dec, target, variance)
        ctx.save_for_backward(values, result.error, result.grad_values)
        ctx.pattern, ctx.scale = pattern, result.scale
        ctx.mark_non_differentiable(result.x_hat)
        return result.fvu, result.x_hat

    @staticmethod
    def backward(ctx, grad_fvu, _grad_x_hat):  # type: ignore[override]
        values, error, grad_values = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        if not bool(grad_fvu == 1):  # the FVU weighted in a larger loss
            grad_values = grad_values * grad_fvu
        scale = ctx.scale * grad_fvu  # dL/dx_hat = scale · error: applied to the (n, k) weights, not the (n, d) error
        needs = ctx.needs_input_grad
        return (
            grad_values if needs[0] else None,
            pattern.transposed_matmul(values * scale, error) if needs[1] else None,  # (n_latents, d)
            error.sum(0) * scale if needs[2] else None,
            -scale * error if needs[3] else None,
            None,
            None,
        )


class _GatheredPreActs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, selected, x, W_enc, b_enc, b_dec, pattern):  # type: ignore[override]
        ctx.save_for_backward(x, W_enc, b_dec)
        ctx.pattern = pattern
        return selected.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, W_enc, b_dec = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad = grad.contiguous()  # (n, k)
        grad_b_enc = pattern.column_sums(grad)  # (n_latents,)
        grad_W_enc = grad_b_dec = None
        if ctx.needs_input_grad[2]:
            # pre = (x − b_dec) W_enc + b_enc  ⇒  dW_encᵀ = Gᵀ (x − b_dec), laid out like W_enc (optimizers such
            # as fused Adam want matching strides): free for the SAEs' latent-major W_enc, a copy otherwise
            grad_W_enc = pattern.transposed_matmul(grad, x - b_dec).T  # (d, n_latents), latent-major
            if grad_W_enc.stride() != W_enc.stride():
                grad_W_enc = torch.empty_like(W_enc).copy_(grad_W_enc)
        if ctx.needs_input_grad[4]:
            grad_b_dec = -(W_enc @ grad_b_enc)  # (d,)
        return None, None, grad_W_enc, grad_b_enc if ctx.needs_input_grad[3] else None, grad_b_dec, None


def sparse_decode(values: torch.Tensor, pattern: SparsePattern, W_dec: torch.Tensor) -> torch.Tensor:
    """(n, k) values on ``pattern`` → (n, d) Σ_j values[i,j] · W_dec[idx[i,j]], with a sparse backward."""
    return _SparseDecode.apply(values, W_dec, pattern)


def sparse_fvu(
    values: torch.Tensor,
    pattern: SparsePattern,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    target: torch.Tensor,
    variance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(FVU, x_hat) of the reconstruction x_hat = sparse_decode(values, pattern, W_dec) + b_dec against ``target``
    (n, d), i.e. Σ‖x_hat − target‖² / ``variance``, by default the target batch's total variance Σ‖t − mean‖²
    (``base.total_variance``, a constant for autograd); differentiable in the FVU (x_hat is returned detached on
    the compiled path). On the CPU in float32 one compiled pass computes the FVU, its
    gradients and the default variance together."""
    tensors = (values, W_dec, b_dec, target)
    if variance is None and data_parallel():
        variance = total_variance(target)  # the global batch's, not this process's slice's
    if (
        USE_COMPILED_FVU
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and W_dec.is_contiguous()
        and (variance is None or float(variance) > 0)
    ):  # else inf/nan as torch has it
        return _SparseDecodeFVU.apply(
            values.contiguous(),
            W_dec,
            b_dec,
            target.contiguous(),
            pattern,
            None if variance is None else float(variance),
        )
    x_hat = sparse_decode(values, pattern, W_dec) + b_dec  # (n, d)
    variance = total_variance(target) if variance is None else variance
    return F.mse_loss(x_hat, target, reduction="sum") / variance, x_hat


def gathered_pre_acts(
    selected: torch.Tensor,
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    pattern: SparsePattern,
) -> torch.Tensor:
    """The pre-activations ``(x − b_dec) W_enc + b_enc`` at ``pattern``, already computed (without grad) as
    ``selected`` (n, k), wired into autograd with a sparse backward into W_enc, b_enc and b_dec."""
    return _GatheredPreActs.apply(selected, x, W_enc, b_enc, b_dec, pattern)


USE_COMPILED_FVU = True
"""Compute the FVU and its gradients in one compiled pass where it applies (``sparse_fvu``); False forces
the torch path (embedding bags and mse_loss)."""

USE_COMPILED_TOPK = True
"""Select with the compiled kernel (``cpu_topk``) where it applies; False forces the pure-torch path (for
comparisons, see bench/topk.py)."""


USE_SCREEN: bool | None = {"0": False, "1": True}.get(os.environ.get("SPARSECODE_SCREEN", ""))
"""Select the encoder's top k from a bfloat16 product with exact float32 rescoring (``cpu_screen``): None uses
it where the CPU has bfloat16 matrix units (AMX), True on any CPU, False never (the float32 product). The
environment variable SPARSECODE_SCREEN=0 or 1 sets it at import."""


def screen_applies(x: torch.Tensor, W_enc: torch.Tensor, k: int) -> bool:
    """Whether ``screened_topk`` serves this step: float32 on the CPU (no autocast), the latent-major encoder,
    k small enough for the strided blocks, and the switch above."""
    if USE_SCREEN is False or (USE_SCREEN is None and not screen_supported()):
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
    selection (``cpu_topk``) adds it as it reads. ``extra`` callbacks ``f(start, block, pending_bias)`` see
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
    compiled = USE_COMPILED_TOPK and size is not None and buffer.device.type == "cpu" and dtype == torch.float32
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
