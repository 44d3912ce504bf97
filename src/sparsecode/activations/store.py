"""Shuffled training batches from any source, in bounded memory, resumable from a single integer.

The looped source stream (epoch after epoch) is cut into *fills* of ``buffer_rows`` consecutive rows.
Fill ``j`` is loaded into one preallocated buffer and emitted in the order of a permutation seeded by
``(seed, j)``. So the whole state of the store is the number of batches emitted: to resume, seek the
source to the start of the current fill, reload it, and continue — no replay, no saved buffer.
Memory is one buffer (``buffer_rows × d_in`` floats), whatever the size of the corpus.

Data-parallel processes read disjoint parts of the stream: with ``shards=S`` every fill is cut into S
contiguous parts, each shuffled on its own, and a global batch is the concatenation of each part's next
``batch_size / S`` rows. A store that owns some of the shards (``own``) reads only their rows — one
contiguous range per fill — and yields only their slice of every global batch. The stores of all the
shards together yield exactly what one store owning them all yields, so the data order depends on S, never
on how many processes share the shards.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import ConfigError, DataError
from ..sources.base import ActivationBatch, Source

MAX_BUFFER_BYTES = 1 << 30
"""The shuffle buffer stays under 1 GiB unless one batch alone is larger (then it holds exactly one batch)."""


class ActivationStore:
    """Iterator of shuffled ``(batch_size, d_in)`` batches over a source's split, looping over epochs.

    A source with paired targets (``source.d_out``, transcoders) gives rows of width ``d_in + d_out``: the
    input, then its target (split them with ``split_targets``).
    """

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        buffer_rows: int,
        seed: int = 0,
        split: str = "train",
        batches_emitted: int = 0,
        shards: int = 1,
        own: range | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if shards < 1 or batch_size % shards:
            raise ConfigError(
                f"the number of data shards ({shards}) must be >= 1 and divide the batch size ({batch_size})"
            )
        self.shards = shards
        self.own = range(shards) if own is None else own
        if len(self.own) == 0 or self.own.step != 1 or self.own.start < 0 or self.own.stop > shards:
            raise ConfigError(f"own must be a non-empty run of consecutive shards in 0..{shards - 1}, got {self.own}")
        self.source = source
        self.split = split
        self.batch_size = batch_size
        self.d_target = int(source.d_out or 0)  # paired targets appended to each row (0: none)
        self.rows_per_epoch = source.num_rows(split)
        if self.rows_per_epoch == 0:
            raise DataError(f"the source's {split} split has no rows (empty corpus or array?)")
        # Sized from the data: no more rows than one pass over the split holds (a fill of a 40-row array is 40
        # rows, not 131,072 copies of them), wide rows fewer (at most MAX_BUFFER_BYTES, but always one batch), so
        # a 50,000-wide array does not ask for 131,072 × 50,000 floats. A fill holds a whole number of batches,
        # so no batch straddles two fills.
        row_bytes = 4 * (source.d_in + self.d_target)
        buffer_rows = min(buffer_rows, max(MAX_BUFFER_BYTES // row_bytes, batch_size))
        if self.rows_per_epoch is not None:
            buffer_rows = min(buffer_rows, -(-self.rows_per_epoch // batch_size) * batch_size)
        self.buffer_rows = max(1, buffer_rows // batch_size) * batch_size
        self.seed = seed
        self.batches_emitted = batches_emitted
        self._buffer: torch.Tensor | None = None  # (buffer_rows, d_in)
        self._fill_index = -1
        self._order: torch.Tensor | None = None  # (batches_per_fill, owned rows per batch): buffer rows
        # The open stream is kept across fills so a source is read front to back (and a cache can
        # record the whole pass); it is reopened only when a fill does not start where it stopped.
        self._stream: Iterator[ActivationBatch] | None = None
        self._stream_row = -1
        self._leftover: ActivationBatch | None = None

    @property
    def batches_per_fill(self) -> int:
        return self.buffer_rows // self.batch_size

    @property
    def shard_rows(self) -> int:
        """Rows of one shard in a fill."""
        return self.buffer_rows // self.shards

    def state(self) -> dict[str, int]:
        """Everything needed to resume: pass it back as ``batches_emitted``."""
        return {"batches_emitted": self.batches_emitted}

    def peek(self, n: int) -> torch.Tensor:
        """The next ``n`` rows (at most one fill) in the order they will be emitted, without advancing."""
        fill, within = divmod(self.batches_emitted, self.batches_per_fill)
        if fill != self._fill_index:
            self._load_fill(fill)
        assert self._buffer is not None and self._order is not None
        return self._buffer.index_select(0, self._order[within:].reshape(-1)[:n])  # (≤ n, d_in)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        """The next (batch_size, d_in [+ d_out]) batch; only the owned shards' rows of it when not all owned."""
        fill, within = divmod(self.batches_emitted, self.batches_per_fill)
        if fill != self._fill_index:
            self._load_fill(fill)
        assert self._buffer is not None and self._order is not None
        self.batches_emitted += 1
        return self._buffer.index_select(0, self._order[within])  # (batch_size · owned / shards, d_in)

    def _load_fill(self, fill: int) -> None:
        first = fill * self.buffer_rows + self.own.start * self.shard_rows  # the owned shards are contiguous
        rows = len(self.own) * self.shard_rows
        if self._buffer is None:
            width = self.source.d_in + self.d_target
            try:
                self._buffer = torch.empty(rows, width)
            except RuntimeError:  # torch's out-of-memory error on the CPU
                raise DataError(
                    f"the shuffle buffer ({rows:,} rows × {width:,} floats, {rows * width * 4 / 2**30:.1f} GiB) does "
                    f"not fit in memory; lower the batch size"
                ) from None
        if self._stream_row != first:  # a jump (resume, or the other shards' rows): reopen the stream there
            self._stream = self._stream_from(first)
            self._leftover = None
        filled = 0
        while filled < rows:
            block = self._leftover if self._leftover is not None else next(self._stream)
            self._leftover = None
            take = min(len(block), rows - filled)
            self._buffer[filled : filled + take, : self.source.d_in] = block.acts[:take]
            if self.d_target:
                if block.targets is None:
                    raise DataError("the source declares paired targets (d_out) but yielded a block without them")
                self._buffer[filled : filled + take, self.source.d_in :] = block.targets[:take]
            if take < len(block):
                self._leftover = block.slice(take)
            filled += take
        self._stream_row = first + rows
        per_batch = self.batch_size // self.shards
        orders = []
        for i, shard in enumerate(self.own):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + fill * self.shards + shard)
            order = torch.randperm(self.shard_rows, generator=g) + i * self.shard_rows
            orders.append(order.view(self.batches_per_fill, per_batch))
        self._order = torch.cat(orders, dim=1)  # (batches_per_fill, owned shards · batch_size / shards)
        self._fill_index = fill

    def _stream_from(self, global_row: int) -> Iterator[ActivationBatch]:
        """Blocks of the looped stream starting at ``global_row`` (epochs concatenated)."""
        n = self.rows_per_epoch
        offset = global_row if n is None else global_row % n
        while True:
            rows = 0
            for block in self.source.iter_batches(self.split, start_row=offset):
                rows += len(block)
                yield block
            if n is None:
                raise DataError(f"the unbounded source's {self.split} stream ended after {rows} rows")
            if offset == 0 and rows != n:
                raise DataError(f"the source's {self.split} split yielded {rows} rows in a pass, expected {n}")
            offset = 0


def split_targets(rows: torch.Tensor, d_in: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n, d_in [+ d_out]) store rows -> inputs (n, d_in) and targets (n, d_out), or None without targets."""
    return rows[:, :d_in], (rows[:, d_in:] if rows.shape[1] > d_in else None)
