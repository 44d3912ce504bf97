"""Token windows at random positions of the corpus, each stored with every latent that fires anywhere in it.

They are the contexts a latent is known *not* to fire on (those whose list lacks it): the negatives that
`sparsecode explain` shows its judge beside the latent's own contexts. Positions are drawn uniformly over the
tokens that count (not special, not padding), before the pass, from the run's seed, so the same build picks
the same windows.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from itertools import accumulate

import torch


class RandomWindows:
    """Pick ``n`` token positions up front; ``update`` fills in their windows as their chunks go by."""

    def __init__(self, counts: list[int], picked: list[int], n: int, left: int, right: int, seed: int) -> None:
        self.left, self.right = left, right
        self.targets: dict[int, list[tuple[int, int]]] = {}  # chunk -> [(rank, k-th token that counts)]
        self.rows: list[tuple] = []
        total = sum(counts[i] for i in picked)
        if n == 0 or total == 0:
            return
        g = torch.Generator().manual_seed(seed + 1)
        flat = torch.randint(total, (n,), generator=g).unique().tolist()  # sorted, distinct
        ends = list(accumulate(counts[i] for i in picked))
        for rank, t in enumerate(flat):
            j = bisect_right(ends, t)  # the chunk holding the t-th counted token
            start = ends[j - 1] if j else 0
            self.targets.setdefault(picked[j], []).append((rank, t - start))

    def update(self, latents: torch.Tensor, keep: torch.Tensor, group: list[int], chunks: list[list[int]]) -> None:
        """One batch: ``latents`` (B, T, n_latents), ``keep`` (B, T) tokens that count, ``group`` (B,) chunk ids."""
        T = latents.shape[1]
        for b, chunk_id in enumerate(group):
            if chunk_id not in self.targets:
                continue
            counted = keep[b].nonzero()[:, 0].tolist()  # positions of the tokens that count
            for rank, k in self.targets[chunk_id]:
                centre = counted[k]
                shown = [i for i in range(centre - self.left, centre + self.right + 1) if 0 <= i < T and keep[b, i]]
                active = (latents[b, shown] > 0).any(0).nonzero()[:, 0].tolist()  # latents firing in the window
                token_ids = [chunks[chunk_id][i] for i in shown]
                self.rows.append(
                    (rank, chunk_id, centre, shown.index(centre), json.dumps(token_ids), json.dumps(active))
                )

    def sorted_rows(self) -> list[tuple]:
        """``random_contexts`` rows in rank order."""
        return sorted(self.rows)
