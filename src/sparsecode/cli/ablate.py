"""zero features over a corpus: CE loss / KL increase on the tokens each fires on vs all others
For each chosen feature (or the densest live ones), run the run's causal LM over a corpus with the feature's
latent zeroed (the dictionary's error kept, so nothing else changes) and report the mean increase in next-token
cross-entropy and the KL divergence from the clean predictions, on the tokens where the feature was active and on
all other tokens. Writes the result as JSON (--out, default RUN/ablation.json) and prints a table.
"""

from __future__ import annotations

import argparse

from .options import parse_count, positive_int

EXAMPLES = """examples:
  sparsecode ablate runs/smollm2 --features 1234,77
  sparsecode ablate runs/smollm2 --top 20 --max-tokens 16k
  sparsecode ablate runs/smollm2 --features 1234 --corpus my_texts/ --split train
"""


def _features(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of feature ids: {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"need feature ids >= 0, e.g. 1234,77; got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder on a causal language model")
    p.add_argument("--features", type=_features, default=None, metavar="ID1,ID2,..", help="features to ablate")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="without --features: the N densest")
    p.add_argument("--corpus", nargs="+", default=None, metavar="PATH", help="text files/folders (default: the run's)")
    p.add_argument("--split", choices=("eval", "train"), default="eval", help="corpus split")
    p.add_argument("--max-tokens", type=parse_count, default=8192, metavar="N", help="tokens to measure on")
    p.add_argument("--batch-size", type=positive_int, default=4, metavar="N", help="texts per forward pass")
    p.add_argument("--out", default=None, metavar="FILE", help="JSON output (default RUN/ablation.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..interventions.ablate import ablate_features, format_ablation
    from ..io import write_json
    from ..run import load_run

    r = load_run(args.run)
    result = ablate_features(
        r,
        args.features,
        top=args.top,
        corpus=args.corpus,
        split=args.split,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    out = Path(args.out) if args.out else Path(args.run) / "ablation.json"
    write_json(out, result)
    print(format_ablation(result))
    print(f"wrote {out}")
    return 0
