"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per row; AuxK revives dead latents."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..kernels import (
    DeadLatents,
    EncoderScratch,
    SparsePattern,
    encoder_topk,
    exact_topk,
    gathered_pre_acts,
    sparse_decode,
    sparse_fvu,
)
from .base import SAEConfig, SparseAutoencoder, TrainOutput, data_parallel, total_variance
from .common import residual_fvu


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    """Active latents per row."""
    auxk_alpha: float = 1 / 32
    """Weight of the auxiliary loss that trains dead latents to model the residual."""
    k_aux: int | None = None
    """Dead latents used by the auxiliary loss; None means d_in // 2."""

    arch = "topk"
    base_lr = 4.8e-3  # best of a 1-32x sweep on MiniLM at 0.5M and 2M tokens (bench/results/lr_sweep.md)

    @property
    def plain_topk(self) -> bool:
        return True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"sae.k must be between 1 and n_latents={self.n_latents}, got {self.k}")
        if self.auxk_alpha < 0:
            raise ConfigError(f"sae.auxk_alpha must be >= 0, got {self.auxk_alpha}")
        if self.k_aux is not None and not 1 <= self.k_aux <= self.n_latents:
            raise ConfigError(f"sae.k_aux must be between 1 and n_latents={self.n_latents}, got {self.k_aux}")


class TopKSAE(SparseAutoencoder):
    config_class = TopKConfig
    cfg: TopKConfig

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, n_latents) pre-activations -> values, indices of the top k, each (n, k); values ReLU'd."""
        values, indices = exact_topk(pre, self.cfg.k)
        return values.relu(), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = self.select(self.pre_acts(x))
        return torch.zeros(x.shape[0], self.cfg.n_latents, dtype=values.dtype, device=values.device).scatter_(
            -1, indices, values
        )

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Decode from (n, k) values and indices without building the dense latent matrix."""
        # prefixes of (n, k) selections (multi-budget, Matryoshka) arrive as strided views
        pattern = SparsePattern(indices.contiguous(), self.cfg.n_latents)
        return sparse_decode(values.contiguous(), pattern, self.W_dec) + self.b_dec

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        """One dense product (the encoder forward); everything after it works on the k selected latents
        (see ``kernels``), with the same values and gradients as the dense formulation."""
        target = x if target is None else target
        auxk = self._auxk_selector(dead_mask, x.shape[1])
        top_pre, indices = self._winners(x, self.cfg.k, auxk)  # (n, k) each
        with torch.autocast(x.device.type, enabled=False):  # the sparse rest in full precision
            return self._sparse_loss(x, target, top_pre, indices, auxk)

    def _winners(self, x: torch.Tensor, k: int, auxk: DeadLatents | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` pre-activations of every row and their latents, each (n, k), without gradient: the step's
        one dense product (``kernels.encoder_topk``, which also collects sparse AuxK's dead winners)."""
        scratch = self.__dict__.setdefault("_scratch", EncoderScratch())  # plain attribute: reused buffers
        return encoder_topk(x, self.W_enc, self.b_enc, self.b_dec, k, scratch=scratch, dead=auxk)

    def _sparse_loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        top_pre: torch.Tensor,
        indices: torch.Tensor,
        auxk: DeadLatents | None,
        keep: torch.Tensor | None = None,
    ) -> TrainOutput:
        """Loss from the (n, k) winners; ``keep`` (n, k) bool drops some of them (BatchTopK's batch ranking)."""
        n_latents = self.cfg.n_latents
        top_pre, indices = self._order_winners(top_pre, indices)
        pattern = SparsePattern(indices, n_latents)
        values = gathered_pre_acts(top_pre, x, self.W_enc, self.b_enc, self.b_dec, pattern).relu()  # (n, k)
        if keep is not None:
            values = values * keep
        loss, x_hat, metrics = self._reconstruction_loss(values, pattern, target)

        if auxk:  # only dead latents compete: they model the residual the live latents leave
            err_hat = auxk.reconstruction(x, self.W_enc, self.b_enc, self.b_dec, self.W_dec)  # (n, d_out)
            aux_loss = residual_fvu(err_hat, (target - x_hat).detach())
            loss = loss + self.cfg.auxk_alpha * aux_loss
            metrics["auxk_loss"] = aux_loss.detach()

        active = (values > 0).detach()  # (n, k)
        fired = (
            torch.zeros(n_latents, dtype=torch.uint8, device=x.device)
            .scatter_reduce_(0, pattern.flat, active.view(-1).to(torch.uint8), "amax")
            .bool()
        )  # from the k winners only
        metrics["l0"] = active.sum() / x.shape[0]
        return TrainOutput(loss=loss, x_hat=x_hat, fired=fired, metrics=metrics)

    def _order_winners(self, top_pre: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (n, k) winners in the order the loss needs (any order here; largest first for multi-budget)."""
        return top_pre, indices

    def _reconstruction_loss(
        self, values: torch.Tensor, pattern: SparsePattern, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Loss, (n, d_out) reconstruction and metrics from the (n, k) ReLU'd winners; nested dictionaries
        (Matryoshka, multi-budget) override it to add their partial reconstructions."""
        variance = total_variance(target) if data_parallel() else None  # the global batch's; else the target's
        fvu, x_hat = sparse_fvu(values, pattern, self.W_dec, self.b_dec, target, variance)  # x_hat (n, d_out)
        return fvu, x_hat, {"fvu": fvu.detach()}

    def _masked_fvus(
        self, values: torch.Tensor, pattern: SparsePattern, target: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The FVU of each partial reconstruction keeping ``values * mask`` on the shared pattern (None: all of
        them), and the last reconstruction (n, d_out). Nested dictionaries build their losses from these."""
        variance = total_variance(target)
        losses = []
        for mask in masks:
            x_hat = sparse_decode(values if mask is None else values * mask, pattern, self.W_dec) + self.b_dec
            losses.append(F.mse_loss(x_hat, target, reduction="sum") / variance)
        return losses, x_hat

    def _auxk_selector(self, dead_mask: torch.Tensor | None, d_in: int) -> DeadLatents | None:
        if dead_mask is None or self.cfg.auxk_alpha <= 0 or not bool(dead_mask.any()):
            return None
        dead = dead_mask.nonzero().squeeze(1)  # (n_dead,)
        return DeadLatents(dead, min(self.cfg.k_aux or d_in // 2, len(dead)))
