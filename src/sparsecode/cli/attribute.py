"""which features drove a prediction: attribution (activation x gradient) beside exact ablation; circuits
Rank the latents of one or several runs (dictionaries of one causal LM, e.g. at different layers) by their
attribution to the log-probability of a target next token after a prompt (or to a logit difference, with
--baseline), with each top latent's measured ablation effect beside its linear estimate. With several runs, also
the edges between the features of adjacent dictionaries. Writes attribution.json and attribution.png to --out.
"""

from __future__ import annotations

import argparse

from .options import positive_int

EXAMPLES = """examples:
  sparsecode attribute runs/smollm2 --prompt "The capital of France is" --target " Paris"
  sparsecode attribute runs/smollm2 --prompt "The capital of France is" --target " Paris" --baseline " London"
  sparsecode attribute runs/l3 runs/l6 runs/l9 --prompt "The capital of France is" --target " Paris"
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders on the same causal LM")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text before the predicted token")
    p.add_argument("--target", required=True, metavar="TOKEN", help="the predicted token, e.g. ' Paris'")
    p.add_argument("--baseline", default=None, metavar="TOKEN", help="score target minus this token's logit")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="latents kept per run")
    p.add_argument("--no-ablation", action="store_true", help="skip the exact ablation of the top latents")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default FIRST_RUN/attribution)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..interventions.circuit import attribute_prompt, format_attribution, write_graph
    from ..layout import ATTRIBUTION_DIR
    from ..run import load_run

    runs = [load_run(r) for r in args.runs]
    result, info = attribute_prompt(
        runs, args.prompt, args.target, args.baseline, top=args.top, ablate=not args.no_ablation
    )
    out = Path(args.out) if args.out else Path(args.runs[0]) / ATTRIBUTION_DIR
    json_path, png_path = write_graph(result, info, out)
    print(format_attribution(result, info))
    print(f"wrote {json_path} and {png_path}")
    return 0
