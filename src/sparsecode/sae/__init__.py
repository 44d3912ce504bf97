"""Dictionaries (sparse autoencoders) behind one interface: encode, decode, forward, save, load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..io import load_tensors, read_metadata
from .base import SAEConfig, SparseAutoencoder, TrainOutput, geometric_median
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .gated import GatedConfig, GatedSAE
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .matching_pursuit import MatchingPursuitConfig, MatchingPursuitSAE
from .matryoshka import MatryoshkaConfig, MatryoshkaSAE
from .multibudget import MultiBudgetConfig, MultiBudgetSAE
from .relu import ReLUConfig, ReLUSAE
from .topk import TopKConfig, TopKSAE
from .transcoder import Transcoder, TranscoderConfig

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    cls.config_class.arch: cls
    for cls in (
        TopKSAE,
        ReLUSAE,
        BatchTopKSAE,
        JumpReLUSAE,
        GatedSAE,
        MatryoshkaSAE,
        MultiBudgetSAE,
        Transcoder,
        MatchingPursuitSAE,
    )
}


def sae_config_from_dict(d: dict[str, Any], format_version: int | None = None) -> SAEConfig:
    """Build the right config dataclass from a dict with an 'arch' key; ``format_version`` is that of the SAE file
    the dict comes from (fields an older file lacks then take the values it was trained with)."""
    arch = d.get("arch")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ConfigError(f"sae.arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    config_class = ARCHITECTURES[arch].config_class
    return config_class.from_dict(d if format_version is None else config_class.saved_defaults(d, format_version))


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE for ``cfg``."""
    return ARCHITECTURES[cfg.arch](cfg)


def restore_state(sae: SparseAutoencoder, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``sae``, checking every tensor is there with the shape the config implies (a DataError
    naming ``where`` otherwise). Controller buffers that later versions added may be missing: they only steer
    further training, so an older file keeps their initial values."""
    expected = dict(sae.state_dict())
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith("l0_controller."))
    if missing:
        raise DataError(f"{where}: missing tensor(s) {', '.join(missing)}")
    for name, t in expected.items():
        if name in state and state[name].shape != t.shape:
            raise DataError(
                f"{where}: tensor {name} has shape {tuple(state[name].shape)}, config implies {tuple(t.shape)}"
            )
    sae.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE written by ``SparseAutoencoder.save`` (a file, or a run folder holding sae.safetensors)."""
    path = Path(path)
    if path.is_dir():
        path = path / "sae.safetensors"
    meta = read_metadata(path)
    if meta.get("format") != "sparsecode-sae" or "config" not in meta:
        raise DataError(f"{path}: not a sparsecode SAE file (no sparsecode config in its metadata)")
    try:
        version = int(meta.get("format_version", "1"))
    except ValueError:
        raise DataError(f"{path}: format_version {meta['format_version']!r} is not a whole number") from None
    try:
        cfg = sae_config_from_dict(json.loads(meta["config"]), version)
    except json.JSONDecodeError:
        raise DataError(f"{path}: the SAE config in its metadata is not valid JSON") from None
    sae = build_sae(cfg)
    restore_state(sae, load_tensors(path, device="cpu"), str(path))
    sae.upgrade_from(version, str(path))
    return sae.to(device)


__all__ = [
    "ARCHITECTURES",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "GatedConfig",
    "GatedSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "MatchingPursuitConfig",
    "MatchingPursuitSAE",
    "MatryoshkaConfig",
    "MatryoshkaSAE",
    "MultiBudgetConfig",
    "MultiBudgetSAE",
    "ReLUConfig",
    "ReLUSAE",
    "SAEConfig",
    "SparseAutoencoder",
    "TopKConfig",
    "TopKSAE",
    "TrainOutput",
    "Transcoder",
    "TranscoderConfig",
    "build_sae",
    "geometric_median",
    "load_sae",
    "restore_state",
    "sae_config_from_dict",
]
