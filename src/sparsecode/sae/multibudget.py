"""One SAE for several sparsity budgets: TopK latents ranked once, and the loss averages the FVU of the
reconstructions from the top 16, 32, 64, 128 (say) of them. The same weights then serve every budget, and
more latents never hurt: the k-th best latent is trained to improve on the first k − 1."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from ..errors import ConfigError
from ..kernels import SparsePattern
from .topk import TopKConfig, TopKSAE


@dataclass
class MultiBudgetConfig(TopKConfig):
    k: int | None = None  # type: ignore[assignment]
    """The largest budget, used by ``encode``; None means the last of ``budgets`` (or 32 without budgets)."""
    budgets: list[int] | None = None
    """The k values the SAE is trained for, increasing, the last equal to ``k``; None means [k // 4, k // 2, k]."""

    arch = "multibudget"

    @property
    def plain_topk(self) -> bool:
        return False  # its budgets would be lost

    def __post_init__(self) -> None:
        if self.k is None:
            self.k = self.budgets[-1] if isinstance(self.budgets, list) and self.budgets else 32
        super().__post_init__()
        if self.budgets is None:
            self.budgets = sorted({b for b in (self.k // 4, self.k // 2, self.k) if b >= 1})
        b = self.budgets
        if not b or not all(isinstance(v, int) for v in b) or any(y <= x for x, y in pairwise(b)) or b[0] < 1:
            raise ConfigError(f"sae.budgets must be increasing whole numbers >= 1, got {b}")
        if b[-1] != self.k:
            raise ConfigError(f"sae.k ({self.k}) must equal the largest budget ({b[-1]})")


class MultiBudgetSAE(TopKSAE):
    config_class = MultiBudgetConfig
    cfg: MultiBudgetConfig

    @property
    def budgets(self) -> list[int]:
        return list(self.cfg.budgets)

    def select_at(self, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` of (n, n_latents) pre-activations, ReLU'd: values, indices (n, k), largest first."""
        values, indices = pre.topk(k, dim=-1, sorted=True)
        return values.relu(), indices

    def encode_at(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(n, n_latents) latents at budget ``k`` (any k up to n_latents; trained for ``cfg.budgets``)."""
        values, indices = self.select_at(self.pre_acts(x), k)
        return torch.zeros(x.shape[0], self.cfg.n_latents, dtype=values.dtype, device=values.device).scatter_(
            -1, indices, values
        )

    def _order_winners(self, top_pre: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top_pre, order = top_pre.sort(dim=-1, descending=True)  # (n, k): budget b keeps the first b
        return top_pre, indices.gather(1, order)

    def _reconstruction_loss(
        self, values: torch.Tensor, pattern: SparsePattern, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Mean of the budgets' FVUs; budget b decodes the b largest winners (a mask on the shared pattern)."""
        rank = torch.arange(values.shape[1], device=values.device)  # (k,)
        masks = [None if b == values.shape[1] else rank < b for b in self.cfg.budgets]
        losses, x_hat = self._masked_fvus(values, pattern, target, masks)
        metrics = {"fvu": losses[-1].detach(), **{f"fvu_k{b}": v.detach() for b, v in zip(self.cfg.budgets, losses)}}
        return torch.stack(losses).mean(), x_hat, metrics
