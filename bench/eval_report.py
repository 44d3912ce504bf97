"""Time the full evaluation report of a run, per part (median of repeats), e.g. the demo run:

    python bench/eval_report.py runs/demo [--repeats 3] [--threads N] [--quick]

Each repeat is a complete ``evaluate_run`` (it rewrites RUN/eval.json and RUN/report.html). Prints the
median seconds of every part (core, splice, dark_matter, probing, absorption, neurons) and of the total
wall-clock time, which includes loading the run, the model and the corpus.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsecode.eval import evaluate_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    parts: dict[str, list[float]] = {}
    totals = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluate_run(args.run, progress=False, quick=args.quick)
        totals.append(time.perf_counter() - start)
        for name, seconds in result["timings"].items():
            parts.setdefault(name, []).append(seconds)
    print(f"{args.run}: {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    for name, values in parts.items():
        print(
            f"  {name:<12} median {statistics.median(values):7.1f} s   (all: {', '.join(f'{v:.1f}' for v in values)})"
        )
    print(f"  {'total':<12} median {statistics.median(totals):7.1f} s   (all: {', '.join(f'{v:.1f}' for v in totals)})")


if __name__ == "__main__":
    main()
