"""Streaming per-latent statistics and examples over batches of text chunks.

Memory stays bounded whatever the corpus size: per latent, a firing count, sums, a fine log-spaced
histogram of its non-zero activations, and two fixed-size sets of examples (token windows with
per-token activations):

* the top ``top_n`` chunks by the latent's maximum activation (one example per chunk, centred on the max);
* ``n_samples`` firings drawn at random, for contexts from the lower quantiles. Each firing gets a
  uniform key and a chunk competes with the largest key among its firings; the largest of f uniforms
  is distributed as u^(1/f), so keeping the chunks with the largest keys is weighted reservoir sampling
  (Efraimidis & Spirakis) with weight = firings in the chunk, i.e. close to uniform over firings.

Both sets are merged per batch by concatenating the batch's candidates and taking a per-latent top-k.
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
        return cls(keys=torch.full((n_latents, size), -torch.inf), values=torch.zeros(n_latents, size),
                   chunks=torch.full((n_latents, size), -1, dtype=torch.long),
                   positions=torch.zeros(n_latents, size, dtype=torch.long),
                   windows=torch.full((n_latents, size, window), torch.nan))

    def merge(self, candidates: Examples) -> None:
        """Keep, per latent, the ``size`` best of the current examples and ``candidates`` (same layout)."""
        size = self.keys.shape[1]
        keys = torch.cat([self.keys, candidates.keys], dim=1)  # (n_latents, size + n_cand)
        best = keys.topk(size, dim=1).indices  # (n_latents, size), sorted best first
        self.keys = keys.gather(1, best)
        self.values = torch.cat([self.values, candidates.values], dim=1).gather(1, best)
        self.chunks = torch.cat([self.chunks, candidates.chunks], dim=1).gather(1, best)
        self.positions = torch.cat([self.positions, candidates.positions], dim=1).gather(1, best)
        windows = torch.cat([self.windows, candidates.windows], dim=1)  # (n_latents, size + n_cand, window)
        self.windows = windows.gather(1, best[:, :, None].expand(-1, -1, windows.shape[2]))

    def as_lists(self) -> ExampleLists:
        """The same examples as nested Python lists, for fast per-example reading. Activations are rounded (in float64,
        so that they print short): centre values to 6 decimals, window values to 4."""
        return ExampleLists(used=torch.isfinite(self.keys).sum(1).tolist(),
                            values=self.values.double().round(decimals=6).tolist(), chunks=self.chunks.tolist(),
                            positions=self.positions.tolist(), windows=self.windows.double().round(decimals=4).tolist())


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

    def __init__(self, n_latents: int, top_n: int, n_samples: int, context_left: int, context_right: int,
                 seed: int = 0) -> None:
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
        """One batch of chunks: ``latents`` (B, T, n_latents) activations, ``keep`` (B, T) bool marking the
        tokens that count (not padding, not special), ``chunk_ids`` (B,) their chunk indices."""
        latents = latents.detach().to("cpu", torch.float32) * keep[:, :, None]  # (B, T, n_latents)
        B, T, m = latents.shape
        self.n_tokens += int(keep.sum())
        fired = latents > 0  # (B, T, m)
        self.fire_count += fired.sum(dim=(0, 1))
        self.act_sum += latents.sum(dim=(0, 1), dtype=torch.float64)

        where = fired.nonzero()  # (nnz, 3): chunk, position, latent
        values = latents[fired]  # (nnz,), same order as ``where``
        latent_of = where[:, 2]
        self.min_act.scatter_reduce_(0, latent_of, values, reduce="amin")
        bins = ((values.double().log() - self.log_low) / self.log_step).long().clamp_(0, HIST_BINS - 1)
        self.hist.view(-1).index_add_(0, latent_of * HIST_BINS + bins, torch.ones_like(bins))

        by_latent = latents.transpose(1, 2)  # (B, m, T), a view

        top_values, top_pos = latents.max(dim=1)  # (B, m) each
        self.top.merge(self._candidates(top_values, top_values, top_pos, by_latent, keep, chunk_ids))

        keys = torch.rand(B, T, m, generator=self.generator).masked_fill_(~fired, -1.0)
        sample_keys, sample_pos = keys.max(dim=1)  # (B, m)
        sample_values = by_latent.gather(2, sample_pos[:, :, None])[:, :, 0]  # (B, m)
        self.samples.merge(self._candidates(sample_keys, sample_values, sample_pos, by_latent, keep, chunk_ids))

    def _candidates(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, by_latent: torch.Tensor,
                    keep: torch.Tensor, chunk_ids: torch.Tensor) -> Examples:
        """One candidate example per (chunk, latent), keyed by ``keys`` (B, m); only firing ones compete."""
        B, m, T = by_latent.shape
        idx = positions[:, :, None] + self.offsets  # (B, m, window)
        inside = (idx >= 0) & (idx < T)
        idx = idx.clamp(0, T - 1)
        windows = by_latent.gather(2, idx)  # (B, m, window)
        shown = inside & keep[torch.arange(B)[:, None, None], idx]  # padding and special tokens are not shown
        windows = windows.masked_fill(~shown, torch.nan)
        firing = values > 0
        return Examples(keys=keys.masked_fill(~firing, -torch.inf).T.contiguous(), values=values.T.contiguous(),
                        chunks=chunk_ids[None, :].expand(m, B).contiguous(), positions=positions.T.contiguous(),
                        windows=windows.transpose(0, 1).contiguous())

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
