"""What every reader returns, and the weight conversions they share.

Peer libraries write the same few tensors under different names, layouts and conventions. sparsecode's one
convention (see ``sae/base.py``) is ``pre = (x - b_dec) @ W_enc + b_enc``; a peer that does not subtract ``b_dec``
first (``x @ W_enc + b_enc``) is brought to it exactly by folding: ``b_enc' = b_enc + b_dec @ W_enc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError
from ..sae import SAEConfig, SparseAutoencoder, build_sae, restore_state


@dataclass
class ImportedDictionary:
    """A dictionary read from another library's files, as a sparsecode SAE acting on raw activations."""

    sae: SparseAutoencoder
    """The converted dictionary (eval mode, float32, on the CPU)."""
    format: str
    """The format it was read from: saelens, sparsify, dictionary_learning, gemmascope or sparsecode."""
    path: Path
    """The folder or file it was read from."""
    hook: str | None = None
    """Where it reads activations, as the peer named it (a TransformerLens name or a module path); None if unknown."""
    hook_out: str | None = None
    """Transcoders: where its prediction goes (the target), as the peer named it; None if unknown or not one."""
    model: str | None = None
    """The model it was trained on, as the peer named it (hub id or TransformerLens name); None if unknown."""
    notes: list[str] = field(default_factory=list)
    """What the conversion did that a user may want to know (folded biases, decoder norms, ...)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_in) -> (n, n_latents)."""
        return self.sae.encode(x)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, n_latents) -> (n, d_out)."""
        return self.sae.decode(latents)


def as_float(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating tensor as float32 (peers save bfloat16/float16/float64 too); integer buffers kept."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}


def require(tensors: dict[str, torch.Tensor], names: list[str], where: str) -> None:
    """A DataError naming the missing tensors, if any."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DataError(f"{where}: missing tensor(s) {', '.join(missing)}")


def check_shape(t: torch.Tensor, shape: tuple[int, ...], name: str, where: str, config: str) -> None:
    """A DataError when ``t`` does not have the shape ``config`` implies."""
    if tuple(t.shape) != shape:
        raise DataError(f"{where}: tensor {name} has shape {tuple(t.shape)}, {config} implies {shape}")


def centred_bias(W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """The ``b_enc`` that makes ``(x - b_dec) @ W_enc + b_enc`` equal a peer's ``x @ W_enc + b_enc``: (n_latents,).
    Computed in float64 so that folding adds no error beyond float32 rounding."""
    return (b_enc.double() + b_dec.double() @ W_enc.double()).float()


def log_threshold(threshold: torch.Tensor) -> torch.Tensor:
    """sparsecode's JumpReLU stores log θ. A peer's θ <= 0 lets every positive pre-activation through, as the
    smallest positive float does (the two differ only on pre-activations below 1e-38)."""
    tiny = torch.finfo(torch.float32).tiny
    return threshold.double().clamp_min(tiny).log().float()


def threshold_from_log(log_theta: torch.Tensor) -> torch.Tensor:
    return log_theta.double().exp().float()


def unit_rows(W_dec: torch.Tensor, tol: float = 1e-4) -> bool:
    """Whether every decoder row has unit norm (then training may keep them there)."""
    return bool(((W_dec.norm(dim=1) - 1).abs() <= tol).all())


def assemble(cfg: SAEConfig, tensors: dict[str, torch.Tensor], where: str) -> SparseAutoencoder:
    """A sparsecode SAE for ``cfg`` holding ``tensors`` (every tensor its state needs, shapes checked)."""
    sae = build_sae(cfg)
    restore_state(sae, tensors, where)
    return sae.eval()


def positive_int(value: object, name: str, where: str) -> int:
    """A config value that must be a whole number >= 1 (JSON ints; integer tensors)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{where}: {name} must be a whole number >= 1, got {value!r}")
    return value


def finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """A DataError naming the first tensor holding NaN or infinity."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(f"{where}: tensor {name} holds NaN or infinite values")
