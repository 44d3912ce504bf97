"""Loss pieces shared by the architectures added after TopK/ReLU (FVU, AuxK revival of dead latents)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import TrainOutput


def fvu(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained of the batch: Σ‖y − ŷ‖² / Σ‖y − ȳ‖² (differentiable)."""
    return (x_hat - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)


def auxk_loss(W_dec: torch.Tensor, pre: torch.Tensor, dead_mask: torch.Tensor | None, residual: torch.Tensor,
              k_aux: int) -> torch.Tensor | None:
    """AuxK (Gao et al. 2024): the top ``k_aux`` *dead* latents of ``pre`` (n, n_latents) model the ``residual``
    (n, d_out) the live ones leave (pass it detached); its FVU, or None when no latent is dead."""
    if dead_mask is None or not bool(dead_mask.any()):
        return None
    k_aux = min(k_aux, int(dead_mask.sum()))
    values, indices = pre.masked_fill(~dead_mask, -torch.inf).topk(k_aux, dim=-1, sorted=False)  # (n, k_aux)
    err_hat = F.embedding_bag(indices, W_dec, per_sample_weights=values.relu(), mode="sum")  # (n, d_out)
    return torch.nan_to_num(fvu(err_hat, residual), nan=0.0)


def l0(latents: torch.Tensor) -> torch.Tensor:
    """Mean number of non-zero latents per row (detached), from a dense (n, n_latents) matrix."""
    return (latents > 0).sum(-1).float().mean().detach()


def topk_train_output(sae: Any, *, pre: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                      target: torch.Tensor, x_hat: torch.Tensor, loss: torch.Tensor, metrics: dict[str, torch.Tensor],
                      dead_mask: torch.Tensor | None) -> TrainOutput:
    """Finish a TopK-style training step: add AuxK (``sae.cfg.auxk_alpha``, ``k_aux``) and compute which latents
    fired and the L0 from the (n, k) winners ``values``/``indices`` of ``pre`` (n, n_latents)."""
    metrics = dict(metrics)
    aux = auxk_loss(sae.W_dec, pre, dead_mask, (target - x_hat).detach(), sae.cfg.k_aux or target.shape[1] // 2)
    if aux is not None and sae.cfg.auxk_alpha > 0:
        loss = loss + sae.cfg.auxk_alpha * aux
        metrics["auxk_loss"] = aux.detach()
    fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool, device=pre.device)
    fired[indices[values > 0]] = True  # from the k winners, without a dense (n, n_latents) matrix
    metrics["l0"] = (values > 0).sum(-1).float().mean().detach()
    return TrainOutput(loss=loss, x_hat=x_hat, fired=fired, metrics=metrics)
