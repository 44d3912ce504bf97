"""evaluate a trained run: FVU, L0, dead latents, spliced fidelity, ground truth, dark matter, sparse probing, absorption, neuron sparsity
Evaluate a run on its held-out split; writes RUN/eval.json, RUN/density.png and a self-contained
RUN/report.html (plots embedded).
"""

from __future__ import annotations

import argparse

from .options import check_run_folder, parse_count, positive_int

EXAMPLES = """examples:
  sparsecode eval runs/minilm-l3                  # every metric that applies; open runs/minilm-l3/report.html
  sparsecode eval runs/minilm-l3 --quick          # core metrics only (reconstruction, sparsity, fidelity)
  sparsecode eval runs/toy --max-rows 65536       # synthetic runs: ground truth (MMCS, recovery, feature F1)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder written by `sparsecode train`")
    p.add_argument("--max-rows", type=parse_count, default=65536, metavar="N", help="eval rows")
    p.add_argument(
        "--splice-chunks", type=positive_int, default=64, metavar="N", help="text chunks for spliced fidelity"
    )
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--quick",
        action="store_true",
        help="core metrics only: skip dark matter, sparse probing, absorption and the neuron sparsity profile",
    )
    p.add_argument(
        "--probe-tokens", type=parse_count, default=8192, metavar="N", help="tokens for sparse probing and absorption"
    )
    p.add_argument(
        "--corpus",
        nargs="+",
        metavar="CORPUS",
        help="evaluate on another corpus's eval split instead of the run's own (files, a hub dataset or "
        "wikipedia/shakespeare/pydoc, as for train); writes eval-NAME.json, density-NAME.png, report-NAME.html",
    )
    p.add_argument("--text-column", metavar="NAME", help="the text column of --corpus records (default text)")
    p.add_argument(
        "--neuron-chunks",
        type=positive_int,
        default=64,
        metavar="N",
        help="text chunks for the neuron sparsity profile",
    )


def run(args: argparse.Namespace) -> int:
    check_run_folder(args.run)
    from ..eval import evaluate_run, format_report

    result = evaluate_run(
        args.run,
        max_rows=args.max_rows,
        splice_chunks=args.splice_chunks,
        device=args.device,
        progress=not args.quiet,
        quick=args.quick,
        probe_tokens=args.probe_tokens,
        neuron_chunks=args.neuron_chunks,
        corpus=args.corpus,
        text_column=args.text_column,
    )
    print(format_report(result))
    return 0
