"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping ahead"): f = z · H(z − θ) with a learned threshold θ per
latent. The step function has no useful gradient, so θ learns through straight-through estimators with a
rectangle kernel of width ``bandwidth``; sparsity comes from an L0 penalty, whose weight can adapt to reach a
target L0.

The recipe at the defaults: the encoder starts as the decoder's transpose scaled by d_in / n_latents (Conerly et
al. 2025), with a target L0 the thresholds start where the initial encoder keeps that many latents per row,
thresholds are relative to each row's RMS and to each latent's encoder column norm, the learning rate is about
TopK's (the thresholds' too), and a target L0 is held by steering the thresholds' common scale toward it after
every step (``threshold_steering``) plus a quadratic penalty λ·T·(L0/T − 1)² of the batch L0 (dictionary_learning's
JumpReLU trainer), which rewards firing below the target, with λ stiffening while the L0 stays off it
(``common.L0Controller(penalty="quadratic")``). On 512 planted features in 64 dims (the recovery test) it finds
0.94 of them at cos >= 0.9 with a held-out L0 of 4.99 for a target of 5; on 256 in 48 dims with the CLI's
4096-row batches and 500k tokens (122 steps) 1.00 (MMCS 0.997, L0 3.99 for 4): ``python bench/recovery.py
jumprelu '{"target_l0": 4.0}' --cli``. On MiniLM layer 3 (3072 latents, 1M tokens, L0 32) its held-out FVU is
about TopK's (docs/architectures.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..kernels import SparsePattern, gathered_pre_acts
from .base import SAEConfig, SparseAutoencoder, TrainOutput
from .common import (
    L0Controller,
    any_process,
    candidate_width,
    check_target_l0,
    encoder_candidates,
    fired_latents,
    global_mean,
    penalised_fvu,
    sparse_penalised_fvu,
    steered,
)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z · H(z − θ); ∂/∂z = H(z − θ), ∂/∂θ = −(θ/ε) K((z − θ)/ε). θ is (n_latents,) against dense (n, n_latents)
    z, or one threshold per entry of z (the sparse step's gathered thresholds)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > theta)
        grad_theta = (grad * -(theta / eps) * _rectangle((z - theta) / eps)).sum_to_size(theta.shape)
        return grad_z, grad_theta, None


class _Step(torch.autograd.Function):
    """H(z − θ); ∂/∂z = 0, ∂/∂θ = −(1/ε) K((z − θ)/ε)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, (grad * -(1.0 / eps) * _rectangle((z - theta) / eps)).sum_to_size(theta.shape), None


@dataclass
class JumpReLUConfig(SAEConfig):
    l0_coefficient: float = 1.0
    """λ in ‖x − x̂‖² + λ·L0 (inputs normalised to E‖x‖² = d_in); with ``target_l0``, its starting value."""
    target_l0: float | None = None
    """If set, λ adapts during training so that the L0 settles at this many active latents per row; see
    ``common.L0Controller``."""
    bandwidth: float = 0.05
    """Width ε of the rectangle kernel of the straight-through estimators (in normalised input units)."""
    threshold_init: float = 1.0
    """Initial threshold of every latent."""
    l0_warmup: float = 0.05
    """Fraction of training over which λ ramps linearly from 0 to its full value."""
    threshold_lr_scale: float = 1.0
    """The log-thresholds train at this multiple of the learning rate (their own optimizer group). Before
    ``threshold_steering`` they needed 2x to follow the encoder (256 planted features in 48 dims at the CLI defaults:
    L0 9 for a target of 4 at 1x); with it, and the encoder at TopK's rate, 1x does best (MiniLM layer 3, 3072
    latents, 1M tokens: held-out FVU 0.097 at L0 34.8; lr 2x lower with thresholds at 2x: 0.105 at 34.5)."""
    threshold_steering: float = 0.1
    """With a ``target_l0``: after every training step all log-thresholds move together by this × log(batch L0 /
    target) (clipped to ±1), so their common scale follows the target within a few steps, while reconstruction and
    the L0 penalty set them relative to each other. Adam moves a threshold by about its learning rate per step, and
    the L0 at fixed thresholds swings with the encoder (it aligns with the data in the first steps, then grows
    selective): on MiniLM layer 3 (3072 latents, 1M tokens, target 32) the L0 rose to 260 by step 10, then fell to
    22 and stayed below the target for most of training (held-out FVU 0.124 at L0 30.3; with steering 0.105 at
    34.5, and at TopK's learning rate 0.097 at 34.8, TopK 0.098). 0 turns it off."""
    relative_threshold: bool = True
    """Compare each pre-activation divided by its row's RMS ‖x − b_dec‖ / √d_in (about 1 on normalised inputs)
    and by its latent's encoder column norm with θ, instead of the pre-activation itself: interference between
    features in superposition grows with a row's norm, and a threshold relative to it keeps false activations of
    large rows out (docs/architectures.md: MMCS 0.936 against 0.761 on planted features, the same FVU on MiniLM);
    the column norm keeps the thresholds valid while the encoder's scale grows (see ``row_rms``)."""

    arch = "jumprelu"
    # 9.7e-3 at 3072 latents, about TopK's 1e-2 (capped there at 512): with the thresholds steered toward the
    # target, JumpReLU trains at TopK's rate (MiniLM layer 3, 3072 latents, 1M tokens, held-out FVU 0.105 -> 0.097;
    # without steering, at half the rate, 0.124 and at this one 0.111 at L0 31, the L0 under the target for most
    # of training)
    base_lr = 4.2e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coefficient < 0 or (self.target_l0 is not None and self.l0_coefficient == 0):
            raise ConfigError(f"sae.l0_coefficient must be >= 0 (> 0 with a target_l0), got {self.l0_coefficient}")
        check_target_l0(self)
        if self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ConfigError(
                f"sae.bandwidth and sae.threshold_init must be > 0, got {self.bandwidth} and {self.threshold_init}"
            )
        if self.threshold_steering < 0:
            raise ConfigError(f"sae.threshold_steering must be >= 0, got {self.threshold_steering}")
        if self.threshold_lr_scale <= 0:
            raise ConfigError(f"sae.threshold_lr_scale must be > 0, got {self.threshold_lr_scale}")
        if not 0 <= self.l0_warmup <= 1:
            raise ConfigError(f"sae.l0_warmup must be in [0, 1], got {self.l0_warmup}")


class JumpReLUSAE(SparseAutoencoder):
    config_class = JumpReLUConfig
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = torch.nn.Parameter(torch.full((cfg.n_latents,), math.log(cfg.threshold_init)))
        with torch.no_grad():
            # The encoder starts as the decoder's transpose scaled by d_in / n_latents (Conerly et al., Anthropic's
            # January 2025 update): small initial activations reconstruct little, so the first steps align the
            # dictionary with the data instead of pushing every pre-activation below its threshold to undo a
            # reconstruction of dozens of random directions (on 512 planted features in 64 dims, absolute thresholds
            # at lr 3.4e-3: 0.04 -> 0.56 of them found at cos >= 0.9).
            self.W_enc.mul_(cfg.d_in / cfg.n_latents)
        if cfg.target_l0 is not None:
            self.l0_controller = L0Controller(cfg.target_l0, penalty="quadratic")

    @torch.no_grad()
    def initialize_from_data(self, sample: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """``b_dec`` as every dictionary; with a ``target_l0``, every threshold starts at the value that keeps
        ``target_l0`` latents per row of ``sample`` on average (BatchTopK's threshold of the initial encoder)
        instead of ``threshold_init``, which has no relation to the initial activations' scale."""
        super().initialize_from_data(sample, target)
        if self.cfg.target_l0 is None:
            return
        sample = sample.to(self.b_dec.device, torch.float32)
        pre = self.pre_acts(sample).relu()  # (n, n_latents)
        rms = self.row_rms(sample)
        z = (pre if rms is None else pre / rms).flatten()
        kth = z.topk(min(z.numel(), max(1, round(self.cfg.target_l0 * sample.shape[0])))).values.min()
        if kth > 0:
            self.log_threshold.fill_(math.log(float(kth)))

    @torch.no_grad()
    def upgrade_from(self, format_version: int, where: str) -> None:
        """Before format 2 relative thresholds compared z / RMS(x − b_dec) with θ; now z is also divided by the
        column norm c, so θ / c gives exactly the old gate."""
        if format_version < 2 and self.cfg.relative_threshold:
            self.log_threshold -= self.W_enc.norm(dim=0).clamp_min(1e-12).log()

    def lr_multipliers(self) -> dict[str, float]:
        return {"log_threshold": self.cfg.threshold_lr_scale}

    @property
    def threshold(self) -> torch.Tensor:
        """(n_latents,) per-latent thresholds θ."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def row_rms(self, x: torch.Tensor) -> torch.Tensor | None:
        """(n, n_latents) scale that pre-activations are divided by before the threshold (None: not relative): the
        RMS of each row's x − b_dec times the norm of each latent's encoder column. The column norm makes the
        gate a threshold on the row's projection onto the encoder's *direction*: the encoder grows from its small
        start by a large fraction of its norm per step, and thresholds on the raw projection cannot follow (256
        planted features in 48 dims at the CLI defaults, 122 steps: the L0 rose to 100 for a target of 4)."""
        if not self.cfg.relative_threshold:
            return None
        return self._rms(x) * self.W_enc.norm(dim=0).clamp_min(1e-12)  # (n, n_latents)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)  # (n, n_latents)
        rms = self.row_rms(x)
        return pre * ((pre if rms is None else pre / rms) > self.threshold)

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        """The sparse step (``_candidates``): one dense product, then only each row's candidates, with the dense
        step's loss and gradients; the dense step when a row might have more latents than candidates within the
        reach of the thresholds' gradient."""
        found = self._candidates(x)
        if found is None:
            return self._dense_training_output(x, progress)
        top_pre, indices, scale = found  # (n, width) each
        pattern = SparsePattern(indices, self.cfg.n_latents)
        pre = gathered_pre_acts(top_pre, x, self.W_enc, self.b_enc, self.b_dec, pattern).relu()  # (n, width)
        z = pre / scale  # what the threshold sees
        theta = self.threshold[indices]  # (n, width)
        latents = _JumpReLU.apply(z, theta, self.cfg.bandwidth) * scale  # (n, width)
        l0 = _Step.apply(z, theta, self.cfg.bandwidth).sum(-1)  # (n,)
        coefficient = steered(self, self.cfg.l0_coefficient, self.cfg.l0_warmup, progress, l0.mean().detach())
        self._steer_thresholds(l0)
        loss, batch_fvu, x_hat = sparse_penalised_fvu(self, latents, pattern, x, coefficient, l0)
        fired = fired_latents(latents, indices, self.cfg.n_latents)
        return TrainOutput(loss=loss, x_hat=x_hat, fired=fired, metrics=self._metrics(batch_fvu, l0, coefficient))

    @torch.no_grad()
    def _candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Each row's ``candidate_width`` latents whose pre-activation is largest relative to the
        lower edge of their threshold's kernel, θ − ε/2 (in pre-activation units): their pre-activations,
        indices and the (n, width) scales z = pre / scale, each (n, width). Outside them every latent of the row
        has a smaller ratio than the row's smallest candidate; when that is below 1 in every row, no other latent
        is active or near enough to its threshold to get a gradient, and the sparse step equals the dense one.
        None (take the dense step) without a candidate width, when a threshold's kernel reaches 0, or when some
        row's smallest candidate is within the kernel."""
        cfg = self.cfg
        width = candidate_width(cfg.target_l0, cfg.n_latents)
        edge = self.threshold - cfg.bandwidth / 2  # (n_latents,)
        if width is None or not bool(edge.min() > 0):
            return None
        rms = self._rms(x)  # (n, 1)
        columns = self.W_enc.norm(dim=0).clamp_min(1e-12) if cfg.relative_threshold else torch.ones_like(edge)
        unit = columns * edge  # (n_latents,) the pre-activation at the kernel's edge, per unit of row RMS
        ratio, indices = encoder_candidates(self, x, self.W_enc / unit, self.b_enc / unit, width)  # (n, width)
        if any_process((ratio.amin(1) >= rms[:, 0]).any()):
            return None
        return ratio * unit[indices], indices, rms * columns[indices]

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1) each row's RMS ‖x − b_dec‖ / √d_in, or ones when thresholds are absolute."""
        if not self.cfg.relative_threshold:
            return x.new_ones(x.shape[0], 1)
        return ((x - self.b_dec).norm(dim=-1, keepdim=True) / math.sqrt(self.cfg.d_in)).clamp_min(1e-12)

    def _dense_training_output(self, x: torch.Tensor, progress: float) -> TrainOutput:
        """The plain dense formulation (what the sparse step is tested against)."""
        pre = self.pre_acts(x).relu()  # (n, n_latents); θ > 0, so negative entries never pass
        rms = self.row_rms(x)  # (n, n_latents) or None
        z = pre if rms is None else pre / rms  # what the threshold sees
        theta = self.threshold
        latents = _JumpReLU.apply(z, theta, self.cfg.bandwidth)  # (n, n_latents)
        latents = latents if rms is None else latents * rms  # = pre · H(z − θ), with ∂/∂pre = H(z − θ)
        x_hat = self.decode(latents)  # (n, d_in)
        l0 = _Step.apply(z, theta, self.cfg.bandwidth).sum(-1)  # (n,)
        coefficient = steered(self, self.cfg.l0_coefficient, self.cfg.l0_warmup, progress, l0.mean().detach())
        self._steer_thresholds(l0)
        loss, batch_fvu = penalised_fvu(x_hat, x, coefficient, l0)
        return TrainOutput(
            loss=loss, x_hat=x_hat, fired=(latents > 0).any(0), metrics=self._metrics(batch_fvu, l0, coefficient)
        )

    @torch.no_grad()
    def _steer_thresholds(self, l0: torch.Tensor) -> None:
        """Training with a target: move every log-threshold by ``threshold_steering`` × log(L0 / target) of this
        step's (n,) row ``l0``s, averaged over the data-parallel processes (all keep the same thresholds). The
        step's graph holds exp(log θ), not log θ, so its gradients are those of the thresholds it ran with
        (autograd would refuse the backward otherwise)."""
        cfg = self.cfg
        if not self.training or cfg.target_l0 is None or cfg.threshold_steering == 0:
            return
        error = (global_mean(l0.mean()).clamp_min(1e-2) / cfg.target_l0).log().clamp(-1.0, 1.0)
        self.log_threshold.add_(cfg.threshold_steering * error)

    def _metrics(self, batch_fvu: torch.Tensor, l0: torch.Tensor, coefficient: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "fvu": batch_fvu.detach(),
            "l0": l0.mean().detach(),
            "mean_threshold": self.threshold.mean().detach(),
            "l0_coefficient": coefficient.detach(),
        }

    def _fold_extra(self, scale: float) -> None:
        if not self.cfg.relative_threshold:  # a ratio to the row's RMS does not scale
            self.log_threshold -= math.log(scale)
