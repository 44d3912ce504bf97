"""What every source yields, and the small protocol every source implements.

A *source* turns something (a model plus a corpus, an array file, a generator of synthetic data)
into a deterministic stream of activation rows. Determinism matters: the trainer resumes exactly by
asking for the stream again from a row offset (``iter_batches(split, start_row=...)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from ..configs import check_int, dataclass_from_dict
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
    """A deterministic, restartable stream of activation rows, and the capabilities it declares.

    Callers ask a source what it can do through ``is_text_model`` / ``has_true_features`` (class attributes,
    see :class:`SourceBase`) instead of probing for attributes; the narrower protocols
    :class:`TextModelSource` and :class:`GroundTruthSource` list what each flag promises."""

    config: Any
    """The source's config dataclass (saved in the run's config.json, rebuilds the source)."""
    is_text_model: bool
    """A :class:`TextModelSource`: a transformers model run over text chunks (model-based evaluations apply)."""
    has_true_features: bool
    """A :class:`GroundTruthSource`: knows the directions its rows were generated from."""

    @property
    def d_in(self) -> int:
        """Width of each activation row."""
        ...

    @property
    def d_out(self) -> int | None:
        """Width of the paired targets each row carries (transcoders), or None without targets."""
        ...

    def num_rows(self, split: str = "train") -> int | None:
        """Rows in one pass over ``split``, or None for an unbounded stream (synthetic data)."""
        ...

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        """Yield the rows of one pass over ``split`` in a fixed order, beginning exactly at ``start_row``.

        Calling it twice with the same arguments yields the same rows. Unbounded sources never end.
        """
        ...

    def fingerprint(self) -> dict[str, Any] | None:
        """What the rows depend on beyond the config (text, model files, versions): keys the activation cache.
        None when the config says it all."""
        ...

    def validate(self) -> None:
        """Check up front what would otherwise fail late (e.g. scan a file for NaN); raises DataError."""
        ...


class SourceBase:
    """The defaults every source class starts from: a plain stream of rows without targets, described fully by
    its config, with nothing to check up front. Subclasses override what they declare."""

    is_text_model: ClassVar[bool] = False
    has_true_features: ClassVar[bool] = False

    @property
    def d_out(self) -> int | None:
        return None

    def fingerprint(self) -> dict[str, Any] | None:
        return None

    def validate(self) -> None:
        return None


class TextModelSource(Source, Protocol):
    """A source with ``is_text_model``: activations of a transformers model at a hooked module, over text."""

    tokenizer: Any
    """The model's tokenizer (transformers)."""
    model_config: Any
    """The model's transformers config."""
    is_causal_lm: bool
    """Decoder-only language model (next-token logits) rather than an encoder."""
    special_ids: torch.Tensor
    """(n_special,) int64 ids of the special tokens that never become rows."""

    @property
    def model(self) -> torch.nn.Module:
        """The model, in eval mode without gradients (loaded on first use)."""
        ...

    @property
    def module(self) -> torch.nn.Module:
        """The hooked module (``config.hook``; its side is ``config.hook_side``)."""
        ...

    @property
    def target_module(self) -> torch.nn.Module | None:
        """The module of the paired targets (``config.target_hook``), or None."""
        ...

    def chunks(self, split: str = "train") -> list[list[int]]:
        """Token ids of every text chunk of ``split``."""
        ...

    def tokenize(self, chunks: list[list[int]]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` (batch, seq) on the model's device."""
        ...

    def keep_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) bool: the positions that become rows."""
        ...

    def row_counts(self, split: str = "train") -> np.ndarray:
        """(n_chunks,) rows each chunk of ``split`` gives (the positions ``keep_mask`` keeps)."""
        ...

    def activations(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq, d_in) activations at the hook."""
        ...


class GroundTruthSource(Source, Protocol):
    """A source with ``has_true_features``: synthetic rows generated from known directions."""

    @property
    def true_features(self) -> torch.Tensor:
        """(n_features, d_in) unit-norm ground-truth directions."""
        ...


class SourceConfigBase:
    """Shared helpers and declared capabilities of the per-kind source config dataclasses."""

    kind: ClassVar[str]
    has_device: ClassVar[bool] = False
    """The config has a ``device`` field (the source runs a model there); it may change without changing the rows."""

    def known_d_in(self) -> int | None:
        """The row width if the config alone fixes it (synthetic ``dim``); None when only the data tells."""
        return None

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
