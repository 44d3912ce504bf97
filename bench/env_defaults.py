"""The training step under different values of an environment setting read by torch when the process starts (such
as the one sparsecode sets, sparsecode.OPENMP_DEFAULTS), in fresh processes, alternating.

    python bench/env_defaults.py GOMP_SPINCOUNT 300000,10000 [--rounds 4] [--threads 2]
    python bench/env_defaults.py THP_MEM_ALLOC_ENABLE 0,1

Runs `bench/train_step.py` once per value per round and prints each run's encoder-GEMM time, step time and
their ratio, then the medians per value. These settings act only when the process starts, hence the fresh
processes. GOMP_SPINCOUNT: how long libgomp's idle workers busy-wait (300000 is libgomp's own default).
THP_MEM_ALLOC_ENABLE: torch's CPU allocator asks for transparent huge pages for blocks of 2 MiB and more.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

STEP = Path(__file__).parent / "train_step.py"


def run(name: str, value: str, threads: int, step_args: str = "") -> tuple[float, float]:
    env = {**os.environ, name: value}
    out = subprocess.run(
        [sys.executable, str(STEP), "--threads", str(threads), "--steps", "3", "--repeats", "3", *step_args.split()],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    gemm = float(re.search(r"encoder GEMM alone\s+([\d.]+) ms", out).group(1))
    step = float(re.search(r"step\s+([\d.]+) ms", out).group(1))
    return gemm, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="the environment variable, e.g. GOMP_SPINCOUNT or THP_MEM_ALLOC_ENABLE")
    ap.add_argument("values", help="comma-separated values to alternate, e.g. 0,1")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--step-args", default="", help="more arguments for bench/train_step.py, e.g. its shape")
    a = ap.parse_args()
    values = a.values.split(",")
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in values}
    width = max(len(v) for v in values)
    for r in range(a.rounds):
        for value in values:
            gemm, step = run(a.name, value, a.threads, a.step_args)
            results[value].append((gemm, step))
            print(
                f"round {r + 1}: {a.name}={value:>{width}s}  GEMM {gemm:6.1f} ms  step {step:6.1f} ms  "
                f"step/GEMM {step / max(gemm, 1e-3):.2f}",
                flush=True,
            )
    print(f"medians over {a.rounds} rounds, {a.threads} threads:")
    for value, rs in results.items():
        print(
            f"  {a.name}={value:>{width}s}  GEMM {statistics.median(g for g, _ in rs):6.1f} ms  "
            f"step {statistics.median(s for _, s in rs):6.1f} ms  step/GEMM {statistics.median(s / max(g, 1e-3) for g, s in rs):.2f}"
        )


if __name__ == "__main__":
    main()
