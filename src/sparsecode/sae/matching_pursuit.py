"""Matching-pursuit SAE (MP-SAE; Costa et al. 2025): the encoder is greedy. Starting from r = x − b_dec, each
step picks the atom (decoder row) most aligned with the residual, takes its coefficient c = ⟨r, w⟩ and
subtracts c·w, for ``mp_steps`` steps or until ‖r‖ falls below ``residual_tol``·‖x − b_dec‖. With unit-norm
atoms each step lowers ‖r‖² by c², so the residual never grows. Training backpropagates through the
unrolled steps (the choice of atoms is not differentiated; the coefficients are).

There is no separate encoder: ``W_dec`` is both dictionary and encoder, so the model holds W_dec and b_dec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import SAEConfig, SparseAutoencoder, TrainOutput
from .common import fvu, l0


@dataclass
class MatchingPursuitConfig(SAEConfig):
    mp_steps: int = 32
    """Greedy steps (atoms picked, with repetition) per row: the largest possible L0."""
    residual_tol: float = 0.0
    """Stop a row early once ‖r‖ <= residual_tol · ‖x − b_dec‖ (0: always run ``mp_steps`` steps)."""

    arch = "mp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.mp_steps <= self.n_latents:
            raise ConfigError(f"sae.mp_steps must be between 1 and n_latents={self.n_latents}, got {self.mp_steps}")
        if not 0 <= self.residual_tol < 1:
            raise ConfigError(f"sae.residual_tol must be in [0, 1), got {self.residual_tol}")
        if not self.unit_norm_decoder:
            raise ConfigError("sae.unit_norm_decoder must be true for matching pursuit (atoms must have unit norm)")


class MatchingPursuitSAE(SparseAutoencoder):
    config_class = MatchingPursuitConfig
    cfg: MatchingPursuitConfig

    def __init__(self, cfg: MatchingPursuitConfig) -> None:
        super().__init__(cfg)
        del self.W_enc, self.b_enc  # the dictionary is the encoder

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(n, n_latents) alignments of x − b_dec with every atom (the scores of the first greedy step)."""
        return (x - self.b_dec) @ self.W_dec.T

    def pursue(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Run the pursuit: coefficients and atom indices, each (n, mp_steps) (0 coefficient = step not taken),
        and ‖r‖ (n,) before the first step and after each step."""
        r = x - self.b_dec  # (n, d_in)
        stop = self.cfg.residual_tol * r.norm(dim=-1)  # (n,)
        coefs, atoms, norms = [], [], [r.norm(dim=-1)]
        for _ in range(self.cfg.mp_steps):
            with torch.no_grad():
                atom = (r @ self.W_dec.T).argmax(-1)  # (n,)
            w = self.W_dec[atom]  # (n, d_in)
            c = (r * w).sum(-1).clamp_min(0) * (norms[-1] > stop)  # (n,)
            r = r - c[:, None] * w
            coefs.append(c)
            atoms.append(atom)
            norms.append(r.norm(dim=-1))
        return torch.stack(coefs, 1), torch.stack(atoms, 1), norms

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        coefs, atoms, _ = self.pursue(x)  # (n, mp_steps) each
        return torch.zeros(x.shape[0], self.cfg.n_latents, dtype=coefs.dtype, device=x.device).scatter_add(
            -1, atoms, coefs
        )

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        latents = self.encode(x)  # (n, n_latents)
        x_hat = self.decode(latents)  # (n, d_in)
        loss = fvu(x_hat, x)
        return TrainOutput(
            loss=loss, x_hat=x_hat, fired=(latents > 0).any(0), metrics={"fvu": loss.detach(), "l0": l0(latents)}
        )

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        if target_scale is not None and target_scale != scale:
            raise ConfigError(
                f"a matching-pursuit SAE reconstructs its input: one scale, not {scale} and {target_scale}"
            )
        self.b_dec /= scale  # the atom choices are scale-free; coefficients scale with the input
