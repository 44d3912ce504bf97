"""Plots written into a run folder. Uses matplotlib's Agg canvas directly (no GUI, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_write


def plot_density_histogram(density: torch.Tensor | np.ndarray, path: str | Path, bins: int = 50) -> Path:
    """Histogram of log10(density) over the latents that fired at least once, saved atomically as PNG.

    ``density`` (n_latents,) is the fraction of eval rows on which each latent was > 0. Dead latents
    (density 0) have no logarithm; they are counted in the title instead.
    """
    d = np.asarray(density.detach().cpu() if isinstance(density, torch.Tensor) else density, dtype=np.float64)
    alive = d[d > 0]
    n_dead = int(d.size - alive.size)

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if alive.size:
        ax.hist(np.log10(alive), bins=bins, color="tab:blue")
    else:
        ax.text(0.5, 0.5, "no latent fired", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("log10(firing density)")
    ax.set_ylabel("latents")
    pct = 100.0 * n_dead / d.size if d.size else 0.0
    ax.set_title(f"Latent density: {d.size} latents, {n_dead} dead ({pct:.1f}%, not shown)")
    fig.tight_layout()

    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    return path
