"""ReLU SAE with an L1 penalty on latent activations weighted by decoder row norms
(Anthropic, "Towards Monosemanticity" and the April 2024 update)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import SAEConfig, SparseAutoencoder, TrainOutput
from .common import L0Controller, check_target_l0, penalised_fvu, steered


@dataclass
class L1Config(SAEConfig):
    """The L1 settings ReLU and Gated share."""

    l1: float = 5.0
    """L1 coefficient λ in  ‖x − x̂‖² + λ Σ_i f_i ‖W_dec,i‖  (inputs normalised to E‖x‖² = d_in)."""
    l1_warmup: float = 0.05
    """Fraction of training over which λ ramps linearly from 0 to its full value."""
    target_l0: float | None = None
    """If set, λ adapts during training (from a fraction of ``l1``) so that the L0 settles at this many active
    latents per row; see ``common.L0Controller``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1 < 0:
            raise ConfigError(f"sae.l1 must be >= 0, got {self.l1}")
        if not 0 <= self.l1_warmup <= 1:
            raise ConfigError(f"sae.l1_warmup must be in [0, 1], got {self.l1_warmup}")
        check_target_l0(self)


@dataclass
class ReLUConfig(L1Config):
    unit_norm_decoder: bool = False
    """Keep every decoder row at unit L2 norm. Off by default (Anthropic's April 2024 update): the penalty weights
    each activation by its row's norm, so a latent can carry its magnitude in the decoder instead of paying for it
    in the activation, and training finds the planted features faster (issue 19's CLI setting, 122 steps: 0.81
    found at cos >= 0.9 free, 0.67 held at unit norm, both at the same learning rate)."""
    decoder_init_norm: float = 0.1
    """Norm every decoder row starts at when the rows are free (``unit_norm_decoder`` off); the encoder starts as
    the decoder's transpose. Small rows make the first, dense reconstructions small instead of a sum of hundreds of
    unit directions."""

    arch = "relu"
    # TopK's rate (1e-2 at 512 or 3072 latents): the free, short decoder rows do not collapse at it, and the old
    # 6e-4 left the CLI setting's 122 steps too few to leave the dense start (0.01 found; MiniLM FVU 0.29 -> 0.16)
    base_lr = 4.8e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.decoder_init_norm > 0:
            raise ConfigError(f"sae.decoder_init_norm must be > 0, got {self.decoder_init_norm}")


class ReLUSAE(SparseAutoencoder):
    config_class = ReLUConfig
    cfg: ReLUConfig

    def __init__(self, cfg: ReLUConfig) -> None:
        super().__init__(cfg)
        with torch.no_grad():
            # From the unscaled transpose of a unit-norm decoder every latent is on and the first reconstruction sums
            # hundreds of random directions; the steps that undo it lose the dictionary (512 planted features in 64
            # dims, target L0 5: 0.00 found at cos >= 0.9). Free rows start short, the encoder as their transpose
            # (the April 2024 update); unit rows keep their norm and the encoder is scaled by d_in / n_latents.
            if cfg.unit_norm_decoder:
                self.W_enc.mul_(cfg.d_in / cfg.n_latents)
            else:
                self.W_dec.mul_(cfg.decoder_init_norm)
                self.W_enc.copy_(self.W_dec.T)
        if cfg.target_l0 is not None:
            # With a target, λ starts below ``l1`` (the paper's 5, meant for a fixed penalty): an L1 penalty that is
            # too strong early pushes latents below zero everywhere, where no gradient brings them back (8x setting:
            # 0.36 found from 5, 0.86 from 0.5, unit rows). With the free rows 0.3 x: MiniLM (3072 latents, 1M tokens,
            # target 32) reaches its L0 sooner than from 0.1 x and ends at FVU 0.144 (0.163 from 0.1 x).
            # The L0 is smoothed over 6% of training, not 2%: at TopK's learning rate a ReLU encoder's L0 swings 4x
            # between steps (2.4 <-> 13 on the CLI setting), and over 2% the integral chases the swings and ends
            # wherever the last one leaves it (held-out L0 3.05-3.2 for a target of 4 on four seeds; 3.9-4.2 now).
            self.l0_controller = L0Controller(cfg.target_l0, start=0.3, smoothing=0.06)

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

    @torch.no_grad()
    def finish_training_(self) -> None:
        """Free decoder rows end at unit norm, each latent scaled by its row's old norm: the reconstruction is the
        same (a ReLU latent is positively homogeneous), and a latent's activation is again its magnitude along a unit
        direction, comparable across latents (densities, top contexts, steering strengths, peers' formats)."""
        if self.cfg.unit_norm_decoder:
            return
        norms = self.W_dec.norm(dim=1).clamp_min(1e-8)  # (n_latents,)
        self.W_dec /= norms[:, None]
        self.W_enc *= norms  # (d_in, n_latents): column i scaled by norm i
        self.b_enc *= norms
