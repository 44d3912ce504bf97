"""BatchTopK SAE (Bussmann et al. 2024): keep the k·n largest activations of the whole batch of n rows, so
rows share a budget of k on average; at inference a learned global threshold replaces the batch ranking
(the trained SAE acts as a JumpReLU with one threshold for every latent)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import TrainOutput
from .common import auxk_loss, fvu, l0
from .topk import TopKConfig, TopKSAE


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_momentum: float = 0.9
    """EMA momentum of the inference threshold: the smallest activation kept per training batch."""

    arch = "batchtopk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum < 1:
            raise ConfigError(f"sae.threshold_momentum must be in [0, 1), got {self.threshold_momentum}")


class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKConfig
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig) -> None:
        super().__init__(cfg)
        # -1 = no estimate yet: encode then falls back to batch top-k (see ``encode``).
        self.register_buffer("threshold", torch.tensor(-1.0))

    def batch_select(self, pre: torch.Tensor) -> torch.Tensor:
        """(n, n_latents) pre-activations -> dense latents keeping the k·n largest positive entries of the batch."""
        flat = pre.relu().flatten()  # (n * n_latents,)
        values, indices = flat.topk(min(self.cfg.k * pre.shape[0], flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)  # (n, n_latents)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)  # (n, n_latents)
        if self.threshold < 0:  # not trained yet
            return self.batch_select(pre)
        return pre * (pre > self.threshold)

    def training_output(self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float,
                        target: torch.Tensor | None = None) -> TrainOutput:
        pre = self.pre_acts(x)  # (n, n_latents)
        latents = self.batch_select(pre)  # (n, n_latents)
        x_hat = self.decode(latents)  # (n, d_in)
        loss = fvu(x_hat, x)
        metrics = {"fvu": loss.detach(), "l0": l0(latents)}
        aux = auxk_loss(self.W_dec, pre, dead_mask, (x - x_hat).detach(), self.cfg.k_aux or x.shape[1] // 2)
        if aux is not None and self.cfg.auxk_alpha > 0:
            loss = loss + self.cfg.auxk_alpha * aux
            metrics["auxk_loss"] = aux.detach()
        with torch.no_grad():
            kept = latents[latents > 0]
            if kept.numel():
                smallest = kept.min()
                m = self.cfg.threshold_momentum
                new = smallest if self.threshold < 0 else m * self.threshold + (1 - m) * smallest
                self.threshold.copy_(new)
        metrics["threshold"] = self.threshold.detach().clone()
        return TrainOutput(loss=loss, x_hat=x_hat, fired=(latents > 0).any(0), metrics=metrics)

    def _fold_extra(self, scale: float) -> None:
        if self.threshold > 0:
            self.threshold /= scale
