"""The training step with libgomp's default busy-wait after each parallel op against sparsecode's shorter one.

    python bench/openmp_wait.py [--rounds 4] [--threads 2] [--spins 300000,10000]

Runs `bench/train_step.py` in fresh processes, alternating GOMP_SPINCOUNT values (300000 is libgomp's own default;
10000 is what `import sparsecode` sets, see sparsecode.OPENMP_DEFAULTS), and prints each run's encoder-GEMM time,
step time and their ratio, then the medians per setting. The setting only acts when the process starts.
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


def run(spins: str, threads: int) -> tuple[float, float]:
    env = {**os.environ, "GOMP_SPINCOUNT": spins}
    out = subprocess.run([sys.executable, str(STEP), "--threads", str(threads), "--steps", "3", "--repeats", "3"],
                         env=env, capture_output=True, text=True, check=True).stdout
    gemm = float(re.search(r"encoder GEMM alone\s+([\d.]+) ms", out).group(1))
    step = float(re.search(r"step\s+([\d.]+) ms", out).group(1))
    return gemm, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spins", default="300000,10000", help="GOMP_SPINCOUNT values to alternate")
    a = ap.parse_args()
    settings = a.spins.split(",")
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in settings}
    for r in range(a.rounds):
        for spins in settings:
            gemm, step = run(spins, a.threads)
            results[spins].append((gemm, step))
            print(f"round {r + 1}: GOMP_SPINCOUNT={spins:>7s}  GEMM {gemm:6.1f} ms  step {step:6.1f} ms  "
                  f"step/GEMM {step / gemm:.2f}", flush=True)
    print(f"medians over {a.rounds} rounds, {a.threads} threads:")
    for spins, rs in results.items():
        print(f"  GOMP_SPINCOUNT={spins:>7s}  step {statistics.median(s for _, s in rs):6.1f} ms  "
              f"step/GEMM {statistics.median(s / g for g, s in rs):.2f}")


if __name__ == "__main__":
    main()
