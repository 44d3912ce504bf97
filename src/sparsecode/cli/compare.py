"""several evaluated runs side by side: table, FVU-vs-L0 Pareto plot, fidelity-vs-L0 plot
Compare runs by their eval.json: prints a table and writes compare.json, pareto.png, fidelity.png and
compare.html into --out.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsecode compare runs/k16 runs/k32 runs/k64             # after `sparsecode eval` (or eval --quick) of each
  sparsecode compare runs/sweep-* --out runs/sweep-compare
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, each evaluated with `sparsecode eval`")
    p.add_argument("--out", default="compare", metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from ..eval.compare import compare_runs, format_compare

    print(format_compare(compare_runs(args.runs, args.out)))
    return 0
