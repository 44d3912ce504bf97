"""How the TopK training step's cost grows with the dictionary: sparsecode vs sparsify, size by size, in one run.

    .venv-bench/bin/python bench/size_sweep.py [--batch 1024] [--steps 1] [--repeats 3] [--threads 1] [--out DIR]

Three sweeps around a middle size (d_in 576, 16,384 latents, k 32), one dimension each: latents 4k..64k,
k 16..256, d_in 384 / 576 / 1024. At every size both trainers take the same training steps on the same random
rows (sparsecode: its Trainer's step, bench/train_step.py; sparsify 1.3.3: its trainer's step with its defaults,
bench/speed.py), interleaved round by round so load drifts hit both alike; the time per token is the median over
the rounds. Writes bench/results/size_sweep.json and docs/size_sweep.png (under --out: elsewhere) and prints the
table docs/performance.md shows. Without sparsify installed (outside .venv-bench) it times sparsecode alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
from pathlib import Path

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch
from speed import installed, sparsify_trainer  # bench/speed.py, next to this file
from timing import interleaved_times
from train_step import training_step

from sparsecode.sae import TopKConfig, build_sae

ROOT = Path(__file__).resolve().parent.parent
if not torch.cuda.is_available():  # as bench/speed.py runs it: sparsify's eager decoder (its Triton one needs a GPU)
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
MIDDLE = {"d_in": 576, "latents": 16384, "k": 32}
SWEEPS = {
    "latents": [4096, 8192, 16384, 32768, 65536],
    "k": [16, 32, 64, 128, 256],
    "d_in": [384, 576, 1024],
}


QUICK_MIDDLE = {"d_in": 16, "latents": 128, "k": 4}
QUICK_SWEEPS = {"latents": [64, 128], "k": [2, 4], "d_in": [16]}
"""--quick: tiny sizes, for tests/test_bench.py."""


def sizes(middle: dict[str, int], sweeps: dict[str, list[int]]) -> list[dict[str, int]]:
    """Every size measured, the middle one once."""
    out: list[dict[str, int]] = []
    for name, values in sweeps.items():
        for v in values:
            size = {**middle, name: v}
            if size not in out:
                out.append(size)
    return out


def time_size(size: dict[str, int], batch: int, steps: int, repeats: int, peer: bool = True) -> dict[str, float]:
    """Seconds per token of each trainer's step at ``size`` (medians of ``repeats`` interleaved rounds)."""
    torch.manual_seed(0)
    x = torch.randn(batch, size["d_in"])  # (batch, d_in)
    ours = training_step(
        build_sae(TopKConfig(d_in=size["d_in"], n_latents=size["latents"], k=size["k"])),
        x,
        torch.zeros(size["latents"], dtype=torch.bool),
    )
    ours()  # warm-up

    def repeat(step):
        return lambda: [step() for _ in range(steps)]

    steps_of = {"sparsecode": repeat(ours)}
    if peer:
        _, _, theirs = sparsify_trainer(size["d_in"], size["latents"], size["k"])
        theirs(x, first=True)  # warm-up (and sparsify's decoder-bias initialisation)
        steps_of["sparsify"] = repeat(lambda: theirs(x))
    times = interleaved_times(steps_of, repeats)
    return {name: statistics.median(ts) / (steps * batch) for name, ts in times.items()}


def plot(rows: list[dict], path: Path, middle: dict[str, int], sweeps: dict[str, list[int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    trainers = [t for t in ("sparsecode", "sparsify") if t in rows[0]]
    for ax, (name, values) in zip(axes, sweeps.items()):
        line = [next(r for r in rows if all(r[k] == v for k, v in {**middle, name: value}.items())) for value in values]
        for trainer, color in zip(trainers, ("#1f77b4", "#999999")):
            ax.plot(values, [r[trainer] * 1e6 for r in line], "o-", color=color, label=trainer)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(values, [f"{v // 1024}k" if v >= 4096 else str(v) for v in values])
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
        others = ", ".join(f"{k} {v}" for k, v in middle.items() if k != name)
        ax.set_title(others, fontsize=9)
    axes[0].set_ylabel("µs per token (training step)")
    axes[0].legend()
    fig.suptitle("TopK training step, time per token vs dictionary size (lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=1, help="steps per timed round")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (interleaved between the trainers)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT, help="where bench/results/ and docs/ are (default: the repo)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    middle, sweeps = (QUICK_MIDDLE, QUICK_SWEEPS) if a.quick else (MIDDLE, SWEEPS)
    peer = installed("sparsify")
    rows = []
    print(
        f"TopK training step, batch {a.batch}, {a.threads} thread(s), medians of {a.repeats} interleaved rounds "
        f"of {a.steps} steps:\n\n| d_in | latents | k | sparsecode µs/token | sparsify µs/token | sparsecode speed-up |"
        "\n|---:|---:|---:|---:|---:|---:|"
    )
    for size in sizes(middle, sweeps):
        t = time_size(size, a.batch, a.steps, a.repeats, peer)
        rows.append({**size, **t})
        theirs = f"{t['sparsify'] * 1e6:.2f} | {t['sparsify'] / t['sparsecode']:.2f}×" if peer else "– | –"
        print(f"| {size['d_in']} | {size['latents']:,} | {size['k']} | {t['sparsecode'] * 1e6:.2f} | {theirs} |")
        gc.collect()
    if peer:
        ratios = [r["sparsify"] / r["sparsecode"] for r in rows]
        print(f"\nspeed-up over sparsify: min {min(ratios):.2f}×, median {statistics.median(ratios):.2f}×")
    (a.out / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (a.out / "docs").mkdir(parents=True, exist_ok=True)
    settings = {"batch": a.batch, "steps": a.steps, "repeats": a.repeats, "threads": a.threads}
    record = {"command": "python bench/size_sweep.py " + " ".join(sys.argv[1:]), "settings": settings, "rows": rows}
    (a.out / "bench" / "results" / "size_sweep.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(rows, a.out / "docs" / "size_sweep.png", middle, sweeps)


if __name__ == "__main__":
    main()
