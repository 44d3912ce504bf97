"""Precomputed activations in an array file of shape [n, d]: .npy, .safetensors or .parquet.

Files are read lazily, ``chunk_rows`` rows at a time: .npy through a read-only memory map (never
unpickled), .safetensors through ``safe_open(...).get_slice``, .parquet one row group at a time.
The last ``eval_fraction`` of the rows form the "eval" split, the rest "train".
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..configs import check_float, check_int
from ..errors import ConfigError, DataError
from .base import ActivationBatch, SourceBase, SourceConfigBase, check_split, chunk_ranges

ARRAY_SUFFIXES = (".npy", ".safetensors", ".parquet")
"""Supported array file types."""


@dataclass(kw_only=True)
class ArraySourceConfig(SourceConfigBase):
    """Rows of a 2-D array file."""

    kind: ClassVar[str] = "arrays"

    path: str
    """The .npy, .safetensors or .parquet file."""
    key: str | None = None
    """Tensor name (.safetensors), or list column / comma-separated numeric columns (.parquet).
    None: the only tensor / the only list-of-numbers column / all numeric columns."""
    eval_fraction: float = 0.05
    """Fraction of rows at the end of the file held out as the "eval" split (at least one row if > 0)."""
    chunk_rows: int = 16384
    """Rows read (and yielded) at a time. Chunks under 32 MiB (16384 rows up to d=512) come from memory malloc
    keeps for reuse; bigger ones are fresh pages every time (`python bench/store_fill.py`: 131,072-row fills at
    d=384 in 57.5 ms with 16384-row chunks, 79.9 ms with 65536)."""

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            self.path = os.fspath(self.path)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"source.path must be the path of a {'/'.join(ARRAY_SUFFIXES)} file, got {self.path!r}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConfigError(f"source.key must be a tensor or column name (or null), got {self.key!r}")
        check_float("source.eval_fraction", self.eval_fraction, 0.0, 1.0, high_open=True)
        check_int("source.chunk_rows", self.chunk_rows, minimum=1)


# --------------------------------------------------------------------------- readers
# Each reader has .shape (n, d) and .read(start, stop) -> (stop-start, d) float32 tensor.


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class _NpyReader:
    def __init__(self, path: Path, key: str | None):
        if key is not None:
            raise ConfigError(f"source.key {key!r} does not apply to .npy file {path}; remove it")
        try:
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy array ({_first_line(e)})") from None
        if np.issubdtype(self.array.dtype, np.complexfloating):
            raise DataError(
                f"{path}: dtype {self.array.dtype} is complex; save the real part (or |x|) as a float array"
            )
        if not (np.issubdtype(self.array.dtype, np.number) or self.array.dtype == np.bool_):
            raise DataError(f"{path}: dtype {self.array.dtype} is not numeric; save a float array")
        self.shape = tuple(self.array.shape)

    def read(self, start: int, stop: int) -> torch.Tensor:
        rows = torch.from_numpy(np.array(self.array[start:stop], dtype=np.float32))  # a copy, never the mmap
        self._release(start, stop)
        return rows

    def _release(self, start: int, stop: int) -> None:
        """Drop the file pages just read from this process's resident set: a pass over a large file must not
        grow RSS with the file's size (the page cache still keeps them for the next epoch)."""
        mm = getattr(self.array, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        row_bytes = self.array.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        base = self.array.offset % mmap.ALLOCATIONGRANULARITY  # where the data starts inside the mapping
        lo = (base + start * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = (base + stop * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE  # whole pages only
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


class _SafetensorsReader:
    def __init__(self, path: Path, key: str | None):
        from safetensors import SafetensorError, safe_open

        self.path = path
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = sorted(f.keys())
                if key is None:
                    if len(keys) != 1:
                        names = ", ".join(keys) or "(none)"
                        raise ConfigError(f"{path} holds {len(keys)} tensors; set source.key to one of: {names}")
                    key = keys[0]
                elif key not in keys:
                    raise ConfigError(f"source.key {key!r} not in {path}; tensors: {', '.join(keys)}")
                tensor = f.get_slice(key)
                self.shape = tuple(tensor.get_shape())
                dtype = tensor.get_dtype()
        except ConfigError:
            raise
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{path}: truncated or corrupt safetensors file ({_first_line(e)})") from None
        if dtype.upper().startswith("C"):  # C64 and kin: the imaginary part would be dropped silently
            raise DataError(f"{path}: tensor {key!r} is complex ({dtype}); save the real part (or |x|) as floats")
        self.key = key

    def read(self, start: int, stop: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_slice(self.key)[start:stop].to(torch.float32)


class _ParquetReader:
    def __init__(self, path: Path, key: str | None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            self.file = pq.ParquetFile(str(path))
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
        schema = self.file.schema_arrow
        numeric = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        lists = [f.name for f in schema if _is_number_list(f.type)]
        if key is None:
            if len(lists) > 1:
                raise ConfigError(f"{path} has several list columns; set source.key to one of: {', '.join(lists)}")
            cols = lists or numeric
            if not cols:
                raise DataError(f"{path}: no numeric or list-of-number columns; columns: {', '.join(schema.names)}")
        else:
            cols = [c.strip() for c in key.split(",")]
            unknown = [c for c in cols if c not in lists and c not in numeric]
            if unknown:
                raise ConfigError(
                    f"source.key column {unknown[0]!r} is not a numeric or list-of-number column of "
                    f"{path}; "
                    f"options: {', '.join(lists + numeric)}"
                )
            if len(cols) > 1 and any(c in lists for c in cols):
                raise ConfigError(
                    f"source.key for {path}: give either one list column or several scalar columns, not a mix"
                )
        self.columns = cols
        self.is_list = cols[0] in lists
        meta = self.file.metadata
        self.group_starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self._cached: tuple[int, torch.Tensor] | None = None
        self._d: int | None = len(cols)
        n = int(self.group_starts[-1])
        if self.is_list:
            t = schema.field(cols[0]).type
            self._d = t.list_size if pa.types.is_fixed_size_list(t) else None  # else: length of the first row
            if self._d is None and n:
                self._d = int(self._group(0).shape[1])
        self.shape = (n, self._d or 0)

    def _group(self, g: int) -> torch.Tensor:
        import pyarrow.compute as pc

        if self._cached is not None and self._cached[0] == g:
            return self._cached[1]
        table = self.file.read_row_group(g, columns=self.columns)
        start = int(self.group_starts[g])
        if self.is_list:
            col = table.column(0).combine_chunks()
            if col.null_count:
                raise DataError(
                    f"{self.path}: column {self.columns[0]} has a null row in rows {start}..; fill or drop it"
                )
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            d = self._d if self._d is not None else int(lengths[0]) if len(lengths) else 0
            if len(lengths) and (lengths != d).any():
                r = int(np.nonzero(lengths != d)[0][0])
                raise DataError(
                    f"{self.path}: row {start + r} of column {self.columns[0]} has {lengths[r]} values, expected {d}"
                )
            values = col.flatten().to_numpy(zero_copy_only=False)
            arr = np.array(values, dtype=np.float32).reshape(len(col), d)  # (rows, d), writable copy
        else:
            cols = []
            for name in self.columns:
                c = table.column(name)
                if c.null_count:
                    raise DataError(f"{self.path}: column {name} has a null value in rows {start}..; fill or drop it")
                cols.append(c.to_numpy())
            arr = np.stack(cols, axis=1).astype(np.float32)
        out = torch.from_numpy(arr)
        self._cached = (g, out)
        return out

    def read(self, start: int, stop: int) -> torch.Tensor:
        first = int(np.searchsorted(self.group_starts, start, side="right")) - 1
        parts = []
        g = first
        while g < len(self.group_starts) - 1 and self.group_starts[g] < stop:
            g0 = int(self.group_starts[g])
            parts.append(self._group(g)[max(start - g0, 0) : stop - g0])
            g += 1
        return torch.cat(parts) if parts else torch.zeros((0, self.shape[1]))


def _is_number_list(t: Any) -> bool:
    import pyarrow as pa

    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return False
    return pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)


_READERS = {".npy": _NpyReader, ".safetensors": _SafetensorsReader, ".parquet": _ParquetReader}


# --------------------------------------------------------------------------- the source


def _describe_bad(chunk: torch.Tensor) -> tuple[int, int, str] | None:
    """(row, column, "NaN"/"inf"/"-inf") of the first non-finite value in ``chunk``, or None."""
    # A finite sum proves every value finite (a NaN or inf would carry into it), in one read-only pass; the
    # element-wise test below allocates two masks the size of the chunk and costs ~25x more. An overflowing
    # sum of finite values only sends the chunk to the exact test.
    if chunk.numel() == 0 or bool(torch.isfinite(chunk.sum())):
        return None
    bad = ~torch.isfinite(chunk)
    if not bad.any():
        return None
    r, c = (int(v) for v in bad.nonzero()[0])
    v = float(chunk[r, c])
    return r, c, "NaN" if math.isnan(v) else ("inf" if v > 0 else "-inf")


class ArraySource(SourceBase):
    """Rows of a 2-D array file, streamed ``chunk_rows`` at a time."""

    def __init__(self, config: ArraySourceConfig):
        self.config = config
        path = Path(config.path).expanduser()
        self.path = path
        if path.suffix not in _READERS:
            raise DataError(
                f"{path}: unsupported array file type '{path.suffix}'; use one of {', '.join(ARRAY_SUFFIXES)}"
            )
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        self.reader = _READERS[path.suffix](path, config.key)
        shape = self.reader.shape
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise DataError(f"{path}: expected a 2-D array [n_rows, d] with n_rows, d >= 1, got shape {tuple(shape)}")
        n = int(shape[0])
        n_eval = 0 if config.eval_fraction == 0 else max(1, round(n * config.eval_fraction))
        if n - n_eval < 1:
            raise DataError(
                f"{path}: only {n} row(s), none left for training after holding out "
                f"eval_fraction={config.eval_fraction:g}; "
                "lower eval_fraction or add rows"
            )
        self.n_total = n
        self.n_train = n - n_eval

    @property
    def d_in(self) -> int:
        return int(self.reader.shape[1])

    def _range(self, split: str) -> tuple[int, int]:
        check_split(split)
        return (0, self.n_train) if split == "train" else (self.n_train, self.n_total)

    def num_rows(self, split: str = "train") -> int:
        lo, hi = self._range(split)
        return hi - lo

    def _check_finite(self, chunk: torch.Tensor, first_row: int) -> None:
        bad = _describe_bad(chunk)
        if bad is not None:
            r, c, what = bad
            raise DataError(f"{self.path}: row {first_row + r} column {c} is {what}; remove or fix non-finite rows")

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        """Rows ``start_row..`` of ``split``, ``chunk_rows`` at a time; non-finite values raise DataError."""
        lo, hi = self._range(split)
        for a, b in chunk_ranges(lo, hi, start_row, self.config.chunk_rows, split):
            acts = self.reader.read(a, b).contiguous()  # (b - a, d_in)
            self._check_finite(acts, a)
            yield ActivationBatch(acts=acts)

    def validate(self) -> None:
        """Scan every row of the file chunk-wise; the first NaN/inf raises DataError naming row and column."""
        for a in range(0, self.n_total, self.config.chunk_rows):
            b = min(a + self.config.chunk_rows, self.n_total)
            self._check_finite(self.reader.read(a, b), a)
