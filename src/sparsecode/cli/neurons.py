"""MLP neuron sparsity profile of a model, per layer (no SAE needed)
Fraction of MLP hidden activations that are on (> threshold) in every layer, over the held-out documents
of a corpus; prints a table and writes a bar plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .options import positive_int

EXAMPLES = """examples:
  sparsecode neurons                              # the embedded MiniLM on the default corpus
  sparsecode neurons --model PATH --corpus texts/ --threshold 0.05 --out neurons.png
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", metavar="PATH_OR_NAME", help="transformers model (default: the embedded all-MiniLM-L6-v2)"
    )
    p.add_argument("--corpus", nargs="+", metavar="PATH", help=".txt/.jsonl files or folders (default: CPython docs)")
    p.add_argument(
        "--threshold",
        type=float,
        help="an activation counts as on above this (default 0 for ReLU models, 0.01 otherwise)",
    )
    p.add_argument("--chunks", type=positive_int, default=64, metavar="N", help="text chunks to run")
    p.add_argument("--max-length", type=positive_int, default=128, metavar="N", help="tokens per chunk")
    p.add_argument("--out", default="neurons.png", metavar="PNG", help="plot file; the numbers go beside it as .json")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..eval.neurons import format_neurons, neuron_sparsity
    from ..eval.plots import neurons_figure, save_png
    from ..io import write_json
    from ..sources.hf import ModelSource, ModelSourceConfig

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {args.out}")
    # the hook is not used: the profile hooks every layer's MLP itself
    source = ModelSource(
        ModelSourceConfig(
            model=args.model, hook="(every MLP)", corpus=args.corpus, max_length=args.max_length, device=args.device
        )
    )
    result = neuron_sparsity(source, max_chunks=args.chunks, threshold=args.threshold, progress=not args.quiet)
    result["model"] = source.model_path
    save_png(neurons_figure(result), out)
    write_json(out.with_suffix(".json"), result)
    print(format_neurons(result))
    print(f"  wrote {out}, {out.with_suffix('.json')}")
    return 0
