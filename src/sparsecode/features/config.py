"""What `sparsecode features` computes, as one dataclass (torch-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..configs import check_choice, check_field_types, check_float, check_int
from ..errors import ConfigError


@dataclass
class FeaturesConfig:
    """Settings of one feature-database build."""

    split: str = "eval"
    """Corpus split to read: "eval" (held out from training, the default) or "train"."""
    max_tokens: int | None = None
    """Stop after the chunk that reaches this many tokens; None reads the whole split."""
    top_n: int = 20
    """Top-activating contexts kept per latent (at most one per text chunk)."""
    n_samples: int = 24
    """Firings sampled uniformly at random per latent, from which the lower-quantile contexts are picked."""
    quantile_examples: int = 2
    """Contexts shown per lower-quantile band (bands: 0-25%, 25-50%, 50-75% of the latent's activations)."""
    context_left: int = 12
    """Tokens shown before the token the context is centred on."""
    context_right: int = 6
    """Tokens shown after it."""
    n_logit_tokens: int = 12
    """Tokens the decoder direction promotes (and suppresses) most, through the model's token embeddings."""
    random_contexts: int = 200
    """Token windows at random positions, stored with every latent that fires anywhere in them: the contexts
    `sparsecode explain` knows a latent does not fire on (0: none)."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of tokens counts as dense."""
    batch_tokens: int = 4096
    """Padded tokens (chunks × longest chunk) per forward pass; memory grows with batch_tokens × n_latents."""
    seed: int = 0
    """Seed for the random sample of firings."""
    device: str = "cpu"
    """Torch device for the model and the SAE."""

    def __post_init__(self) -> None:
        check_field_types(self, "features")
        check_choice("features.split", self.split, ("eval", "train"))
        if self.max_tokens is not None:
            check_int("features.max_tokens", self.max_tokens, minimum=1)
        for name in ("top_n", "n_samples", "batch_tokens"):
            check_int(f"features.{name}", getattr(self, name), minimum=1)
        for name in ("quantile_examples", "context_left", "context_right", "n_logit_tokens", "random_contexts"):
            check_int(f"features.{name}", getattr(self, name), minimum=0)
        if self.quantile_examples * len(QUANTILE_BANDS) > self.n_samples:
            raise ConfigError(
                f"features.n_samples ({self.n_samples}) must be at least quantile_examples × "
                f"{len(QUANTILE_BANDS)} bands ({self.quantile_examples * len(QUANTILE_BANDS)})"
            )
        check_float("features.dense_threshold", self.dense_threshold, 0, 1, low_open=True)

    @property
    def window(self) -> int:
        """Tokens per stored context."""
        return self.context_left + 1 + self.context_right

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUANTILE_BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75))
"""Bands of a latent's activation distribution (over its firings) that sampled contexts are shown from."""

QUANTILE_LEVELS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
"""Quantiles of each latent's non-zero activations stored in the database."""
