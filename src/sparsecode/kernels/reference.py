"""Plain-torch reference implementations of the TopK family's training loss, written the obvious way: dense
pre-activations, dense latents, dense matrix products. Slow (three more (n, d) × (d, n_latents) products than the
sparse step), but easy to check by eye; the fast paths (``encoder_topk``, ``sparse_fvu``, ``DeadLatents``, the
compiled kernels) are tested against them (``tests/test_kernels.py``).

- TopK (Gao et al. 2024): each row keeps its ``k`` largest pre-activations, ReLU'd; the loss is the FVU.
- AuxK: each row's ``k_aux`` largest pre-activations among the dead latents model the residual the live latents
  leave; ``auxk_alpha`` × the FVU of that fit is added.
- Matryoshka: the winners (ranked over the whole dictionary) inside each nested prefix reconstruct on their own;
  the loss is the whole dictionary's FVU plus the mean of the smaller prefixes' FVUs.
- Multi-budget: the b largest winners reconstruct on their own for each budget b; the loss averages the FVUs.
"""

from __future__ import annotations

import torch


def pre_activations(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """(n, n_latents) ``(x − b_dec) W_enc + b_enc``."""
    return (x - b_dec) @ W_enc + b_enc


def topk_latents(pre: torch.Tensor, k: int) -> torch.Tensor:
    """(n, n_latents) dense latents: each row's ``k`` largest pre-activations, ReLU'd, zero elsewhere."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def fvu(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ‖x_hat − target‖² / Σ‖target − mean‖² over the batch."""
    return (x_hat - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()


def auxk(
    pre: torch.Tensor, dead: torch.Tensor, k_aux: int, W_dec: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """The FVU of ``residual`` (n, d_out) modelled by each row's top ``min(k_aux, n_dead)`` dead latents (``dead``:
    (n_latents,) bool), ReLU'd, through the decoder alone; the denominator at least 1e-12 (a zero residual fitted
    by zero costs 0)."""
    latents = topk_latents(pre.masked_fill(~dead, -torch.inf), min(k_aux, int(dead.sum())))
    err_hat = latents @ W_dec  # (n, d_out)
    return (err_hat - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)


def topk_loss(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    k: int,
    *,
    target: torch.Tensor | None = None,
    dead: torch.Tensor | None = None,
    k_aux: int | None = None,
    auxk_alpha: float = 1 / 32,
    prefixes: list[int] | None = None,
    budgets: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, x_hat) of a TopK dictionary with ``weights`` W_enc (d, m), b_enc (m,), b_dec (d_out,), W_dec (m, d_out)
    on input ``x`` (n, d) reconstructing ``target`` (n, d_out; default ``x``).

    ``prefixes`` (Matryoshka): the nested prefix sizes below m (the whole dictionary is added last), the loss
    the whole dictionary's FVU plus the mean of the prefixes' FVUs. ``budgets`` (multi-budget, the last equal to ``k``): the loss the mean of their FVUs. AuxK
    (``k_aux``, default d // 2) runs when ``dead`` marks any latent; its residual is that of the last
    reconstruction (the whole dictionary, or the largest budget), which is also the x_hat returned.
    """
    target = x if target is None else target
    W_enc, b_enc, b_dec, W_dec = (weights[name] for name in ("W_enc", "b_enc", "b_dec", "W_dec"))
    pre = pre_activations(x, W_enc, b_enc, b_dec)  # (n, m)
    if budgets is not None:
        codes = [topk_latents(pre, b) for b in budgets]  # the b largest of the k winners
    else:
        latents = topk_latents(pre, k)
        sizes = [*(prefixes or []), pre.shape[1]]
        codes = [latents * (torch.arange(pre.shape[1], device=pre.device) < size) for size in sizes]
    x_hats = [code @ W_dec + b_dec for code in codes]
    losses = torch.stack([fvu(x_hat, target) for x_hat in x_hats])
    if budgets is not None:
        loss = losses.mean()
    else:  # Matryoshka (TopK when there are no prefixes): the whole dictionary + the mean of the smaller prefixes
        loss = losses[-1] + (losses[:-1].mean() if len(losses) > 1 else 0.0)
    x_hat = x_hats[-1]
    if dead is not None and bool(dead.any()):
        loss = loss + auxk_alpha * auxk(pre, dead, k_aux or x.shape[1] // 2, W_dec, (target - x_hat).detach())
    return loss, x_hat
