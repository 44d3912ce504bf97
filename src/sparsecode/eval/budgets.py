"""Reconstruction at every sparsity budget of a multi-budget SAE, in one pass over the data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .metrics import ReconstructionStats, _take_rows


@torch.inference_mode()
def evaluate_budgets(
    sae: nn.Module,
    budgets: list[int],
    batches: Iterable[Any],
    max_rows: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """FVU, L0, dead fraction, ... (as :func:`evaluate_reconstruction`) of ``sae.encode_at(x, k)`` for each k in
    ``budgets``; one dict per budget, with its ``k``."""
    sae = sae.to(device)
    was_training = sae.training
    sae.eval()
    stats = {k: ReconstructionStats(int(sae.cfg.n_latents)) for k in budgets}
    bar = tqdm(total=max_rows, desc="eval budgets", unit="row", disable=not progress, leave=False)
    try:
        for x, target, _ in _take_rows(batches, max_rows):
            x_dev = x.to(device, torch.float32)  # (n, d_in)
            for k, s in stats.items():
                latents = sae.encode_at(x_dev, k)  # (n, n_latents)
                s.update(target, latents, sae.reconstruct(x_dev, latents))
            bar.update(x.shape[0])
    finally:
        bar.close()
        sae.train(was_training)
    keys = ("fvu", "explained_variance", "cosine", "l0", "dead_fraction")
    return [{"k": k, **{key: s.result()[key] for key in keys}} for k, s in stats.items()]
