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

import torch
import torch.nn.functional as F

from .backend import compiled_for, current
from .fvu_pass import decode_and_fvu_grads
from .rows import latent_order


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
            if flat.device.type == "cpu" and current() != "torch":
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
    (n, d), i.e. Σ‖x_hat − target‖² / ``variance``, by default the target batch's total variance Σ‖t − mean‖² (a
    constant for autograd; under data-parallel training pass the global batch's, ``sae.base.total_variance``);
    differentiable in the FVU (x_hat is returned detached on the compiled path). On the CPU in float32 one
    compiled pass computes the FVU, its gradients and the default variance together."""
    if (
        compiled_for(values, W_dec, b_dec, target)
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
    if variance is None:
        variance = (target - target.mean(0)).square().sum().detach()
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
