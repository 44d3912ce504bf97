"""Gated SAE (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs"): a gate path decides
*which* latents fire, a magnitude path *how much*; both share the encoder directions (the magnitude path
rescales them by exp(r_mag)). The L1 penalty acts on the gate only, so it does not shrink magnitudes; an
auxiliary loss through a frozen decoder trains the gate to reconstruct on its own."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import SparsePattern, gathered_pre_acts, sparse_decode
from .base import SparseAutoencoder, TrainOutput
from .common import (
    L0Controller,
    any_process,
    candidate_width,
    encoder_candidates,
    fired_latents,
    fvu,
    l0,
    penalised_fvu,
    sparse_penalised_fvu,
    steered,
)
from .relu import L1Config


@dataclass
class GatedConfig(L1Config):
    """ReLU's L1 settings (``l1``, ``l1_warmup``, ``target_l0``), applied to the gate path only."""

    l1: float = 2.0
    """L1 coefficient λ on the gate's rectified pre-activations weighted by decoder row norms
    (inputs normalised to E‖x‖² = d_in)."""
    l1_warmup: float = 0.0
    """Fraction of training over which λ ramps linearly from 0 to its full value. No ramp by default: the gate biases
    start at the target L0 (with a target), and a penalty ramping up from 0 let the L0 run up to ~10x the target in
    the first steps (MiniLM layer 3, 3072 latents, target 32, 200k tokens: FVU 0.289 at L0 34.4 with a 5% ramp, 0.258
    at L0 33.1 without)."""

    arch = "gated"
    # 3x ReLU's: on MiniLM layer 3 (3072 latents, 1M tokens, target L0 32) held-out FVU 0.315 at L0 34.0 against
    # 0.677 at L0 32.8 (`bench/architectures.py --skip-synthetic --only gated --lr-scale 3`)
    base_lr = 1.8e-3


INIT_ROWS = 4096
"""Rows of the initial sample the gate biases are set from (a (rows, n_latents) product)."""


class GatedSAE(SparseAutoencoder):
    """``b_enc`` is the gate bias; ``r_mag`` and ``b_mag`` define the magnitude path."""

    config_class = GatedConfig
    cfg: GatedConfig

    def __init__(self, cfg: GatedConfig) -> None:
        super().__init__(cfg)
        self.r_mag = torch.nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_mag = torch.nn.Parameter(torch.zeros(cfg.n_latents))
        with torch.no_grad():
            # The encoder starts as the decoder's transpose scaled by d_in / n_latents, as JumpReLU's (Conerly et al.
            # 2025): at the unscaled transpose every gate is open and the first reconstruction sums hundreds of random
            # directions (FVU ~10), and the step that undoes it collapses the dictionary (256 planted features in
            # 48 dims, 512 latents, CLI defaults: MMCS 0.374, FVU 0.99; scaled: MMCS 0.982, FVU 0.25).
            self.W_enc.mul_(cfg.d_in / cfg.n_latents)
        if cfg.target_l0 is not None:
            self.l0_controller = L0Controller(cfg.target_l0)

    @torch.no_grad()
    def initialize_from_data(self, sample: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """``b_dec`` as every dictionary; with a ``target_l0``, each gate bias starts where its latent opens on
        ``target_l0 / n_latents`` of the sample's rows (Anthropic's January 2025 initialisation, for a gate), so
        the L0 starts at the target instead of at ~half the dictionary, which the L1 controller then needed most
        of a short run to bring down (MiniLM layer 3, 3072 latents, 200k tokens: FVU 0.41 → 0.29 at L0 32-34)."""
        super().initialize_from_data(sample, target)
        if self.cfg.target_l0 is None:
            return
        sample = sample[:INIT_ROWS].to(self.b_dec.device, torch.float32)
        projected = (sample - self.b_dec) @ self.W_enc  # (n, n_latents)
        rank = max(1, round(sample.shape[0] * self.cfg.target_l0 / self.cfg.n_latents))
        self.b_enc.copy_(-projected.topk(min(rank, sample.shape[0]), dim=0).values[-1])

    def _paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate and magnitude pre-activations, each (n, n_latents)."""
        projected = (x - self.b_dec) @ self.W_enc  # (n, n_latents)
        return projected + self.b_enc, projected * self.r_mag.exp() + self.b_mag

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        gate, mag = self._paths(x)
        return (gate > 0) * mag.relu()

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        """The sparse step: every term of the loss involves only open gates (gate > 0), so after the one dense
        product (each row's ``candidate_width`` largest gate pre-activations) it works on those, with the dense
        step's loss and gradients; the dense step without a target L0 or when some row has more open gates."""
        width = candidate_width(self.cfg.target_l0, self.cfg.n_latents)
        if width is None:
            return self._dense_training_output(x, progress)
        top_gate, indices = encoder_candidates(self, x, self.W_enc, self.b_enc, width)  # (n, width) each
        if any_process((top_gate.amin(1) > 0).any()):  # a row whose smallest candidate is open may have more
            return self._dense_training_output(x, progress)
        pattern = SparsePattern(indices, self.cfg.n_latents)
        gate = gathered_pre_acts(top_gate, x, self.W_enc, self.b_enc, self.b_dec, pattern)  # (n, width)
        projected = gate - self.b_enc[indices]  # (x − b_dec) W_enc at the candidates
        mag = projected * self.r_mag.exp()[indices] + self.b_mag[indices]  # (n, width)
        latents = (gate.detach() > 0) * mag.relu()  # (n, width)
        gate_acts = gate.relu()  # (n, width)
        sparsity = (gate_acts * self.W_dec.norm(dim=1)[indices]).sum(-1)  # (n,)
        x_hat_gate = sparse_decode(gate_acts, pattern, self.W_dec.detach()) + self.b_dec.detach()  # (n, d_in)
        aux = fvu(x_hat_gate, x)
        batch_l0 = (latents > 0).sum(-1).float().mean().detach()
        coefficient = steered(self, self.cfg.l1, self.cfg.l1_warmup, progress, batch_l0)
        loss, batch_fvu, x_hat = sparse_penalised_fvu(self, latents, pattern, x, coefficient, sparsity)
        return TrainOutput(
            loss=loss + aux,
            x_hat=x_hat,
            fired=fired_latents(latents, indices, self.cfg.n_latents),
            metrics=_metrics(batch_fvu, batch_l0, sparsity, aux, coefficient),
        )

    def _dense_training_output(self, x: torch.Tensor, progress: float) -> TrainOutput:
        """The plain dense formulation (what the sparse step is tested against)."""
        gate, mag = self._paths(x)  # (n, n_latents) each
        latents = (gate > 0) * mag.relu()  # (n, n_latents); no gradient reaches the gate through here
        x_hat = self.decode(latents)  # (n, d_in)
        gate_acts = gate.relu()  # (n, n_latents)
        sparsity = gate_acts @ self.W_dec.norm(dim=1)  # (n,)
        # The gate alone, through a frozen decoder, must reconstruct x: this trains W_enc and b_enc.
        x_hat_gate = gate_acts @ self.W_dec.detach() + self.b_dec.detach()  # (n, d_in)
        aux = fvu(x_hat_gate, x)
        batch_l0 = l0(latents)
        coefficient = steered(self, self.cfg.l1, self.cfg.l1_warmup, progress, batch_l0)
        loss, batch_fvu = penalised_fvu(x_hat, x, coefficient, sparsity)
        metrics = _metrics(batch_fvu, batch_l0, sparsity, aux, coefficient)
        return TrainOutput(loss=loss + aux, x_hat=x_hat, fired=(latents > 0).any(0), metrics=metrics)

    def _fold_extra(self, scale: float) -> None:
        self.b_mag /= scale


def _metrics(
    batch_fvu: torch.Tensor,
    batch_l0: torch.Tensor,
    sparsity: torch.Tensor,
    aux: torch.Tensor,
    coefficient: torch.Tensor,
) -> dict[str, torch.Tensor]:
    return {
        "fvu": batch_fvu.detach(),
        "l0": batch_l0,
        "l1": sparsity.mean().detach(),
        "aux_loss": aux.detach(),
        "l1_coefficient": coefficient.detach(),
    }
