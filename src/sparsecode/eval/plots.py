"""Plots written into a run folder. Uses matplotlib's Agg canvas directly (no GUI, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
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
    return save_png(density_figure(density, bins), path)


# -- figures for report.html (returned as PNG bytes; the report embeds them) ------------------------------


def new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    """A Figure with an Agg canvas attached (no pyplot global state)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG."""
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def density_figure(density: torch.Tensor | np.ndarray, bins: int = 50) -> bytes:
    """PNG bytes of the histogram of log10(density) over latents that fired (see :func:`plot_density_histogram`)."""
    d = np.asarray(density.detach().cpu() if isinstance(density, torch.Tensor) else density, dtype=np.float64)
    alive = d[d > 0]
    n_dead = int(d.size - alive.size)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    if alive.size:
        ax.hist(np.log10(alive), bins=bins, color="tab:blue")
    else:
        ax.text(0.5, 0.5, "no latent fired", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("log10(firing density)")
    ax.set_ylabel("latents")
    pct = 100.0 * n_dead / d.size if d.size else 0.0
    ax.set_title(f"Latent density: {d.size} latents, {n_dead} dead ({pct:.1f}%, not shown)")
    return png_bytes(fig)


def l0_figure(l0_counts: np.ndarray) -> bytes:
    """Histogram of active latents per row; ``l0_counts[i]`` = rows with exactly i active latents."""
    counts = np.asarray(l0_counts, dtype=np.float64)
    nz = np.nonzero(counts)[0]
    hi = int(nz.max()) + 1 if nz.size else 1
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(hi), counts[:hi], width=1.0, color="tab:green")
    mean = float((np.arange(counts.size) * counts).sum() / max(counts.sum(), 1))
    ax.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.1f}")
    ax.set_xlabel("active latents per row (L0)")
    ax.set_ylabel("rows")
    ax.set_xlim(left=-0.5)
    ax.legend()
    ax.set_title("L0 distribution")
    return png_bytes(fig)


def max_cos_figure(cosines: np.ndarray, threshold: float) -> bytes:
    """Histogram of each true feature's best cosine with a learned direction."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(np.asarray(cosines), bins=40, range=(min(0.0, float(np.min(cosines))), 1.0), color="tab:purple")
    ax.axvline(threshold, color="black", linestyle="--", label=f"recovered (cos ≥ {threshold:g})")
    ax.set_xlabel("max cosine with a learned feature")
    ax.set_ylabel("true features")
    ax.legend()
    ax.set_title("Ground-truth recovery")
    return png_bytes(fig)


def probing_figure(probing: dict) -> bytes:
    """Mean F1 over concepts vs k for each representation (left); per-concept 1-sparse F1 (right)."""
    ks = probing["ks"]
    fig = new_figure(11, 4.5)
    ax = fig.add_subplot(1, 2, 1)
    for rep, scores in probing["mean"].items():
        ax.plot(ks[: len(scores["f1"])], scores["f1"], marker="o", label=rep)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(0.4, 1.02)
    ax.set_xlabel("k (probe coordinates)")
    ax.set_ylabel("mean F1 (balanced held-out tokens)")
    ax.set_title(f"k-sparse probing, {len(probing['concepts'])} concepts")
    ax.legend()
    ax = fig.add_subplot(1, 2, 2)
    names = list(probing["concepts"])
    reps = list(probing["mean"])
    width = 0.8 / max(len(reps), 1)
    for r, rep in enumerate(reps):
        vals = [probing["concepts"][n][rep]["f1"][0] for n in names]
        ax.bar(np.arange(len(names)) + r * width, vals, width=width, label=rep)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels([n.replace("first_letter_", "") for n in names], rotation=90, fontsize=7)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("F1 of the 1-sparse probe")
    ax.legend(fontsize=7)
    ax.set_title("per concept (letters: first_letter_x)")
    return png_bytes(fig)


def absorption_figure(absorption: dict) -> bytes:
    """Per-letter absorption rate and main-latent miss rate."""
    letters = list(absorption["letters"])
    fig = new_figure(8, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(letters))
    ax.bar(
        x - 0.2,
        [absorption["letters"][c]["main_miss_rate"] for c in letters],
        width=0.4,
        color="tab:gray",
        label="main latents silent",
    )
    ax.bar(
        x + 0.2,
        [absorption["letters"][c]["absorption_rate"] for c in letters],
        width=0.4,
        color="tab:red",
        label="absorbed",
    )
    ax.set_xticks(x)
    ax.set_xticklabels(letters)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of probe-correct tokens")
    ax.set_title(f"First-letter absorption (mean {absorption['absorption_rate']:.3f})")
    ax.legend()
    return png_bytes(fig)


def neurons_figure(neurons: dict) -> bytes:
    """Fraction of MLP hidden activations that are on, per layer."""
    layers = neurons["layers"]
    fig = new_figure(6, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(len(layers)), [100 * lay["fraction_active"] for lay in layers], color="tab:orange")
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels([str(i) for i in range(len(layers))])
    ax.set_xlabel("layer")
    ax.set_ylabel("% of MLP activations on")
    ax.set_title(f"Neuron sparsity ({neurons['activation']}, on = a > {neurons['threshold']:g})")
    ax.set_ylim(0, 100)
    return png_bytes(fig)


def save_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes atomically."""
    path = Path(path)
    atomic_write(path, lambda p: Path(p).write_bytes(data))
    return path


def atoms_figure(decoder: torch.Tensor, patch_shape: tuple[int, int], order: list[int], title: str) -> bytes:
    """The dictionary's image atoms (decoder rows reshaped to ``patch_shape``) in a grid, in ``order``.

    Each atom is scaled to its own largest absolute value (gray = 0), as dictionary figures usually are.
    """
    atoms = decoder.detach().to("cpu", torch.float64).numpy()[order]  # (n, H*W)
    n = len(order)
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / cols)))
    h, w = patch_shape
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), np.nan)  # one-pixel NaN gutters between atoms
    for i, atom in enumerate(atoms):
        r, c = divmod(i, cols)
        peak = np.abs(atom).max()
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = atom.reshape(h, w) / (
            peak if peak > 0 else 1.0
        )
    side = min(10.0, max(3.0, 0.35 * cols * (w + 1) / 4))
    fig = new_figure(side, side * grid.shape[0] / grid.shape[1] + 0.4)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(grid, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return png_bytes(fig)
