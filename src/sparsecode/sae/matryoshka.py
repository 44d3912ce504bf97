"""Matryoshka SAE (Bussmann et al. 2025; Nabeshima 2025): nested prefixes of the dictionary (by default the first
n/16 latents, the first n/4, and all n) each reconstruct the input on their own; the loss is the whole dictionary's
FVU plus the mean of the prefixes' FVUs. Early latents, used by every prefix, learn the general features; later
ones add detail instead of absorbing them.

Activations are BatchTopK's (``batch_topk``, as Bussmann et al. 2025): the batch's k·n largest, ranked over the
whole dictionary, and a learned threshold at inference. The prefixes pull the early latents onto many rows, and a
per-row budget of k then leaves later latents few slots: on MiniLM (layer 3, 3072 latents, 1M tokens,
bench/architectures.py's setting) per-row TopK left 46% of the latents dead at an FVU 1.20x TopK's, batch ranking
25% dead at 1.08x (held-out L0 34.8, as BatchTopK's threshold keeps a little more than k: 1.11x TopK at k 35),
with each prefix's FVU lower too. ``batch_topk`` false keeps TopK's k per row (files older than format 3 were trained so)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch

from ..errors import ConfigError
from ..kernels import SparsePattern
from .base import TrainOutput
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .common import fvu
from .topk import TopKSAE


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    prefixes: list[int] | None = None
    """Sizes of the nested prefixes trained to reconstruct alone, increasing and below n_latents (the whole
    dictionary is always the last); None means [n_latents // 16, n_latents // 4]."""
    batch_topk: bool = True
    """Rank activations over the whole batch (BatchTopK: k per row on average, a learned threshold at inference),
    as Bussmann et al. 2025; false keeps the k largest of every row (TopK)."""

    arch = "matryoshka"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefixes is None:
            self.prefixes = sorted({p for p in (self.n_latents // 16, self.n_latents // 4) if p >= 1})
        p = self.prefixes
        if (
            not all(isinstance(v, int) for v in p)
            or any(b <= a for a, b in pairwise(p))
            or (p and not 1 <= p[0] <= p[-1] < self.n_latents)
        ):
            raise ConfigError(
                f"sae.prefixes must be increasing whole numbers in [1, n_latents={self.n_latents}), got {p}"
            )

    @classmethod
    def saved_defaults(cls, d: dict[str, Any], format_version: int) -> dict[str, Any]:
        """Files before format 3 ranked every row's own top k."""
        return {"batch_topk": False, **d} if format_version < 3 else d

    @property
    def plain_topk(self) -> bool:
        return not self.batch_topk  # the nesting is training-only: it encodes as TopK

    @property
    def sizes(self) -> list[int]:
        """Every nested size, the whole dictionary last."""
        return [*(self.prefixes or []), self.n_latents]


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK's training step and inference threshold (or TopK's, without ``batch_topk``) with the nested
    prefixes' losses."""

    config_class = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def __init__(self, cfg: MatryoshkaConfig) -> None:
        if cfg.batch_topk:
            super().__init__(cfg)
        else:  # TopK per row: no inference threshold
            TopKSAE.__init__(self, cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return super().encode(x) if self.cfg.batch_topk else TopKSAE.encode(self, x)

    def encode_prefix(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """(n, n_latents) latents with only the first ``size`` latents kept (the rest zeroed)."""
        latents = self.encode(x)
        latents[:, size:] = 0
        return latents

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        if not self.cfg.batch_topk:
            return TopKSAE.training_output(self, x, dead_mask=dead_mask, progress=progress, target=target)
        return super().training_output(x, dead_mask=dead_mask, progress=progress, target=target)

    def upgrade_from(self, format_version: int, where: str) -> None:
        if self.cfg.batch_topk:
            super().upgrade_from(format_version, where)

    def _fold_extra(self, scale: float) -> None:
        if self.cfg.batch_topk:
            super()._fold_extra(scale)

    def _reconstruction_loss(
        self, values: torch.Tensor, pattern: SparsePattern, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The whole dictionary's FVU plus the mean of the nested prefixes' FVUs, each decoded sparsely from the
        winners inside the prefix (the winners are ranked over the whole dictionary, as at inference)."""
        masks = [None if size == self.cfg.n_latents else pattern.indices < size for size in self.cfg.sizes]
        losses, x_hat = self._masked_fvus(values, pattern, target, masks)
        return self._nested_loss(losses), x_hat, self._prefix_metrics(losses)

    def _dense_reconstruction_loss(
        self, latents: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``_reconstruction_loss`` from dense (n, n_latents) latents (BatchTopK's dense path)."""
        x_hats = [latents[:, :size] @ self.W_dec[:size] + self.b_dec for size in self.cfg.sizes]  # each (n, d_in)
        losses = [fvu(x_hat, target) for x_hat in x_hats]
        return self._nested_loss(losses), x_hats[-1], self._prefix_metrics(losses)

    def _nested_loss(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """The whole dictionary's FVU (last of ``losses``) plus the mean of the prefixes'."""
        # the whole dictionary weighs as much as all the prefixes together: with the papers' plain sum, the prefixes
        # outweigh it (2:1 with the default two) and, when the data has no hierarchy to share out, pull early
        # latents toward mixtures of features (512 planted features in 64 dims, k 5: 0.80 of them found at cos >=
        # 0.9 with the sum, 0.86 with this), and more prefixes would dilute the whole dictionary further
        prefixes = torch.stack(losses[:-1]).mean() if len(losses) > 1 else 0.0
        return losses[-1] + prefixes

    def _prefix_metrics(self, losses: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"fvu": losses[-1].detach(), **{f"fvu_{s}": v.detach() for s, v in zip(self.cfg.prefixes, losses)}}
