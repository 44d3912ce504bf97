"""Pieces shared by several architectures: FVU, AuxK revival of dead latents, and the target-L0 controller."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..kernels import EncoderScratch, SparsePattern, encoder_topk, sparse_decode, sparse_fvu
from .base import TrainOutput, data_parallel, total_variance

CANDIDATES_PER_TARGET = 4
"""Per-row candidates of the sparse steps of dictionaries with a target L0 (JumpReLU, Gated), in multiples of the
target: a batch where some row might have more active latents takes the dense step."""


def fvu(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained of the batch, Σ‖y − ŷ‖² / Σ‖y − ȳ‖², differentiable in ``x_hat``; the
    denominator is ``total_variance`` (the global batch's under data-parallel training)."""
    return (x_hat - target).pow(2).sum() / total_variance(target).clamp_min(1e-12)


def penalised_fvu(
    x_hat: torch.Tensor, target: torch.Tensor, coefficient: torch.Tensor | float, penalty: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss (Σ‖y − ŷ‖² + coefficient · Σ penalty) / total_variance, and the FVU (detached): the papers' loss
    ‖y − ŷ‖² + λ·penalty summed over the (n,) rows, divided by the batch's total variance. Dividing a loss by a
    per-batch constant leaves Adam's steps unchanged, so the papers' coefficients carry over, and with
    ``total_variance`` the data-parallel average of the processes' gradients is the global batch's gradient."""
    variance = total_variance(target).clamp_min(1e-12)
    sq_err = (x_hat - target).pow(2).sum()
    return (sq_err + coefficient * penalty.sum()) / variance, (sq_err / variance).detach()


def sparse_penalised_fvu(
    sae: nn.Module,
    latents: torch.Tensor,
    pattern: SparsePattern,
    target: torch.Tensor,
    coefficient: torch.Tensor | float,
    penalty: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``penalised_fvu`` for (n, width) ``latents`` at ``pattern``'s columns, decoded sparsely
    (``kernels.sparse_fvu``): the loss, the FVU (detached) and x_hat."""
    variance = total_variance(target).clamp_min(1e-12)
    with torch.autocast(target.device.type, enabled=False):
        batch_fvu, x_hat = sparse_fvu(latents, pattern, sae.W_dec, sae.b_dec, target, variance)
    return batch_fvu + coefficient * penalty.sum() / variance, batch_fvu.detach(), x_hat


def fired_latents(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """(n_latents,) bool: the latents positive in some row, from (n, width) ``values`` at their ``indices``, without
    a dense (n, n_latents) matrix."""
    fired = torch.zeros(n_latents, dtype=torch.bool, device=values.device)
    fired[indices[values.detach() > 0]] = True
    return fired


def auxk_loss(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the chosen *dead* latents, with (n, k_aux) activations ``values`` at ``indices``,
    model the (n, d_out) ``residual`` the live latents leave (pass it detached); returns the FVU of that fit,
    normalised by ``total_variance`` like the main loss (0 when the residual is exactly zero)."""
    err_hat = sparse_decode(values, SparsePattern(indices, W_dec.shape[0]), W_dec)  # (n, d_out)
    return residual_fvu(err_hat, residual)


def residual_fvu(err_hat: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """AuxK's loss from the dead latents' (n, d_out) reconstruction ``err_hat`` of ``residual``: the FVU,
    normalised by ``total_variance`` like the main loss (0 when the residual is exactly zero)."""
    aux = F.mse_loss(err_hat, residual, reduction="sum") / total_variance(residual).clamp_min(1e-12)
    return torch.nan_to_num(aux, nan=0.0)


def dead_topk(
    pre: torch.Tensor, dead_mask: torch.Tensor | None, k_aux: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The top ``k_aux`` dead latents of dense pre-activations ``pre`` (n, n_latents): ReLU'd values and indices,
    each (n, min(k_aux, n_dead)); None when no latent is dead."""
    if dead_mask is None or not bool(dead_mask.any()):
        return None
    values, indices = pre.masked_fill(~dead_mask, -torch.inf).topk(
        min(k_aux, int(dead_mask.sum())), dim=-1, sorted=False
    )
    return values.relu(), indices


def add_auxk(
    sae: Any,
    pre: torch.Tensor,
    dead_mask: torch.Tensor | None,
    residual: torch.Tensor,
    loss: torch.Tensor,
    metrics: dict[str, torch.Tensor],
) -> torch.Tensor:
    """``loss`` plus ``sae.cfg.auxk_alpha`` × AuxK over the dense ``pre`` (n, n_latents), logging ``auxk_loss``."""
    if sae.cfg.auxk_alpha <= 0:
        return loss
    chosen = dead_topk(pre, dead_mask, sae.cfg.k_aux or residual.shape[1] // 2)
    if chosen is None:
        return loss
    aux = auxk_loss(*chosen, sae.W_dec, residual)
    metrics["auxk_loss"] = aux.detach()
    return loss + sae.cfg.auxk_alpha * aux


def candidate_width(target_l0: float | None, n_latents: int) -> int | None:
    """How many candidates per row a sparse step with this target L0 considers; None (dense steps only) without a
    target, or when the candidates would be more than half of the dictionary (the dense product is as cheap)."""
    if target_l0 is None:
        return None
    width = CANDIDATES_PER_TARGET * math.ceil(target_l0)
    return width if width <= n_latents // 2 else None


@torch.no_grad()
def encoder_candidates(
    sae: nn.Module, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``width`` largest ``(x − b_dec) W_enc + b_enc`` (n, width) and their latents (n, width), with the
    SAE's ``b_dec`` and reused scratch buffers (``kernels.encoder_topk``: the step's one dense product)."""
    scratch = sae.__dict__.setdefault("_scratch", EncoderScratch())  # plain attribute: reused buffers
    return encoder_topk(x, W_enc, b_enc, sae.b_dec, width, scratch=scratch)


@torch.no_grad()
def any_process(flag: torch.Tensor) -> bool:
    """Whether the scalar bool ``flag`` is true in this process or, under data-parallel training, in any."""
    flag = flag.to(torch.uint8).reshape(1)
    if data_parallel():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag[0])


def l0(latents: torch.Tensor) -> torch.Tensor:
    """Mean number of non-zero latents per row (detached), from a dense (n, n_latents) matrix."""
    return (latents > 0).sum(-1).float().mean().detach()


def topk_train_output(
    sae: Any,
    *,
    pre: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    target: torch.Tensor,
    x_hat: torch.Tensor,
    loss: torch.Tensor,
    metrics: dict[str, torch.Tensor],
    dead_mask: torch.Tensor | None,
) -> TrainOutput:
    """Finish a TopK-style training step: add AuxK (``sae.cfg.auxk_alpha``, ``k_aux``) and compute which latents
    fired and the L0 from the (n, k) winners ``values``/``indices`` of ``pre`` (n, n_latents)."""
    metrics = dict(metrics)
    loss = add_auxk(sae, pre, dead_mask, (target - x_hat).detach(), loss, metrics)
    fired = fired_latents(values, indices, sae.cfg.n_latents)
    metrics["l0"] = (values > 0).sum(-1).float().mean().detach()
    return TrainOutput(loss=loss, x_hat=x_hat, fired=fired, metrics=metrics)


class L0Controller(nn.Module):
    """Steers a sparsity coefficient so that the training L0 settles at ``target``, without overshooting.

    Works in log space (the coefficient spans orders of magnitude and never changes sign) on a smoothed
    log L0: an exponential average over ``smoothing`` of training, plus its trend (change per unit of training).
    With e = log(smoothed L0 / target) clipped to ±1, the coefficient is base × exp(I + min(e, 0)), and after
    every step the integral I moves by ``rise`` × Δprogress × e when the L0 is above the target and by ``fall``
    × Δprogress × e when below. The rates are asymmetric because an overshoot is fatal to ReLU-like encoders
    (latents pushed below zero everywhere get no gradient and never come back), while too weak a penalty only
    costs time: the coefficient rises gently (at most e^(rise/10) per 10% of training) and falls four times as
    fast; the proportional term min(e, 0) lowers it at once when the L0 drops below the target, never raises it.
    Anti-windup: while the L0 is above the target but falling fast enough to reach it, at its current trend,
    within ``horizon`` of the remaining training, the integral holds (the L0 lags the coefficient by tens of
    steps, and rising further then is what overshoots). Start the coefficient (the config's value) below what
    the target needs, because early in training a coefficient gives a lower L0 than later: the controller
    reaches ~10x above its start in half of training, any lower value faster. ``start`` is the multiplier the
    coefficient starts at.
    The state lives in buffers, saved with the weights in checkpoints, so a resumed run continues exactly.
    Under data-parallel training the batch L0 is first averaged over the processes, so all apply the same
    coefficient.

    ``penalty`` is how the architecture declares the penalty's shape. ``"linear"`` (above): λ·L0, which can only
    push the L0 down. ``"quadratic"``: λ·T·(L0/T − 1)² of the batch's mean L0 (dictionary_learning's JumpReLU
    trainer, with the factor T making λ the slope per latent at L0 = 1.5·T), which also rewards firing when the
    L0 is below the target T — for encoders whose reconstruction alone settles below it (JumpReLU on uniform
    magnitudes). It is applied as a linear penalty with the signed slope ``coefficient(base, batch_l0)`` =
    λ·2(L0/T − 1) at the (global) batch L0, which gives the quadratic's gradient, also under data-parallel
    training. Its stiffness λ = base × exp(I) only needs to grow: the equilibrium of reconstruction against the
    quadratic lies off the target by an amount that shrinks as λ grows, on either side, so I rises by ``rise`` ×
    Δprogress × |e| unless the L0 is already moving toward the target fast enough (the same hold as above).
    """

    def __init__(
        self,
        target: float,
        rise: float = 5.0,
        fall: float = 20.0,
        smoothing: float = 0.02,
        horizon: float = 0.5,
        start: float = 1.0,
        penalty: str = "linear",
    ) -> None:
        super().__init__()
        if penalty not in ("linear", "quadratic"):
            raise ValueError(f"penalty must be 'linear' or 'quadratic', got {penalty!r}")
        self.target, self.rise, self.fall, self.smoothing, self.horizon = target, rise, fall, smoothing, horizon
        self.penalty = penalty
        self.register_buffer("log_multiplier", torch.full((), math.log(start)))  # the integral I
        self.register_buffer("last_error", torch.zeros(()))  # e of the last update (drives the proportional term)
        self.register_buffer("last_progress", torch.zeros(()))
        self.register_buffer("smoothed_log_l0", torch.full((), torch.nan))  # NaN until the first update
        self.register_buffer("trend", torch.zeros(()))  # d(smoothed log L0) / d(progress)

    def coefficient(self, base: float, batch_l0: torch.Tensor | None = None) -> torch.Tensor:
        """The penalty's slope per active latent in effect (a scalar tensor, no gradient): ``base`` times the
        controller's multiplier; with the quadratic penalty, times 2(L0/T − 1) at this step's ``batch_l0``
        (required then), so it is negative below the target."""
        if self.penalty == "quadratic":
            if batch_l0 is None:
                raise ValueError("the quadratic penalty's slope needs the batch L0")
            return base * self.log_multiplier.exp() * 2.0 * (global_mean(batch_l0) / self.target - 1.0)
        return base * (self.log_multiplier + self.last_error.clamp_max(0.0)).exp()

    @torch.no_grad()
    def update(self, batch_l0: torch.Tensor, progress: float) -> None:
        """Move the multiplier after a step at training ``progress`` (in [0, 1]) whose rows had ``batch_l0``
        active latents on average."""
        log_l0 = global_mean(batch_l0).clamp_min(1e-2).log()  # tensors throughout: no device-to-host sync
        first = self.smoothed_log_l0.isnan()
        step = torch.where(first, 0.0, progress - self.last_progress)  # the first update only starts the average
        weight = torch.where(first, 1.0, (step / self.smoothing).clamp_max(1.0))
        previous = torch.where(first, log_l0, self.smoothed_log_l0)
        smoothed = previous + weight * (log_l0 - previous)
        self.trend.add_(weight * ((smoothed - previous) / step.clamp_min(1e-9) - self.trend))
        distance = smoothed - math.log(self.target)
        error = distance.clamp(-1.0, 1.0)
        # off the target but moving toward it fast enough to reach it within ``horizon`` of the remaining training
        # (for the linear penalty: from above only): hold
        reach = distance.abs() < self.trend.abs() * self.horizon * (1.0 - progress)
        if self.penalty == "quadratic":
            on_course = (distance * self.trend < 0) & reach
            # |e| in units of 10% (the tolerance the trainer checks): an equilibrium 10% off still rises at full rate
            change = torch.where(on_course, 0.0, self.rise) * step * (distance.abs() / 0.1).clamp_max(1.0)
        else:
            on_course = (distance > 0) & (self.trend < 0) & reach
            change = torch.where(distance > 0, torch.where(on_course, 0.0, self.rise), self.fall) * step * error
        self.log_multiplier.add_(change).clamp_(-30.0, 30.0)
        self.smoothed_log_l0.copy_(smoothed)
        self.last_error.copy_(error)
        self.last_progress.fill_(progress)


@torch.no_grad()
def global_mean(batch_l0: torch.Tensor) -> torch.Tensor:
    """The scalar ``batch_l0`` averaged over the data-parallel processes (itself in a single process)."""
    l0 = batch_l0.detach().float().reshape(1).clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(l0)
        l0 /= dist.get_world_size()
    return l0[0]


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
    controller = sae.l0_controller
    if controller is None:
        return torch.as_tensor(base * ramp)
    coefficient = controller.coefficient(base, batch_l0) * ramp
    if sae.training and ramp >= 1.0:
        controller.update(batch_l0, progress)
    return coefficient
