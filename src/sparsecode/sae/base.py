"""The interface every dictionary implements, and what they share: weights, init, save/load.

Weights follow one convention for every architecture::

    pre  = (x - b_dec) @ W_enc + b_enc      # (n, n_latents)
    f    = activation(pre)                  # (n, n_latents), sparse, non-negative
    x_hat = f @ W_dec + b_dec               # (n, d_in)

``W_dec`` rows are the dictionary's feature directions (unit norm unless told otherwise).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from ..configs import check_choice, check_field_types, check_int, dataclass_from_dict
from ..errors import ConfigError
from ..io import save_tensors
from ..kernels import project_out_rows_

FORMAT_VERSION = 3
"""2: JumpReLU's relative thresholds and BatchTopK's relative ranking also divide by the encoder column norm
(files of version 1 are upgraded on load by ``upgrade_from``). 3: Matryoshka ranks with BatchTopK by default
(older files, ranked per row, load with ``batch_topk`` false: ``SAEConfig.saved_defaults``)."""


@dataclass
class SAEConfig:
    """Fields shared by every architecture. Subclasses add their own (one file per architecture)."""

    d_in: int
    """Width of the input activations."""
    n_latents: int
    """Number of dictionary atoms (latents)."""
    unit_norm_decoder: bool = True
    """Keep every decoder row at unit L2 norm (renormalised after each optimizer step)."""
    b_dec_init: str = "geometric_median"
    """How the decoder bias is initialised from data: 'geometric_median', 'mean' or 'zeros'."""
    seed: int = 0
    """Seed for the weight initialisation."""

    arch: ClassVar[str] = ""
    base_lr: ClassVar[float] = 6e-4
    """Default Adam peak learning rate at 2**14 latents (scaled by 1/sqrt(n_latents / 2**14)) when train.lr is
    not given. Per architecture: penalty-trained dictionaries collapse at rates TopK trains best with."""

    @property
    def plain_topk(self) -> bool:
        """A plain TopK SAE at inference (each row's k largest pre-activations, nothing else to keep), so a format
        with only TopK SAEs holds it whole."""
        return False

    def __post_init__(self) -> None:
        check_field_types(self, "sae")
        check_int("sae.d_in", self.d_in, minimum=1)
        check_int("sae.n_latents", self.n_latents, minimum=1)
        check_choice("sae.b_dec_init", self.b_dec_init, ("geometric_median", "mean", "zeros"))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, **asdict(self)}

    @classmethod
    def saved_defaults(cls, d: dict[str, Any], format_version: int) -> dict[str, Any]:
        """``d``, the config of a file of ``format_version``, with the values older files were trained with for
        fields whose default changed since (nothing to add for most architectures)."""
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        d = {k: v for k, v in d.items() if k != "arch"}
        return dataclass_from_dict(cls, d, "sae", f"for arch '{cls.arch}'")


@dataclass
class TrainOutput:
    """What one training forward returns to the trainer."""

    loss: torch.Tensor
    """Scalar loss to minimise."""
    x_hat: torch.Tensor
    """(n, d_in) reconstruction."""
    fired: torch.Tensor
    """(n_latents,) bool: which latents were active on at least one row of the batch."""
    metrics: dict[str, torch.Tensor]
    """Scalars worth logging (detached), e.g. fvu, l0, auxk_loss."""


class SparseAutoencoder(nn.Module):
    """Base class: shared weights, initialisation, decoder normalisation and (de)serialisation."""

    config_class: ClassVar[type[SAEConfig]] = SAEConfig

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        W_dec = torch.randn(cfg.n_latents, cfg.d_in, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)  # (n_latents, d_in)
        # (d_in, n_latents), starting as the decoder's transpose and stored latent-major (its transpose is
        # contiguous): the sparse backward builds dW_enc one latent at a time, so it lands in this layout without
        # a transposing copy. Files hold the row-major form; loading copies into this layout.
        self.W_enc = nn.Parameter(W_dec.clone().T)
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        # Dictionaries trained toward a target L0 replace this with their L0Controller (a submodule).
        self.l0_controller: nn.Module | None = None

    # -- the interface -------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_in) -> (n, n_latents) encoder pre-activations, (x - b_dec) @ W_enc + b_enc.

        Written as x @ W_enc - b_dec @ W_enc so that b_dec's gradient costs a vector-matrix product
        instead of a second (n, n_latents) x (n_latents, d_in) GEMM in the backward pass.
        """
        return x @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_in) -> (n, n_latents) sparse non-negative latent activations."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, n_latents) -> (n, d_in) reconstruction."""
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_in) -> (n, d_in) reconstruction of x."""
        return self.decode(self.encode(x))

    transform = encode  # scikit-learn spelling

    @property
    def budgets(self) -> list[int]:
        """The sparsity budgets ``encode_at`` was trained for; empty for a single-budget dictionary (eval reports
        the metrics at each budget when there are any)."""
        return []

    def reconstruct(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """(n, d_in) inputs and their (n, n_latents) latents -> (n, d_out) output; the decoder alone, except for
        dictionaries with a path that bypasses the latents (a transcoder's skip connection)."""
        return self.decode(latents)

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        """Loss and diagnostics for one batch. ``progress`` in [0, 1] is the fraction of training done;
        ``dead_mask`` (n_latents,) marks latents that have not fired for a while; ``target`` (n, d_out) is what
        to reconstruct (transcoders), None meaning ``x`` itself. Normalise losses with ``total_variance`` (or
        per-row means) so data-parallel gradients average to the global one."""
        raise NotImplementedError

    # -- shared training helpers ---------------------------------------------------------------
    @torch.no_grad()
    def initialize_from_data(self, sample: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Set ``b_dec`` from a data sample (geometric median or mean), per ``cfg.b_dec_init``; from the paired
        ``target`` sample when the dictionary predicts another activation (transcoders)."""
        sample = (sample if target is None else target).to(self.b_dec.device, torch.float32)
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(sample))
        elif self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(sample.mean(0))

    def lr_multipliers(self) -> dict[str, float]:
        """Parameters (by name) that train at a multiple of the peak learning rate; the rest train at 1x.
        The trainer puts them in their own optimizer group, after the others (so checkpoints of dictionaries whose
        such parameters were registered last keep their optimizer-state order)."""
        return {}

    def unit_norm_rows(self) -> list[nn.Parameter]:
        """The weights whose rows training keeps at unit norm: the decoder, unless ``cfg.unit_norm_decoder`` is
        off. The trainer's optimizer projects their gradients and rescales their rows in its step (the same
        as ``remove_parallel_grad_`` before and ``normalize_decoder_`` after a plain optimizer's step)."""
        return [self.W_dec] if self.cfg.unit_norm_decoder else []

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (no-op unless ``cfg.unit_norm_decoder``)."""
        if self.cfg.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of each decoder row's gradient that would only change its norm."""
        if self.cfg.unit_norm_decoder and self.W_dec.grad is not None:
            project_out_rows_(self.W_dec.grad, self.W_dec)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Make an SAE trained on ``scale * x`` act on raw ``x`` (transcoders also take the target's scale).

        The activations are positively homogeneous, so dividing b_enc, b_dec (and any thresholds,
        see ``_fold_extra``) by ``scale`` yields latents = trained latents / scale and x_hat in raw units,
        while decoder rows keep unit norm.
        """
        if target_scale is not None and target_scale != scale:
            raise ConfigError(
                f"a {self.cfg.arch} SAE reconstructs its input: one scale, not {scale} and {target_scale}"
            )
        self.b_enc /= scale
        self.b_dec /= scale
        self._fold_extra(scale)

    def finish_training_(self) -> None:
        """Called once when training ends, before ``fold_input_scale_``: architectures that train with free decoder
        rows move the rows' norms into the latents here (see ``ReLUSAE``); nothing to do for most."""

    def train(self, mode: bool = True) -> SparseAutoencoder:
        if not mode:  # the sparse training steps' scratch buffers (``kernels.EncoderScratch``) are not needed
            self.__dict__.pop("_scratch", None)
        return super().train(mode)

    def _fold_extra(self, scale: float) -> None:
        """Architectures with thresholds or other input-scaled parameters fold them here."""

    def upgrade_from(self, format_version: int, where: str) -> None:
        """Make weights loaded from a file of an older ``format_version`` act as they did when saved (a DataError
        naming ``where`` when that is impossible); nothing to do for most architectures."""

    # -- save / load -------------------------------------------------------------------------
    def save(self, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
        """Write weights and config to one safetensors file, atomically."""
        meta = {
            "format": "sparsecode-sae",
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(self.cfg.to_dict()),
        }
        meta.update(extra_metadata or {})
        save_tensors(path, dict(self.state_dict()), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
        """Load any architecture from a file written by ``save`` (dispatches on its config)."""
        from . import load_sae

        return load_sae(path, device=device)


def data_parallel() -> bool:
    """Whether this process is one of several in an initialised torch.distributed group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def total_variance(x: torch.Tensor) -> torch.Tensor:
    """Σ‖x_i − mean‖² over the batch: the FVU denominator.

    Under data-parallel training (torch.distributed initialised, several processes) each process holds
    a slice of the global batch; this returns the *global* batch's total variance divided by the number of
    processes, so that each process's ``Σ err² / total_variance`` is its share of the global FVU times the
    world size, and the average of the processes' gradients is the gradient of the global FVU.
    """
    if not data_parallel():
        return (x - x.mean(0)).square().sum()  # ~10x faster than x.var(0) on the CPU
    world = dist.get_world_size()
    stats = torch.cat([x.sum(0), x.new_tensor([x.shape[0]])]).double()  # (d + 1,)
    dist.all_reduce(stats)
    mean = (stats[:-1] / stats[-1]).to(x.dtype)
    local = (x - mean).pow(2).sum().double().reshape(1)
    dist.all_reduce(local)
    return (local[0] / world).to(x.dtype)


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to ``points`` (n, d)."""
    device = points.device
    points = points.detach().cpu().double()  # float64 on the CPU: small sample, and not every accelerator has it
    median = points.mean(0)
    for _ in range(max_iter):
        dist = (points - median).norm(dim=1).clamp_min(1e-12)  # (n,)
        w = 1.0 / dist
        new = (w[:, None] * points).sum(0) / w.sum()
        if (new - median).norm() <= tol * max(1.0, median.norm().item()):
            median = new
            break
        median = new
    return median.float().to(device)
