"""Synthetic superposition data with known ground-truth features.

Model (all draws seeded, so every row is reproducible):

* ``true_features`` F: ``n_features`` random unit vectors in R^``dim`` (Gaussian, normalized), the
  same for both splits.
* codes c (one row of ``n_features``): feature j is *on* with probability p = active / n_features.
  Without correlation each feature draws independently. With ``correlation`` = rho > 0, features
  are split into random groups of ``group_size``; each group makes one shared Bernoulli(p) draw per
  row, and each feature copies its group's draw with probability sqrt(rho), else draws its own.
  Each feature is still on with probability exactly p, and the on/off indicators of two features in
  the same group have Pearson correlation exactly rho (features in different groups: independent).
* magnitudes of on features: "uniform" U(0, 1) (as in Toy Models of Superposition), "exponential" Exp(mean 1), "constant" 1.
* x = c @ F + noise * N(0, I).

The stream is unbounded. Chunk k of a split (rows k*chunk_rows ..) is generated from its own
generator seeded by (seed, split, k), so starting at any row is O(1). Train and eval use different
code seeds but the same features.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch

from ..configs import check_choice, check_float, check_int
from ..errors import ConfigError
from .base import ActivationBatch, SourceBase, SourceConfigBase, check_split

MAGNITUDES = ("uniform", "exponential", "constant")

_MAX_BLOCK_ELEMENTS = 1 << 24
"""Chunks are generated in row blocks of at most this many code entries (bounds memory)."""


@dataclass(kw_only=True)
class SyntheticSourceConfig(SourceConfigBase):
    """Sparse combinations of known random directions (see the module docstring for the model)."""

    kind: ClassVar[str] = "synthetic"

    n_features: int = 512
    """Number of ground-truth features."""
    dim: int = 64
    """Width of each row (d_in); fewer dims than features means superposition."""
    active: float = 5.0
    """Expected number of active features per row (0 < active <= n_features)."""
    magnitude: str = "uniform"
    """Magnitude of an active feature: "uniform" U(0, 1) (as in Toy Models of Superposition), "exponential" Exp(mean 1) or "constant" 1."""
    correlation: float = 0.0
    """Pearson correlation, in [0, 1], between the on/off indicators of two features of the same group."""
    group_size: int = 4
    """Features per correlated group (only used when correlation > 0)."""
    noise: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to every row."""
    seed: int = 0
    """Seeds the features and all codes."""
    chunk_rows: int = 16384
    """Rows per independently seeded chunk."""

    def known_d_in(self) -> int | None:
        return self.dim

    def __post_init__(self) -> None:
        check_int("source.n_features", self.n_features, minimum=1)
        check_int("source.dim", self.dim, minimum=1)
        self.active = check_float("source.active", self.active, 0.0, low_open=True)
        if self.active > self.n_features:
            raise ConfigError(f"source.active {self.active:g} exceeds source.n_features {self.n_features}; lower it")
        check_choice("source.magnitude", self.magnitude, MAGNITUDES)
        self.correlation = check_float("source.correlation", self.correlation, 0.0, 1.0)
        check_int("source.group_size", self.group_size, minimum=1)
        self.noise = check_float("source.noise", self.noise, 0.0)
        check_int("source.seed", self.seed, minimum=0)
        check_int("source.chunk_rows", self.chunk_rows, minimum=1)


_SPLIT_CODES = {"train": 0, "eval": 1}
_FEATURES_STREAM = 2  # distinct from the split codes


def _generator(*key: int) -> torch.Generator:
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class SyntheticSource(SourceBase):
    """Unbounded deterministic stream of synthetic rows; batches carry the true ``codes``."""

    has_true_features: ClassVar[bool] = True

    def __init__(self, config: SyntheticSourceConfig):
        self.config = config
        g = _generator(config.seed, _FEATURES_STREAM)
        feats = torch.randn(config.n_features, config.dim, generator=g)  # (n_features, dim)
        self._features = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
        perm = torch.randperm(config.n_features, generator=g)
        self._group_of = torch.empty(config.n_features, dtype=torch.long)  # (n_features,)
        self._group_of[perm] = torch.arange(config.n_features) // config.group_size
        self._n_groups = math.ceil(config.n_features / config.group_size)

    @property
    def d_in(self) -> int:
        return self.config.dim

    @property
    def true_features(self) -> torch.Tensor:
        """(n_features, dim) unit-norm ground-truth directions."""
        return self._features

    def num_rows(self, split: str = "train") -> None:
        check_split(split)

    def _block(self, split: str, chunk: int, block: int, rows: int) -> ActivationBatch:
        c = self.config
        g = _generator(c.seed, _SPLIT_CODES[split], chunk, block)
        p = c.active / c.n_features
        on = torch.rand(rows, c.n_features, generator=g) < p  # (rows, n_features)
        if c.correlation > 0:
            shared = torch.rand(rows, self._n_groups, generator=g) < p  # (rows, n_groups)
            copy = torch.rand(rows, c.n_features, generator=g) < math.sqrt(c.correlation)  # (rows, n_features)
            on = torch.where(copy, shared[:, self._group_of], on)
        if c.magnitude == "uniform":
            mags = torch.rand(rows, c.n_features, generator=g)
        elif c.magnitude == "exponential":
            mags = torch.empty(rows, c.n_features).exponential_(1.0, generator=g)
        else:
            mags = torch.ones(rows, c.n_features)
        codes = torch.where(on, mags, 0.0)  # (rows, n_features)
        acts = codes @ self._features  # (rows, dim)
        if c.noise > 0:
            acts = acts + c.noise * torch.randn(rows, c.dim, generator=g)
        return ActivationBatch(acts=acts, codes=codes)

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        """Rows ``start_row, start_row+1, ...`` of ``split``, forever."""
        check_split(split)
        check_int("start_row", start_row, minimum=0)
        c = self.config
        block_rows = max(1, min(c.chunk_rows, _MAX_BLOCK_ELEMENTS // c.n_features))
        chunk, offset = divmod(start_row, c.chunk_rows)
        while True:
            for b, a in enumerate(range(0, c.chunk_rows, block_rows)):
                rows = min(block_rows, c.chunk_rows - a)
                if a + rows <= offset:
                    continue  # whole block before start_row: not generated at all
                batch = self._block(split, chunk, b, rows)
                yield batch.slice(offset - a) if offset > a else batch
            chunk, offset = chunk + 1, 0


_SPEC_ALIASES = {"features": "n_features", "group": "group_size"}


def parse_synthetic_spec(spec: str) -> SyntheticSourceConfig:
    """Parse a CLI spec such as ``features=512,dim=64,active=5,magnitude=exponential,seed=1``.

    Keys are the config fields (``features`` = ``n_features``, ``group`` = ``group_size``).
    """
    types = {f.name: f.type for f in fields(SyntheticSourceConfig)}
    values: dict[str, object] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or not key:
            raise ConfigError(f"synthetic spec: expected key=value, got {item!r} (e.g. features=512,dim=64,active=5)")
        name = _SPEC_ALIASES.get(key, key)
        if name not in types:
            known = sorted(set(types) - {"n_features", "group_size"} | set(_SPEC_ALIASES))
            raise ConfigError(f"synthetic spec: unknown key {key!r}; known keys: {', '.join(known)}")
        if name in values:
            raise ConfigError(f"synthetic spec: key {key!r} given twice")
        try:
            values[name] = int(raw) if types[name] == "int" else float(raw) if types[name] == "float" else raw
        except ValueError:
            kind = "an integer" if types[name] == "int" else "a number"
            raise ConfigError(f"synthetic spec: {key} must be {kind}, got {raw!r}") from None
    try:
        return SyntheticSourceConfig(**values)  # type: ignore[arg-type]
    except ConfigError as e:
        raise ConfigError(f"synthetic spec: {str(e).replace('source.', '')}") from None
