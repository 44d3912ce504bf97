"""compute every latent's statistics and top contexts into RUN/features.sqlite
Stream a split of the run's corpus through its model and SAE and store, for every latent, density, mean/max
activation, quantiles, a histogram, top-activating and lower-quantile contexts, and the tokens its decoder
direction promotes/suppresses, in RUN/features.sqlite (written atomically). Browse it with `sparsecode serve RUN`.

The options are the fields of FeaturesConfig (features/config.py), described by their docstrings.
"""

from __future__ import annotations

import argparse

from .options import add_config_flags, check_run_folder, given

EXAMPLES = """examples:
  sparsecode features runs/demo                       # held-out split of the run's corpus
  sparsecode features runs/demo --split train --max-tokens 200k --top 30
  sparsecode serve runs/demo                          # then open http://127.0.0.1:8000
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..features import FeaturesConfig

    p.add_argument("run", metavar="RUN", help="run folder written by `sparsecode train` (text model source)")
    p.set_defaults(config_flags=add_config_flags(p, [FeaturesConfig], rename={"top_n": "top"}))
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    check_run_folder(args.run)
    print(format_summary(build(args), args.run))
    return 0


def build(args: argparse.Namespace) -> dict:
    """Build the run's feature database as the command line says; ``build_features``' summary."""
    from ..features import FeaturesConfig, build_features

    return build_features(args.run, FeaturesConfig(**given(args, args.config_flags)), progress=not args.quiet)


def format_summary(r: dict, run: str) -> str:
    """What `features` prints, from ``build_features``' result."""
    return (
        f"wrote {r['path']}: {r['n_latents']} latents over {r['n_tokens']:,} tokens of the {r['split']} split "
        f"in {r['seconds']:.0f}s; {r['dead']} dead, {r['dense']} dense\n"
        f"  promoted/suppressed tokens via: {r['logit_embedding']}\n"
        f"  browse: sparsecode serve {run}"
    )
