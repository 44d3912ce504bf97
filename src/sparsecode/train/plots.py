"""Training curves as a PNG: loss, FVU, L0 and dead fraction against tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import atomic_write


def plot_training_curves(metrics_path: str | Path, out_path: str | Path) -> None:
    """Read metrics.jsonl and write a PNG of loss, FVU, L0 and dead fraction against tokens, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return
    tokens = [r["tokens"] for r in rows]
    panels = (
        ("loss", "training loss", True),
        ("fvu", "FVU (fraction of variance unexplained)", True),
        ("l0", "L0 (active latents / token)", False),
        ("dead_fraction", "dead latent fraction", False),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(17, 3.6))
    for ax, (key, title, log) in zip(axes, panels):
        values = [r.get(key, float("nan")) for r in rows]
        ax.plot(tokens, values, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("tokens")
        if log:
            ax.set_yscale("log")
        else:  # counts and fractions: show them against zero so a flat line is not magnified
            finite = [v for v in values if not math.isnan(v)]
            ax.set_ylim(0, max(max(finite, default=0) * 1.15, 0.01 if key == "dead_fraction" else 1.0))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out_path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
