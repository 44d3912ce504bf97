"""What every source yields, and the small protocol every source implements.

A *source* turns something (a model plus a corpus, an array file, a generator of synthetic data)
into a deterministic stream of activation rows. Determinism matters: the trainer resumes exactly by
asking for the stream again from a row offset (``iter_batches(split, start_row=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ..configs import dataclass_from_dict
from ..errors import ConfigError

SPLITS = ("train", "eval")


@dataclass
class ActivationBatch:
    """A block of activation rows and, for text models, where each row came from."""

    acts: torch.Tensor
    """(n, d_in) float32 activations, on the CPU."""
    token_ids: torch.Tensor | None = None
    """(n,) int64 token id of each row, for text models; else None."""
    doc_ids: torch.Tensor | None = None
    """(n,) int64 index of the document (chunk) each row came from, within its split; else None."""
    positions: torch.Tensor | None = None
    """(n,) int64 position of the token within its chunk; else None."""
    targets: torch.Tensor | None = None
    """(n, d_out) paired target activations (transcoders); None when the target is the input."""
    codes: torch.Tensor | None = None
    """(n, n_features) float32 ground-truth sparse codes (synthetic data only); else None."""

    def __len__(self) -> int:
        return self.acts.shape[0]

    def slice(self, start: int, stop: int | None = None) -> ActivationBatch:
        """Rows ``start:stop`` of every field."""
        s = slice(start, stop)
        return ActivationBatch(
            acts=self.acts[s],
            token_ids=None if self.token_ids is None else self.token_ids[s],
            doc_ids=None if self.doc_ids is None else self.doc_ids[s],
            positions=None if self.positions is None else self.positions[s],
            targets=None if self.targets is None else self.targets[s],
            codes=None if self.codes is None else self.codes[s],
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-empty fields by name (for writing a cache shard)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@runtime_checkable
class Source(Protocol):
    """A deterministic, restartable stream of activation rows."""

    config: Any
    """The source's config dataclass (saved in the run's config.json, rebuilds the source)."""

    @property
    def d_in(self) -> int:
        """Width of each activation row."""
        ...

    def num_rows(self, split: str = "train") -> int | None:
        """Rows in one pass over ``split``, or None for an unbounded stream (synthetic data)."""
        ...

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        """Yield the rows of one pass over ``split`` in a fixed order, beginning exactly at ``start_row``.

        Calling it twice with the same arguments yields the same rows. Unbounded sources never end.
        """
        ...


class SourceConfigBase:
    """Shared helpers for the per-kind source config dataclasses."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = {k: v for k, v in d.items() if k != "kind"}
        return dataclass_from_dict(cls, d, "source", f"for kind '{cls.kind}'")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")


def chunk_ranges(lo: int, hi: int, start_row: int, chunk_rows: int, split: str) -> Iterator[tuple[int, int]]:
    """(a, b) row ranges of at most ``chunk_rows`` rows covering ``lo + start_row .. hi`` of a bounded split.

    ``start_row`` is checked first: past the split's end it raises a one-line ConfigError.
    """
    check_int("start_row", start_row, minimum=0)
    if start_row > hi - lo:
        raise ConfigError(f"start_row {start_row} is past the end of the {split} split ({hi - lo} rows)")
    return ((a, min(a + chunk_rows, hi)) for a in range(lo + start_row, hi, chunk_rows))


# Small validators for the config dataclasses' ``__post_init__``; each raises a one-line ConfigError
# naming the field (``source.<name>``). Integers given where a float is expected are accepted.


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"source.{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"source.{name} must be >= {minimum}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"source.{name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        rng = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ConfigError(f"source.{name} must be in {rng}, got {value:g}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"source.{name} must be one of {', '.join(choices)}; got {value!r}")
    return value
