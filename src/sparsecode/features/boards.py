"""Board correlation of every latent on an Othello run: how each latent's activation co-varies with each square
being empty / mine / theirs (relative to the player to move), over every token the feature build reads. The
dashboard shades a context's board with it, so a "this square is mine" feature shows as one lit square."""

from __future__ import annotations

import numpy as np
import torch

N_STATES = 3


class BoardCorrelation:
    """Running sums for the Pearson correlation of ``n_latents`` latents with the 64 x 3 square-state indicators."""

    def __init__(self, n_latents: int) -> None:
        self.n = 0
        self.sum_a = torch.zeros(n_latents, dtype=torch.float64)
        self.sum_aa = torch.zeros(n_latents, dtype=torch.float64)
        self.sum_y = torch.zeros(64 * N_STATES, dtype=torch.float64)
        self.sum_ay = torch.zeros(n_latents, 64 * N_STATES, dtype=torch.float64)

    def update(self, latents: torch.Tensor, keep: torch.Tensor, boards: np.ndarray) -> None:
        """``latents`` (B, T, n_latents), ``keep`` (B, T) bool tokens to count, ``boards`` (B, T, 64) states."""
        a = latents[keep].to("cpu", torch.float64)  # (n, n_latents)
        states = torch.from_numpy(boards.astype(np.int64))[keep.cpu()]  # (n, 64)
        y = torch.nn.functional.one_hot(states, N_STATES).reshape(len(states), -1).double()  # (n, 192)
        self.n += len(a)
        self.sum_a += a.sum(0)
        self.sum_aa += (a * a).sum(0)
        self.sum_y += y.sum(0)
        self.sum_ay += a.T @ y

    def correlation(self) -> torch.Tensor:
        """(n_latents, 64, 3) Pearson correlations; 0 where a latent or a square state never varies."""
        n = max(self.n, 1)
        mean_a, mean_y = self.sum_a / n, self.sum_y / n
        cov = self.sum_ay / n - mean_a[:, None] * mean_y[None, :]  # (n_latents, 192)
        var_a = (self.sum_aa / n - mean_a**2).clamp_min(0)
        var_y = mean_y * (1 - mean_y)  # indicators: p (1 - p)
        scale = (var_a[:, None] * var_y[None, :]).sqrt()
        corr = torch.where(scale > 1e-12, cov / scale.clamp_min(1e-30), torch.zeros_like(cov))
        return corr.clamp(-1, 1).reshape(-1, 64, N_STATES).float()
