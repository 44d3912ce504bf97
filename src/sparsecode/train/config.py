"""Training hyperparameters as a plain dataclass, saved in the run's config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..configs import check_choice, check_field_types, check_float, check_int, dataclass_from_dict
from ..errors import ConfigError
from .trackers import TRACKERS

DTYPES = ("float32", "bfloat16", "float16")
MAX_DEFAULT_LR = 1e-2
"""Ceiling of the default learning rate: TopK's rule would give 0.077 at 64 latents, where latents die."""


@dataclass
class TrainConfig:
    tokens: int = 2_000_000
    """Training budget in activation rows (tokens); the source is looped if it has fewer."""
    batch_size: int = 4096
    """Rows per optimizer step."""
    lr: float | None = None
    """Adam peak learning rate; None means the architecture's default (``SAEConfig.base_lr``: 4.8e-3 for the TopK
    family and ReLU, 4.2e-3 for JumpReLU, 1.8e-3 for Gated) times 1/sqrt(n_latents / 2**14), tuned on runs of
    0.5-2M tokens."""
    beta1: float = 0.9
    """Adam β1."""
    beta2: float = 0.999
    """Adam β2."""
    warmup_steps: int | None = None
    """Linear learning-rate warmup from 0, in steps; None means min(50, total_steps // 10)."""
    decay_fraction: float = 0.2
    """The learning rate decays linearly to 0 over this final fraction of the steps."""
    buffer_rows: int = 131072
    """Shuffle buffer size in rows (memory = buffer_rows × d_in × 4 bytes); rounded down to whole batches."""
    data_shards: int | None = None
    """The activation stream is read as this many interleaved shards (see ``ActivationStore``); data-parallel
    processes split the shards between them and each reads only its own. None means the number of processes
    at the start of the run. The data order depends on this number only, so a run resumes with any number
    of processes (those that divide it read their own shards; others read everything and keep their rows)."""
    seed: int = 0
    """Seed for data order (and, via the SAE config, initialisation)."""
    dead_tokens: int = 1_000_000
    """A latent that has not fired on this many consecutive training tokens counts as dead (AuxK)."""
    normalize_inputs: bool = True
    """Scale inputs so that E‖x‖² = d_in during training; the scale is folded back into the saved SAE."""
    init_rows: int = 16384
    """Rows read at the start to estimate the input scale and the decoder bias."""
    checkpoint_every: int = 200
    """Write a resumable checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Append a line to metrics.jsonl every this many steps."""
    device: str = "cpu"
    """Torch device for training, e.g. 'cpu', 'cuda', 'cuda:1'."""
    dtype: str = "float32"
    """Precision of the dense products (autocast): 'float32', 'bfloat16' or 'float16'. Weights, optimizer state
    and a TopK step's sparse parts stay float32; bfloat16 pays on GPUs and CPUs with bf16 units."""
    log: str | None = None
    """Also send the metrics rows to an experiment tracker: 'tensorboard' (RUN/tensorboard/) or 'wandb' (offline
    with WANDB_MODE=offline); metrics.jsonl is written either way. Needs ``pip install 'sparsecode[trackers]'``."""

    def __post_init__(self) -> None:
        check_field_types(self, "train")
        for name in (
            "tokens",
            "batch_size",
            "buffer_rows",
            "checkpoint_every",
            "log_every",
            "init_rows",
            "dead_tokens",
        ):
            check_int(f"train.{name}", getattr(self, name), minimum=1)
        if self.batch_size > self.tokens:
            raise ConfigError(f"train.batch_size ({self.batch_size}) is larger than train.tokens ({self.tokens})")
        if self.buffer_rows < self.batch_size:
            raise ConfigError(f"train.buffer_rows ({self.buffer_rows}) must be >= train.batch_size ({self.batch_size})")
        if self.data_shards is not None and (self.data_shards < 1 or self.batch_size % self.data_shards):
            raise ConfigError(
                f"train.data_shards ({self.data_shards}) must be >= 1 and divide train.batch_size ({self.batch_size})"
            )
        check_choice("train.dtype", self.dtype, DTYPES)
        if self.log is not None:
            check_choice("train.log", self.log, TRACKERS)
        if self.lr is not None:
            check_float("train.lr", self.lr, 0, 1, low_open=True, high_open=True)
        check_float("train.decay_fraction", self.decay_fraction, 0, 1)
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.total_steps:
            raise ConfigError(
                f"train.warmup_steps ({self.warmup_steps}) must be >= 0 and below the total steps "
                f"({self.total_steps} = tokens / batch_size); lower it or raise the token budget"
            )
        for b in ("beta1", "beta2"):
            check_float(f"train.{b}", getattr(self, b), 0, 1, high_open=True)

    @property
    def total_steps(self) -> int:
        """Optimizer steps for the token budget."""
        return math.ceil(self.tokens / self.batch_size)

    @property
    def warmup(self) -> int:
        """Warmup steps in effect."""
        return self.warmup_steps if self.warmup_steps is not None else min(50, self.total_steps // 10)

    def learning_rate(self, n_latents: int, base_lr: float = 6e-4) -> float:
        """The peak learning rate: ``lr``, or the architecture's ``base_lr`` scaled to the dictionary size and
        capped at ``MAX_DEFAULT_LR`` (the 1/sqrt scaling explodes for toy dictionaries of a few dozen latents)."""
        if self.lr is not None:
            return self.lr
        return min(base_lr / math.sqrt(n_latents / 2**14), MAX_DEFAULT_LR)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at ``step``: linear warmup, flat, linear decay to 0."""
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        decay_steps = int(self.total_steps * self.decay_fraction)
        decay_start = self.total_steps - decay_steps
        if decay_steps > 0 and step >= decay_start:
            return max(0.0, (self.total_steps - step) / decay_steps)
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, d, "train")
