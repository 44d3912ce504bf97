"""Several dictionaries from one model pass vs the same runs trained one after another, cold cache, same tokens.

    python bench/one_pass.py [--model smollm2] [--hooks model.layers.3 model.layers.6 ...] [--tokens 32k]
                             [--latents 4096] [--k 32] [--threads 1] [--repeats 1]

Times `sparsecode train --hook H1 H2 H3 H4 ...` (one forward to the last hook feeds all four runs) against four
`sparsecode train --hook Hi ...` runs, each with an empty activation cache, interleaved (together, then the
four alone, per repeat); prints the wall times and their ratio, and checks that every run trained together
equals (weights) the run trained alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sparsecode.cli import main as cli
from sparsecode.cli import parse_count
from sparsecode.io import load_tensors

DEFAULT_HOOKS = ["model.layers.3", "model.layers.6", "model.layers.9", "model.layers.12"]


def _train(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one `sparsecode train`."""
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(["train", *args, "--quiet"])
    if code != 0:
        raise SystemExit(f"sparsecode train {' '.join(args)} failed ({code})")
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--corpus", help="corpus (default: the embedded one)")
    ap.add_argument("--hooks", nargs="+", default=DEFAULT_HOOKS)
    ap.add_argument("--tokens", type=parse_count, default=32_768)
    ap.add_argument("--batch-size", type=parse_count, default=4096)
    ap.add_argument("--latents", type=parse_count, default=4096)
    ap.add_argument("--k", default="32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    common = ["--model", a.model, "--k", a.k, "--latents", str(a.latents), "--tokens", str(a.tokens)]
    # a shuffle fill of the budget (the default fill, 131k rows, would run the model past it)
    common += ["--batch-size", str(a.batch_size), "--buffer-rows", str(a.tokens)]
    common += ["--corpus", a.corpus] if a.corpus else []
    root = Path(tempfile.mkdtemp(prefix="one-pass-bench-"))
    # CPU time beside wall time: on a shared machine other jobs stretch wall time unevenly between the two
    # arms, while a 1-thread run's own CPU seconds barely move
    times: dict[str, list[tuple[float, float]]] = {"together": [], "alone": []}
    try:
        _train([*common, "--hook", a.hooks[0], "--tokens", str(a.batch_size), "--out", str(root / "warm")])
        for r in range(a.repeats):  # interleaved: one of each per round, so load drifts hit both
            together = root / f"together{r}"
            times["together"].append(
                _train([*common, "--hook", *a.hooks, "--out", str(together), "--cache-dir", str(root / f"c{r}t")])
            )
            alone = (0.0, 0.0)
            for i, hook in enumerate(a.hooks):
                out = root / f"alone{r}-{i}"
                wall, cpu = _train([*common, "--hook", hook, "--out", str(out), "--cache-dir", str(root / f"c{r}a{i}")])
                alone = (alone[0] + wall, alone[1] + cpu)
                mine = load_tensors(out / "sae.safetensors")
                theirs = load_tensors(next(together.glob(f"{hook}*")) / "sae.safetensors")
                assert all(torch.equal(mine[k], theirs[k]) for k in mine), f"{hook}: together != alone"
            times["alone"].append(alone)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wall_ratios = [a[0] / t[0] for t, a in zip(times["together"], times["alone"])]
    cpu_ratios = [a[1] / t[1] for t, a in zip(times["together"], times["alone"])]
    t = statistics.median(w for w, _ in times["together"])
    s = statistics.median(w for w, _ in times["alone"])
    tc = statistics.median(c for _, c in times["together"])
    sc = statistics.median(c for _, c in times["alone"])
    print(
        f"{len(a.hooks)} runs ({', '.join(a.hooks)}; {a.model}, TopK {a.latents} latents k={a.k}, {a.tokens:,} tokens "
        f"each, {a.threads} thread(s), cold cache), median of {a.repeats}:"
    )
    print(f"  one pass, trained together: {t:7.1f} s wall, {tc:7.1f} s CPU")
    print(f"  {len(a.hooks)} runs one after another:  {s:7.1f} s wall, {sc:7.1f} s CPU")
    print(
        f"  ratio (median of per-round ratios): {statistics.median(wall_ratios):.2f}x less wall time, "
        f"{statistics.median(cpu_ratios):.2f}x less CPU time from one pass (each run equal to the run trained alone)"
    )


if __name__ == "__main__":
    main()
