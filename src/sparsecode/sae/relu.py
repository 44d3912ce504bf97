"""ReLU SAE with an L1 penalty on latent activations weighted by decoder row norms
(Anthropic, "Towards Monosemanticity" and the April 2024 update)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import SAEConfig, SparseAutoencoder, TrainOutput


@dataclass
class ReLUConfig(SAEConfig):
    l1: float = 5.0
    """L1 coefficient λ in  ‖x − x̂‖² + λ Σ_i f_i ‖W_dec,i‖  (inputs normalised to E‖x‖² = d_in)."""
    l1_warmup: float = 0.05
    """Fraction of training over which λ ramps linearly from 0 to its full value."""

    arch = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1 < 0:
            raise ConfigError(f"sae.l1 must be >= 0, got {self.l1}")
        if not 0 <= self.l1_warmup <= 1:
            raise ConfigError(f"sae.l1_warmup must be in [0, 1], got {self.l1_warmup}")


class ReLUSAE(SparseAutoencoder):
    config_class = ReLUConfig
    cfg: ReLUConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_acts(x).relu()

    def training_output(self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float,
                        target: torch.Tensor | None = None) -> TrainOutput:
        latents = self.encode(x)  # (n, n_latents)
        x_hat = self.decode(latents)  # (n, d_in)
        sq_err = (x_hat - x).pow(2).sum(-1).mean()
        weighted_l1 = (latents * self.W_dec.norm(dim=1)).sum(-1).mean()
        ramp = 1.0 if self.cfg.l1_warmup == 0 else min(1.0, progress / self.cfg.l1_warmup)
        loss = sq_err + self.cfg.l1 * ramp * weighted_l1
        fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        metrics = {"fvu": fvu.detach(), "l1": weighted_l1.detach(), "l0": (latents > 0).sum(-1).float().mean().detach()}
        return TrainOutput(loss=loss, x_hat=x_hat, fired=(latents > 0).any(0), metrics=metrics)
