"""Streaming per-latent statistics and examples over batches of text chunks.

Memory stays bounded whatever the corpus size: per latent, a firing count, sums, a fine log-spaced
histogram of its non-zero activations, and two fixed-size sets of examples (token windows with
per-token activations):

* the top ``top_n`` chunks by the latent's maximum activation (one example per chunk, centred on the max);
* ``n_samples`` firings drawn at random, for contexts from the lower quantiles. Each firing gets a
  uniform key and a chunk competes with the largest key among its firings; the largest of f uniforms
  is distributed as u^(1/f), so keeping the chunks with the largest keys is weighted reservoir sampling
  (Efraimidis & Spirakis) with weight = firings in the chunk, i.e. close to uniform over firings.

Per batch, the non-zero activations are listed once; everything after that costs in proportion to them. A
(chunk, latent) pair becomes a candidate only if it beats the latent's worst kept example, and candidates are
merged into the kept sets by one sort over (latent, key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HIST_LOW, HIST_HIGH, HIST_BINS = 1e-6, 1e6, 480
"""Log-spaced histogram range and resolution (ratio 1.059 between bin edges); values outside are clamped."""


def hist_edges() -> torch.Tensor:
    """(HIST_BINS + 1,) float64 bin edges of the activation histogram."""
    return torch.logspace(math.log10(HIST_LOW), math.log10(HIST_HIGH), HIST_BINS + 1, dtype=torch.float64)


@dataclass
class Examples:
    """A per-latent set of ``size`` examples, best key first; unused slots have key -inf."""

    keys: torch.Tensor
    """(n_latents, size) float32 ranking key (the activation, or a random key for samples)."""
    values: torch.Tensor
    """(n_latents, size) float32 activation of the latent at the example's centre token."""
    chunks: torch.Tensor
    """(n_latents, size) int64 chunk index within the split (-1 when unused)."""
    positions: torch.Tensor
    """(n_latents, size) int64 position of the centre token within its chunk."""
    windows: torch.Tensor
    """(n_latents, size, window) float32 activations around the centre; NaN where there is no shown token."""

    @classmethod
    def empty(cls, n_latents: int, size: int, window: int) -> Examples:
        return cls(
            keys=torch.full((n_latents, size), -torch.inf),
            values=torch.zeros(n_latents, size),
            chunks=torch.full((n_latents, size), -1, dtype=torch.long),
            positions=torch.zeros(n_latents, size, dtype=torch.long),
            windows=torch.full((n_latents, size, window), torch.nan),
        )

    def merge(
        self,
        latent: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        chunks: torch.Tensor,
        positions: torch.Tensor,
        windows: torch.Tensor,
    ) -> None:
        """Offer C candidate examples: ``latent``, ``keys``, ``values``, ``chunks``, ``positions`` (C,) and
        ``windows`` (C, window). Each latent keeps the ``size`` best of its examples and its candidates (on equal
        keys, the examples it already had)."""
        size = self.keys.shape[1]
        rows = latent.unique()  # (L,) ascending: only these latents change
        old = {
            name: getattr(self, name)[rows].flatten(0, 1)
            for name in ("keys", "values", "chunks", "positions", "windows")
        }  # (L * size, ...)
        owner = torch.cat([rows.repeat_interleave(size), latent])  # (L * size + C,)
        pool = {"keys": keys, "values": values, "chunks": chunks, "positions": positions, "windows": windows}
        pool = {name: torch.cat([old[name], new]) for name, new in pool.items()}
        by_key = torch.argsort(pool["keys"], descending=True, stable=True)
        order = by_key[torch.argsort(owner[by_key], stable=True)]  # grouped by latent, best key first
        _, counts = torch.unique_consecutive(owner[order], return_counts=True)
        rank = torch.arange(order.numel()) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        chosen = order[rank < size]  # exactly ``size`` per latent (each had ``size`` slots), in ``rows`` order
        for name, pooled in pool.items():
            getattr(self, name)[rows] = pooled[chosen].view(rows.numel(), size, *pooled.shape[1:])

    def as_lists(self) -> ExampleLists:
        """The same examples as nested Python lists, for fast per-example reading. Activations are rounded (in float64,
        so that they print short): centre values to 6 decimals, window values to 4."""
        return ExampleLists(
            used=torch.isfinite(self.keys).sum(1).tolist(),
            values=self.values.double().round(decimals=6).tolist(),
            chunks=self.chunks.tolist(),
            positions=self.positions.tolist(),
            windows=self.windows.double().round(decimals=4).tolist(),
        )


@dataclass
class ExampleLists:
    """``Examples`` as lists indexed [latent][slot] (windows [latent][slot][offset]), plus filled slots per latent."""

    used: list[int]
    values: list[list[float]]
    chunks: list[list[int]]
    positions: list[list[int]]
    windows: list[list[list[float]]]


class FeatureAccumulator:
    """Add batches of latent activations (``update``); read per-latent statistics and examples at the end."""

    def __init__(
        self, n_latents: int, top_n: int, n_samples: int, context_left: int, context_right: int, seed: int = 0
    ) -> None:
        self.n_latents = n_latents
        self.offsets = torch.arange(-context_left, context_right + 1)  # (window,)
        window = self.offsets.numel()
        self.n_tokens = 0
        self.fire_count = torch.zeros(n_latents, dtype=torch.int64)
        self.act_sum = torch.zeros(n_latents, dtype=torch.float64)
        self.min_act = torch.full((n_latents,), torch.inf)
        self.hist = torch.zeros(n_latents, HIST_BINS, dtype=torch.int64)
        self.log_low, self.log_step = math.log(HIST_LOW), (math.log(HIST_HIGH) - math.log(HIST_LOW)) / HIST_BINS
        self.top = Examples.empty(n_latents, top_n, window)
        self.samples = Examples.empty(n_latents, n_samples, window)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.inference_mode()
    def update(self, latents: torch.Tensor, keep: torch.Tensor, chunk_ids: torch.Tensor) -> None:
        """One batch of chunks: ``latents`` (B, T, n_latents) activations (> 0 counts as firing), ``keep`` (B, T) bool
        marking the tokens that count (not padding, not special), ``chunk_ids`` (B,) their chunk indices.

        Apart from listing the non-zero entries once, the work is proportional to their number, not B·T·m.
        """
        latents = latents.detach().to("cpu", torch.float32)  # (B, T, m)
        keep = keep.to("cpu")
        B, T, m = latents.shape
        self.n_tokens += int(keep.sum())
        where = latents.nonzero()  # (nnz, 3): chunk, position, latent
        values = latents[where.unbind(1)]  # (nnz,)
        counts = keep[where[:, 0], where[:, 1]] & (values > 0)  # firings (> 0) on tokens that count
        where, values = where[counts], values[counts]
        chunk_of, pos_of, latent_of = where.unbind(1)
        self.fire_count += torch.bincount(latent_of, minlength=m)
        self.act_sum.index_add_(0, latent_of, values.double())
        self.min_act.scatter_reduce_(0, latent_of, values, reduce="amin")
        bins = ((values.double().log() - self.log_low) / self.log_step).long().clamp_(0, HIST_BINS - 1)
        self.hist.view(-1).index_add_(0, latent_of * HIST_BINS + bins, torch.ones_like(bins))

        cell = chunk_of * m + latent_of  # (nnz,) index of the (chunk, latent) pair
        top_values, top_pos = self._chunk_argmax(values, cell, pos_of, B * m)
        self._offer(self.top, top_values, top_values, top_pos, latents, keep, chunk_ids)
        sample_keys, sample_pos = self._chunk_argmax(
            torch.rand(values.shape, generator=self.generator), cell, pos_of, B * m
        )
        sample_values = latents.view(B, T, m).gather(1, sample_pos.view(B, 1, m)).view(-1)  # (B * m,)
        self._offer(self.samples, sample_keys, sample_values, sample_pos, latents, keep, chunk_ids)

    @staticmethod
    def _chunk_argmax(
        keys: torch.Tensor, cell: torch.Tensor, pos_of: torch.Tensor, n_cells: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (chunk, latent) cell: the largest of its entries' ``keys`` (-inf if none) and that entry's position."""
        best = torch.full((n_cells,), -torch.inf).scatter_reduce_(0, cell, keys, reduce="amax")  # (n_cells,)
        winner = keys == best[cell]  # (nnz,), ties: the position is one of the tied entries'
        positions = torch.zeros(n_cells, dtype=torch.long).scatter_(0, cell[winner], pos_of[winner])
        return best, positions

    def _offer(
        self,
        examples: Examples,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        latents: torch.Tensor,
        keep: torch.Tensor,
        chunk_ids: torch.Tensor,
    ) -> None:
        """Offer one candidate per (chunk, latent) cell: ``keys``, ``values``, ``positions`` (B * m,), -inf keys
        for cells where the latent does not fire. Only cells whose key beats the latent's worst kept example
        become candidates, so once the sets fill up a batch touches few of them."""
        B, T, m = latents.shape
        cells = (keys > examples.keys[:, -1].repeat(B)).nonzero()[:, 0]  # (C,)
        if cells.numel() == 0:
            return
        chunk, latent, centre = cells // m, cells % m, positions[cells]
        idx = centre[:, None] + self.offsets  # (C, window)
        inside = (idx >= 0) & (idx < T)
        idx = idx.clamp(0, T - 1)
        windows = latents[chunk[:, None], idx, latent[:, None]]  # (C, window)
        shown = inside & keep[chunk[:, None], idx]  # padding and special tokens are not shown
        examples.merge(
            latent, keys[cells], values[cells], chunk_ids[chunk], centre, windows.masked_fill(~shown, torch.nan)
        )

    # -- results -------------------------------------------------------------------------------------
    def quantiles(self, levels: tuple[float, ...]) -> torch.Tensor:
        """(n_latents, len(levels)) float64 quantiles of each latent's non-zero activations, read off the
        log histogram (geometric interpolation inside a bin, clamped to the observed range); NaN if dead."""
        counts = self.hist.double()  # (m, bins)
        cum = counts.cumsum(1)  # (m, bins)
        total = cum[:, -1:]  # (m, 1)
        target = torch.tensor(levels, dtype=torch.float64)[None, :] * total  # (m, L)
        b = torch.searchsorted(cum, target.contiguous(), right=False).clamp_(max=HIST_BINS - 1)  # (m, L)
        before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target))
        inside = counts.gather(1, b).clamp(min=1)
        frac = ((target - before) / inside).clamp(0, 1)
        q = torch.exp(self.log_low + (b.double() + frac) * self.log_step)
        lo, hi = self.min_act.double()[:, None], self.top.values[:, :1].double()
        q = torch.minimum(torch.maximum(q, lo), hi)
        return torch.where(total > 0, q, torch.nan)

    @property
    def max_act(self) -> torch.Tensor:
        """(n_latents,) largest activation seen (0 for dead latents)."""
        return torch.where(torch.isfinite(self.top.keys[:, 0]), self.top.values[:, 0], 0.0)
