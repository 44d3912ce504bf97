"""Pieces shared by several architectures: FVU, AuxK revival of dead latents, and the target-L0 controller."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import TrainOutput, total_variance
from .sparse import SparsePattern, sparse_decode


def fvu(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained of the batch: Σ‖y − ŷ‖² / Σ‖y − ȳ‖² (differentiable)."""
    return (x_hat - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)


def auxk_loss(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
              residual: torch.Tensor) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the chosen *dead* latents, with (n, k_aux) activations ``values`` at ``indices``,
    model the (n, d_out) ``residual`` the live latents leave (pass it detached); returns the FVU of that fit,
    normalised by ``total_variance`` like the main loss (0 when the residual is exactly zero)."""
    err_hat = sparse_decode(values, SparsePattern(indices, W_dec.shape[0]), W_dec)  # (n, d_out)
    aux = F.mse_loss(err_hat, residual, reduction="sum") / total_variance(residual).clamp_min(1e-12)
    return torch.nan_to_num(aux, nan=0.0)


def dead_topk(pre: torch.Tensor, dead_mask: torch.Tensor | None,
              k_aux: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The top ``k_aux`` dead latents of dense pre-activations ``pre`` (n, n_latents): ReLU'd values and indices,
    each (n, min(k_aux, n_dead)); None when no latent is dead."""
    if dead_mask is None or not bool(dead_mask.any()):
        return None
    values, indices = pre.masked_fill(~dead_mask, -torch.inf).topk(min(k_aux, int(dead_mask.sum())), dim=-1,
                                                                   sorted=False)
    return values.relu(), indices


def add_auxk(sae: Any, pre: torch.Tensor, dead_mask: torch.Tensor | None, residual: torch.Tensor,
             loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """``loss`` plus ``sae.cfg.auxk_alpha`` × AuxK over the dense ``pre`` (n, n_latents), logging ``auxk_loss``."""
    if sae.cfg.auxk_alpha <= 0:
        return loss
    chosen = dead_topk(pre, dead_mask, sae.cfg.k_aux or residual.shape[1] // 2)
    if chosen is None:
        return loss
    aux = auxk_loss(*chosen, sae.W_dec, residual)
    metrics["auxk_loss"] = aux.detach()
    return loss + sae.cfg.auxk_alpha * aux


def l0(latents: torch.Tensor) -> torch.Tensor:
    """Mean number of non-zero latents per row (detached), from a dense (n, n_latents) matrix."""
    return (latents > 0).sum(-1).float().mean().detach()


def topk_train_output(sae: Any, *, pre: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                      target: torch.Tensor, x_hat: torch.Tensor, loss: torch.Tensor, metrics: dict[str, torch.Tensor],
                      dead_mask: torch.Tensor | None) -> TrainOutput:
    """Finish a TopK-style training step: add AuxK (``sae.cfg.auxk_alpha``, ``k_aux``) and compute which latents
    fired and the L0 from the (n, k) winners ``values``/``indices`` of ``pre`` (n, n_latents)."""
    metrics = dict(metrics)
    loss = add_auxk(sae, pre, dead_mask, (target - x_hat).detach(), loss, metrics)
    fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool, device=pre.device)
    fired[indices[values > 0]] = True  # from the k winners, without a dense (n, n_latents) matrix
    metrics["l0"] = (values > 0).sum(-1).float().mean().detach()
    return TrainOutput(loss=loss, x_hat=x_hat, fired=fired, metrics=metrics)


class L0Controller(nn.Module):
    """Steers a sparsity coefficient so that the training L0 settles at ``target``.

    A proportional-integral controller in log space, on the error e = log(batch L0 / target) clipped to ±1:
    log coefficient = log base + I + e, and after every step I moves by r × e, with r = ``speed`` × (fraction
    of training the step covers) but at most ``max_rate``. In log space the coefficient spans orders of
    magnitude and never changes sign. The L0 lags the coefficient by tens of steps, and an overshoot is fatal
    to ReLU-like encoders (latents pushed below zero everywhere get no gradient and never come back), so the
    integral moves slowly: at most e^(speed / 100) per 1% of training and e^max_rate per step (a 1M-token run
    of 244 steps can still move it ~10x); the proportional term reacts at once when the L0 crosses the
    target, damping the oscillation. A coefficient that starts within ~10x of what the target needs is
    reached within ~100 steps. The state (integral, last error, progress of the last update) lives in
    buffers, saved with the weights in checkpoints, so a resumed run continues exactly. Under data-parallel
    training the batch L0 is first averaged over the processes, so all apply the same coefficient.
    """

    def __init__(self, target: float, speed: float = 12.0, max_rate: float = 0.01) -> None:
        super().__init__()
        self.target = target
        self.speed = speed
        self.max_rate = max_rate
        self.register_buffer("log_multiplier", torch.zeros(()))  # the integral term
        self.register_buffer("last_error", torch.zeros(()))
        self.register_buffer("last_progress", torch.zeros(()))

    def coefficient(self, base: float) -> torch.Tensor:
        """The coefficient in effect: ``base`` times the controller's multiplier (a scalar tensor, no gradient)."""
        return base * (self.log_multiplier + self.last_error).exp()

    @torch.no_grad()
    def update(self, batch_l0: torch.Tensor, progress: float) -> None:
        """Move the multiplier after a step at training ``progress`` (in [0, 1]) whose rows had ``batch_l0``
        active latents on average."""
        l0 = batch_l0.detach().float().reshape(1).clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(l0)
            l0 /= dist.get_world_size()
        error = (l0[0].clamp_min(1e-2) / self.target).log().clamp(-1.0, 1.0)  # a tensor: no device-to-host sync
        rate = (self.speed * (progress - self.last_progress)).clamp(0.0, self.max_rate)
        self.log_multiplier.add_(rate * error).clamp_(-30.0, 30.0)
        self.last_error.copy_(error)
        self.last_progress.fill_(progress)


def check_target_l0(cfg: Any) -> None:
    """Reject a config's ``target_l0`` outside (0, n_latents]."""
    if cfg.target_l0 is not None and not 0 < cfg.target_l0 <= cfg.n_latents:
        raise ConfigError(f"sae.target_l0 must be in (0, n_latents={cfg.n_latents}], got {cfg.target_l0}")


def steered(sae: nn.Module, base: float, warmup: float, progress: float, batch_l0: torch.Tensor) -> torch.Tensor:
    """This step's sparsity coefficient: ``base`` ramped linearly from 0 over the first ``warmup`` fraction of
    training, times the multiplier of the SAE's ``l0_controller`` if it has one (a target L0). In training mode
    the controller then moves toward the target from this step's ``batch_l0``, once the ramp is over (during it
    the L0 says little about the coefficient)."""
    ramp = 1.0 if warmup == 0 else min(1.0, progress / warmup)
    controller = getattr(sae, "l0_controller", None)
    if controller is None:
        return torch.as_tensor(base * ramp)
    coefficient = controller.coefficient(base) * ramp
    if sae.training and ramp >= 1.0:
        controller.update(batch_l0, progress)
    return coefficient
