"""ReLU SAE with an L1 penalty on latent activations weighted by decoder row norms
(Anthropic, "Towards Monosemanticity" and the April 2024 update)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import SAEConfig, SparseAutoencoder, TrainOutput
from .common import L0Controller, check_target_l0, penalised_fvu, steered


@dataclass
class ReLUConfig(SAEConfig):
    l1: float = 5.0
    """L1 coefficient λ in  ‖x − x̂‖² + λ Σ_i f_i ‖W_dec,i‖  (inputs normalised to E‖x‖² = d_in)."""
    l1_warmup: float = 0.05
    """Fraction of training over which λ ramps linearly from 0 to its full value."""
    target_l0: float | None = None
    """If set, λ adapts during training (``l1`` is its starting value) so that the L0 settles at this many active
    latents per row; see ``common.L0Controller``."""

    arch = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1 < 0:
            raise ConfigError(f"sae.l1 must be >= 0, got {self.l1}")
        if not 0 <= self.l1_warmup <= 1:
            raise ConfigError(f"sae.l1_warmup must be in [0, 1], got {self.l1_warmup}")
        check_target_l0(self)


class ReLUSAE(SparseAutoencoder):
    config_class = ReLUConfig
    cfg: ReLUConfig

    def __init__(self, cfg: ReLUConfig) -> None:
        super().__init__(cfg)
        if cfg.target_l0 is not None:
            self.l0_controller = L0Controller(cfg.target_l0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_acts(x).relu()

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        latents = self.encode(x)  # (n, n_latents)
        x_hat = self.decode(latents)  # (n, d_in)
        weighted_l1 = latents @ self.W_dec.norm(dim=1)  # (n,)
        l0 = (latents > 0).sum(-1).float().mean().detach()
        coefficient = steered(self, self.cfg.l1, self.cfg.l1_warmup, progress, l0)
        loss, fvu = penalised_fvu(x_hat, x, coefficient, weighted_l1)
        metrics = {"fvu": fvu, "l1": weighted_l1.mean().detach(), "l0": l0, "l1_coefficient": coefficient.detach()}
        return TrainOutput(loss=loss, x_hat=x_hat, fired=(latents > 0).any(0), metrics=metrics)
