"""Training curves as a PNG: loss, L0 and FVU against tokens."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write


def plot_training_curves(metrics_path: str | Path, out_path: str | Path) -> None:
    """Read metrics.jsonl and write a three-panel PNG (loss, L0, FVU vs tokens), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return
    tokens = [r["tokens"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title, log in ((axes[0], "loss", "training loss", True), (axes[1], "l0", "L0 (active latents / token)", False),
                                (axes[2], "fvu", "FVU (fraction of variance unexplained)", True)):
        ax.plot(tokens, [r.get(key, float("nan")) for r in rows], lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("tokens")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out_path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
