"""One model forward feeding several dictionaries: each gets a source of its own, all served by one pass.

A :class:`SharedPass` runs a model source with several taps (hook points side by side in one wide row, see
``ModelSource.taps``) and hands every view its columns. Each dictionary's :class:`TapSource` is an ordinary source
with the config of the single-hook source it stands for, so the rows it yields, its activation cache key and its
run folder are exactly those of a run trained alone on that hook.

The views read one shared stream, the passes over a split looped epoch after epoch, each from a queue of the
blocks produced since it last read. A block is produced when the view furthest ahead asks for it, and queued for
every other view, so the trainers that read the views must advance together (``train.together``); a view that
falls further behind than ``max_lag_rows``, or asks for rows the shared stream is not at (a resume that lands
elsewhere), leaves the shared stream and reads its own pass from then on: slower, never different.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..sources.base import ActivationBatch, SourceBase
from ..sources.hf import ModelSource, ModelSourceConfig, Tap


@dataclass
class _Stream:
    """The shared looped stream of one split: where it stands and what each view has not read yet."""

    blocks: Iterator[ActivationBatch]
    position: int
    """Rows produced since the start of the first pass read (a global row: pass × rows per pass + row)."""
    queues: dict[int, deque[ActivationBatch]] = field(default_factory=dict)
    """View id -> blocks produced and not yet read by it (only the views still on the shared stream)."""
    positions: dict[int, int] = field(default_factory=dict)
    """View id -> the global row it reads next."""


class SharedPass:
    """Several single-hook model sources that differ only in their hook points, served by one forward pass."""

    def __init__(self, configs: list[ModelSourceConfig], max_lag_rows: int = 1 << 19) -> None:
        taps = list(dict.fromkeys(Tap.of(c) for c in configs))  # distinct taps, in order
        self.wide = ModelSource(configs[0], taps)
        self.configs = configs
        self.max_lag_rows = max_lag_rows
        self._streams: dict[str, _Stream] = {}
        self._views: list[TapSource] = []
        self._listening: set[int] = set()
        widths = self.wide.tap_widths()
        starts = [0]
        target_starts = [0]
        for d_in, d_out in widths:
            starts.append(starts[-1] + d_in)
            target_starts.append(target_starts[-1] + (d_out or 0))
        self._columns = {
            tap: (
                slice(starts[i], starts[i + 1]),
                None if d_out is None else slice(target_starts[i], target_starts[i + 1]),
            )
            for i, (tap, (_, d_out)) in enumerate(zip(taps, widths))
        }

    def views(self) -> list[TapSource]:
        """One source per config, in order (two configs with the same hook get two views of the same columns)."""
        if not self._views:
            self._views = [TapSource(self, i, c, *self._columns[Tap.of(c)]) for i, c in enumerate(self.configs)]
            self._listening = set(range(len(self._views)))
        return self._views

    # -- the shared stream ----------------------------------------------------------------------------------
    def _looped(self, split: str, start_row: int) -> Iterator[ActivationBatch]:
        """The wide blocks of the passes over ``split`` from ``start_row`` on, epoch after epoch (a block never
        straddles two passes)."""
        while True:
            yield from self.wide.iter_batches(split, start_row)
            start_row = 0

    def read(self, view: TapSource, split: str, start_row: int) -> Iterator[ActivationBatch]:
        """``view``'s blocks of one pass over ``split`` from ``start_row``: from the shared stream while the view is
        on it, else (and from the moment it drops off) from a pass of its own."""
        n = self.wide.num_rows(split)
        stream = self._streams.get(split)
        if stream is None:  # the first read of this split opens the stream there, for every view listening
            stream = self._streams[split] = _Stream(self._looped(split, start_row), start_row)
            for index in self._listening:
                stream.queues[index], stream.positions[index] = deque(), start_row
        position = stream.positions.get(view.index)
        if position is None or position % n != start_row:
            self._leave(stream, view.index)
        row = start_row
        while row < n:
            queue = stream.queues.get(view.index)
            if queue is None:  # off the shared stream (or dropped behind): the rest of the pass on its own
                for block in self.wide.iter_batches(split, row):
                    yield view.columns_of(block)
                return
            if not queue:
                self._produce(stream)
                continue
            block = queue.popleft()
            stream.positions[view.index] += len(block)
            row += len(block)
            yield view.columns_of(block)

    def _produce(self, stream: _Stream) -> None:
        block = next(stream.blocks)
        stream.position += len(block)
        for index in list(stream.queues):
            stream.queues[index].append(block)
            if stream.position - stream.positions[index] > self.max_lag_rows:
                self._leave(stream, index)  # far behind (or no longer reading): stop holding rows for it

    def _leave(self, stream: _Stream, index: int) -> None:
        stream.queues.pop(index, None)
        stream.positions.pop(index, None)

    def release(self, view: TapSource) -> None:
        """``view`` reads no more from the shared stream (its run has finished, or reads its activation cache): stop
        queueing rows for it."""
        self._listening.discard(view.index)
        for stream in self._streams.values():
            self._leave(stream, view.index)


class TapSource(SourceBase):
    """One dictionary's rows from a :class:`SharedPass`: the same rows, config and fingerprint as the single-hook
    ``ModelSource(config)``."""

    def __init__(
        self, shared: SharedPass, index: int, config: ModelSourceConfig, columns: slice, target_columns: slice | None
    ) -> None:
        self.shared = shared
        self.index = index
        self.config = config
        self.columns = columns
        self.target_columns = target_columns

    @property
    def d_in(self) -> int:
        return self.columns.stop - self.columns.start

    @property
    def d_out(self) -> int | None:
        return None if self.target_columns is None else self.target_columns.stop - self.target_columns.start

    def num_rows(self, split: str = "train") -> int:
        return self.shared.wide.num_rows(split)

    def fingerprint(self) -> dict[str, Any]:
        return self.shared.wide.fingerprint()  # the text and the model files: the same for every hook

    def validate(self) -> None:
        self.shared.wide.validate()

    def columns_of(self, block: ActivationBatch) -> ActivationBatch:
        """This view's part of a wide block (copies: the wide block is not kept alive by one view)."""
        targets = None if self.target_columns is None else block.targets[:, self.target_columns].contiguous()
        return ActivationBatch(
            acts=block.acts[:, self.columns].contiguous(),
            token_ids=block.token_ids,
            doc_ids=block.doc_ids,
            positions=block.positions,
            targets=targets,
        )

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        return self.shared.read(self, split, start_row)
