"""Reconstruction and sparsity metrics, accumulated over a stream of batches.

Every sum is kept in float64 so that the result over many batches equals the one-shot value to
rounding, whatever the batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError

EPS = 1e-12


class ReconstructionStats:
    """Streaming accumulator of reconstruction quality and latent firing statistics.

    Call :meth:`update` once per batch with the inputs ``x`` (n, d), the latent activations
    (n, n_latents) and the reconstructions ``x_hat`` (n, d); then :meth:`result`.

    The total variance around the mean uses Chan et al.'s pairwise update of a per-dimension running
    mean and sum of squared deviations, which stays accurate when the mean is large compared with
    the spread (a plain ``Σx² − n·mean²`` does not).
    """

    def __init__(self, n_latents: int, dense_threshold: float = 0.1) -> None:
        self.n_latents = n_latents
        self.dense_threshold = dense_threshold
        self.n_rows = 0
        self.n_dims: int | None = None
        self.mean: torch.Tensor | None = None  # (d,) float64 running mean of x
        self.m2: torch.Tensor | None = None  # (d,) float64 running Σ (x - mean)²
        self.sq_err = 0.0  # Σ ‖x − x̂‖²
        self.cos_sum = 0.0  # Σ cos(x, x̂)
        self.l2_ratio_sum = 0.0  # Σ ‖x̂‖ / ‖x‖ over rows with ‖x‖ > 0
        self.cos_rows = 0  # rows with ‖x‖ > 0 (on the others cosine and norm ratio are undefined)
        self.l0_sum = 0.0  # Σ (non-zero latents per row)
        self.fire_counts = torch.zeros(n_latents, dtype=torch.int64)  # (n_latents,)
        self.l0_counts = torch.zeros(n_latents + 1, dtype=torch.int64)  # (n_latents+1,) rows with exactly i active

    @torch.inference_mode()
    def update(self, x: torch.Tensor, latents: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Add one batch: ``x`` (n, d), ``latents`` (n, n_latents), ``x_hat`` (n, d)."""
        if x.ndim != 2 or x_hat.shape != x.shape:
            raise DataError(f"reconstruction shape {tuple(x_hat.shape)} does not match input shape {tuple(x.shape)}")
        if latents.ndim != 2 or latents.shape[0] != x.shape[0] or latents.shape[1] != self.n_latents:
            raise DataError(f"latents have shape {tuple(latents.shape)}, expected ({x.shape[0]}, {self.n_latents})")
        n = x.shape[0]
        if n == 0:
            return
        if self.n_dims is None:
            self.n_dims = x.shape[1]
        elif x.shape[1] != self.n_dims:
            raise DataError(f"input width changed from {self.n_dims} to {x.shape[1]} between batches")
        x = x.detach().to("cpu", torch.float64)  # (n, d)
        x_hat = x_hat.detach().to("cpu", torch.float64)  # (n, d)
        latents = latents.detach().to("cpu")  # (n, n_latents)

        # Running mean and M2 per dimension (Chan et al. parallel combination).
        b_mean = x.mean(dim=0)  # (d,)
        b_m2 = ((x - b_mean) ** 2).sum(dim=0)  # (d,)
        if self.mean is None:
            self.mean, self.m2 = b_mean, b_m2
        else:
            n_a, total = self.n_rows, self.n_rows + n
            delta = b_mean - self.mean  # (d,)
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + b_m2 + delta**2 * (n_a * n / total)
        self.n_rows += n

        err = x - x_hat  # (n, d)
        self.sq_err += float((err**2).sum())
        x_norm = x.norm(dim=1)  # (n,)
        x_hat_norm = x_hat.norm(dim=1)  # (n,)
        nonzero = x_norm > 0  # (n,) a zero row has no direction: a ratio to its norm would be x̂'s norm / EPS
        cos = (x * x_hat).sum(dim=1) / (x_norm * x_hat_norm).clamp_min(EPS)  # (n,) 0 where x̂ = 0
        self.cos_sum += float(cos[nonzero].sum())
        self.l2_ratio_sum += float((x_hat_norm[nonzero] / x_norm[nonzero]).sum())
        self.cos_rows += int(nonzero.sum())

        active = latents > 0  # (n, n_latents)
        self.l0_sum += float(active.sum())
        self.l0_counts += torch.bincount(active.sum(dim=1), minlength=self.n_latents + 1)
        self.fire_counts += active.sum(dim=0).to(torch.int64)

    def density(self) -> torch.Tensor:
        """(n_latents,) float64: fraction of rows on which each latent is > 0."""
        return self.fire_counts.to(torch.float64) / max(self.n_rows, 1)

    def result(self) -> dict[str, Any]:
        """All metrics as plain Python numbers.

        With N rows of width d, x̄ the mean row over all N rows, and f the latent vector of a row:

        - ``fvu`` = Σ‖x − x̂‖² / Σ‖x − x̄‖²  (fraction of variance unexplained)
        - ``explained_variance`` = 1 − fvu (both None when the inputs have no variance)
        - ``mse`` = Σ‖x − x̂‖² / (N·d)
        - ``cosine`` = (1/N') Σ x·x̂ / (‖x‖‖x̂‖) over the N' rows with ‖x‖ > 0 (a row with x̂ = 0 counts 0)
        - ``l2_ratio`` = (1/N') Σ ‖x̂‖ / ‖x‖ over the same rows; both None when N' = 0
        - ``zero_rows`` = N − N', the rows of norm 0 (every other metric counts them)
        - ``l0`` = (1/N) Σ #{j : f_j > 0}
        - ``l0_std``: standard deviation of #{j : f_j > 0} over rows; ``l0_histogram``: list whose
          entry i is the number of rows with exactly i active latents (trailing zeros cut)
        - ``dead_fraction`` = fraction of latents with f_j > 0 on no row
        - ``dense_fraction`` = fraction of latents with density > ``dense_threshold``,
          where density_j = #{rows : f_j > 0} / N
        """
        if self.n_rows == 0:
            raise DataError("no evaluation rows: the eval split is empty")
        n, d = self.n_rows, self.n_dims or 1
        total_var = float(self.m2.sum()) if self.m2 is not None else 0.0
        fvu = self.sq_err / total_var if total_var > 0 else None  # constant inputs: no variance to explain
        density = self.density()
        n_dead = int((self.fire_counts == 0).sum())
        n_dense = int((density > self.dense_threshold).sum())
        values = torch.arange(self.n_latents + 1, dtype=torch.float64)
        counts = self.l0_counts.to(torch.float64)
        l0_var = float((counts * (values - self.l0_sum / n) ** 2).sum()) / n
        nz = torch.nonzero(self.l0_counts).flatten()
        histogram = self.l0_counts[: int(nz.max()) + 1].tolist() if nz.numel() else [0]
        return {
            "n_rows": n,
            "fvu": fvu,
            "explained_variance": None if fvu is None else 1.0 - fvu,
            "mse": self.sq_err / (n * d),
            "cosine": self.cos_sum / self.cos_rows if self.cos_rows else None,
            "l2_ratio": self.l2_ratio_sum / self.cos_rows if self.cos_rows else None,
            "zero_rows": n - self.cos_rows,
            "l0": self.l0_sum / n,
            "l0_std": l0_var**0.5,
            "l0_histogram": histogram,
            "n_dead": n_dead,
            "dead_fraction": n_dead / self.n_latents,
            "n_dense": n_dense,
            "dense_fraction": n_dense / self.n_latents,
            "dense_threshold": self.dense_threshold,
        }


def _take_rows(batches: Iterable[Any], max_rows: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
    """(input, target, batch) from ActivationBatches or bare tensors, stopping after ``max_rows`` rows;
    ``batch`` is the (possibly cut) ActivationBatch, or None for a bare tensor."""
    seen = 0
    for batch in batches:
        if max_rows is not None and seen >= max_rows:
            return
        if max_rows is not None and seen + len(batch) > max_rows:
            batch = batch[: max_rows - seen] if isinstance(batch, torch.Tensor) else batch.slice(0, max_rows - seen)
        if isinstance(batch, torch.Tensor):
            x, target, batch = batch, batch, None
        else:
            x = batch.acts
            target = batch.targets if batch.targets is not None else x
        seen += x.shape[0]
        yield x, target, batch


@torch.inference_mode()
def evaluate_reconstruction(
    sae: nn.Module,
    batches: Iterable[Any],
    max_rows: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    dense_threshold: float = 0.1,
    on_batch: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Run ``sae`` over ``batches`` (ActivationBatch or (n, d_in) tensors), at most ``max_rows`` rows.

    The reconstruction target is the batch's ``targets`` when present (transcoders), else its input.
    ``sae`` is moved to ``device`` (in place, as ``nn.Module.to`` does) and left in its original
    train/eval mode. ``on_batch(batch, target, latents, x_hat)`` is called after every batch (batch is
    the ActivationBatch or None; tensors on ``device``), so other metrics can share this one pass.
    Returns (:meth:`ReconstructionStats.result`, density per latent (n_latents,) float64).
    """
    sae = sae.to(device)
    was_training = sae.training
    sae.eval()
    stats = ReconstructionStats(sae.W_dec.shape[0], dense_threshold=dense_threshold)
    bar = tqdm(total=max_rows, desc="eval", unit="row", disable=not progress, leave=False)
    try:
        for x, target, batch in _take_rows(batches, max_rows):
            x_dev = x.to(device, torch.float32)  # (n, d_in)
            latents = sae.encode(x_dev)  # (n, n_latents)
            x_hat = sae.reconstruct(x_dev, latents)  # (n, d_out)
            stats.update(target, latents, x_hat)
            if on_batch is not None:
                on_batch(batch, target, latents, x_hat)
            bar.update(x.shape[0])
    finally:
        bar.close()
        sae.train(was_training)
    return stats.result(), stats.density()
