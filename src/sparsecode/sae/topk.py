"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per row; AuxK revives dead latents."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import SAEConfig, SparseAutoencoder, TrainOutput


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    """Active latents per row."""
    auxk_alpha: float = 1 / 32
    """Weight of the auxiliary loss that trains dead latents to model the residual."""
    k_aux: int | None = None
    """Dead latents used by the auxiliary loss; None means d_in // 2."""

    arch = "topk"

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
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return values.relu(), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = self.select(self.pre_acts(x))
        return torch.zeros(x.shape[0], self.cfg.n_latents, dtype=values.dtype, device=values.device).scatter_(
            -1, indices, values
        )

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Decode from (n, k) values and indices without building the dense latent matrix."""
        return torch.nn.functional.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def training_output(self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float,
                        target: torch.Tensor | None = None) -> TrainOutput:
        pre = self.pre_acts(x)  # (n, n_latents)
        values, indices = self.select(pre)  # (n, k)
        x_hat = self.decode_sparse(values, indices)  # (n, d_in)
        err = x_hat - x
        total_var = (x - x.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total_var
        loss = fvu
        metrics = {"fvu": fvu.detach()}

        if dead_mask is not None and self.cfg.auxk_alpha > 0 and bool(dead_mask.any()):
            k_aux = min(self.cfg.k_aux or x.shape[1] // 2, int(dead_mask.sum()))
            # Only dead latents compete: model the residual the live latents leave.
            aux_pre = pre.masked_fill(~dead_mask, -torch.inf)
            aux_values, aux_indices = aux_pre.topk(k_aux, dim=-1, sorted=False)
            aux_values = aux_values.relu()
            err_hat = torch.nn.functional.embedding_bag(aux_indices, self.W_dec, per_sample_weights=aux_values, mode="sum")
            residual = (x - x_hat).detach()
            auxk = (err_hat - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
            auxk = torch.nan_to_num(auxk, nan=0.0)
            loss = loss + self.cfg.auxk_alpha * auxk
            metrics["auxk_loss"] = auxk.detach()

        fired = torch.zeros(self.cfg.n_latents, dtype=torch.bool, device=x.device)
        fired[indices[values > 0]] = True  # from the k winners, without a dense (n, n_latents) matrix
        metrics["l0"] = (values > 0).sum(-1).float().mean().detach()
        return TrainOutput(loss=loss, x_hat=x_hat, fired=fired, metrics=metrics)
