"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping ahead"): f = z · H(z − θ) with a learned threshold θ per
latent. The step function has no useful gradient, so θ learns through straight-through estimators with a
rectangle kernel of width ``bandwidth``; sparsity comes from an L0 penalty (or a pull toward a target L0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import SAEConfig, SparseAutoencoder, TrainOutput
from .common import fvu


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z · H(z − θ); ∂/∂z = H(z − θ), ∂/∂θ = −(θ/ε) K((z − θ)/ε)."""

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
        grad_theta = (grad * -(theta / eps) * _rectangle((z - theta) / eps)).sum(0)
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
        return None, (grad * -(1.0 / eps) * _rectangle((z - theta) / eps)).sum(0), None


@dataclass
class JumpReLUConfig(SAEConfig):
    l0_coefficient: float | None = None
    """λ in ‖x − x̂‖² + λ·L0 (inputs normalised to E‖x‖² = d_in), or in ‖x − x̂‖² + λ·(L0 − t)²/t with a target
    L0 t; None means 1, or 100 with a target (the L0 then settles within a few % of t)."""
    target_l0: float | None = None
    """If set, penalise the distance of the batch L0 from this target instead of the L0 itself."""
    bandwidth: float = 0.05
    """Width ε of the rectangle kernel of the straight-through estimators (in normalised input units)."""
    threshold_init: float = 1.0
    """Initial threshold of every latent."""
    l0_warmup: float = 0.05
    """Fraction of training over which λ ramps linearly from 0 to its full value."""

    arch = "jumprelu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coefficient is None:
            self.l0_coefficient = 1.0 if self.target_l0 is None else 100.0
        if self.l0_coefficient < 0:
            raise ConfigError(f"sae.l0_coefficient must be >= 0, got {self.l0_coefficient}")
        if self.target_l0 is not None and not 0 < self.target_l0 <= self.n_latents:
            raise ConfigError(f"sae.target_l0 must be in (0, n_latents={self.n_latents}], got {self.target_l0}")
        if self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ConfigError("sae.bandwidth and sae.threshold_init must be > 0, got "
                              f"{self.bandwidth} and {self.threshold_init}")
        if not 0 <= self.l0_warmup <= 1:
            raise ConfigError(f"sae.l0_warmup must be in [0, 1], got {self.l0_warmup}")


class JumpReLUSAE(SparseAutoencoder):
    config_class = JumpReLUConfig
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = torch.nn.Parameter(torch.full((cfg.n_latents,), math.log(cfg.threshold_init)))

    @property
    def threshold(self) -> torch.Tensor:
        """(n_latents,) per-latent thresholds θ."""
        return self.log_threshold.exp()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)  # (n, n_latents)
        return pre * (pre > self.threshold)

    def training_output(self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float,
                        target: torch.Tensor | None = None) -> TrainOutput:
        pre = self.pre_acts(x).relu()  # (n, n_latents); θ > 0, so negative entries never pass
        theta = self.threshold
        latents = _JumpReLU.apply(pre, theta, self.cfg.bandwidth)  # (n, n_latents)
        x_hat = self.decode(latents)  # (n, d_in)
        sq_err = (x_hat - x).pow(2).sum(-1).mean()
        l0 = _Step.apply(pre, theta, self.cfg.bandwidth).sum(-1).mean()
        ramp = 1.0 if self.cfg.l0_warmup == 0 else min(1.0, progress / self.cfg.l0_warmup)
        t = self.cfg.target_l0
        penalty = l0 if t is None else (l0 - t).pow(2) / t
        loss = sq_err + self.cfg.l0_coefficient * ramp * penalty
        metrics = {"fvu": fvu(x_hat, x).detach(), "l0": l0.detach(), "mean_threshold": theta.mean().detach()}
        return TrainOutput(loss=loss, x_hat=x_hat, fired=(latents > 0).any(0), metrics=metrics)

    def _fold_extra(self, scale: float) -> None:
        self.log_threshold -= math.log(scale)
