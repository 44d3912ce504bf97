"""Which Othello GPT learns legal moves fastest per CPU second: short timed trials of `sparsecode othello train`
variants, each the first ``--stop`` steps of its full ``--steps``-step schedule (so every trial sees the learning
rate the full run would), on one torch thread.

    python bench/othello_trials.py [--stop 400] [--steps N] [--log-every 100] [--variants JSON] [--out FILE]

``--variants`` is a JSON object {name: {OthelloGPTConfig field: value}} of changes to the defaults; the default
set compares, at width 128, the output layer tied to the move embeddings or not and twice the depth.
Prints, per variant and check, the CPU seconds spent and the legal-move top-1 on 100 held-out games (the games
`othello train` checks on). CPU seconds of one thread are what a trial costs whatever else the machine runs;
the rates of 100 games move by a point or two between neighbouring checks, so read the trend, not one check.
"""

from __future__ import annotations

import argparse
import json

import torch

from sparsecode.worlds.othello_gpt import OthelloGPTConfig, fit_othello_gpt, held_out_games

W128 = {"n_embd": 128, "lr": 3e-3}
VARIANTS = {
    "4x128 tied": {**W128, "n_layer": 4, "tie_embeddings": True},
    "4x128 untied": {**W128, "n_layer": 4, "tie_embeddings": False},
    "8x128 untied": {**W128, "n_layer": 8, "tie_embeddings": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stop", type=int, default=400, help="steps each trial runs")
    ap.add_argument("--steps", type=int, default=None, help="schedule length (default: othello train's)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--variants", default=None, help="JSON {name: {field: value}}; default: the set above")
    ap.add_argument("--out", default=None, help="also write the histories here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = json.loads(args.variants) if args.variants else VARIANTS
    results = {}
    for name, changes in variants.items():
        cfg = OthelloGPTConfig(**{**({"steps": args.steps} if args.steps else {}), **changes})
        _, history = fit_othello_gpt(cfg, held_out_games(cfg), progress=False, log_every=args.log_every, stop=args.stop)
        results[name] = history
        for h in history:
            print(
                f"{name:28s} step {h['step']:5d}  cpu {h['cpu_seconds']:7.1f} s  legal {100 * h['legal_top1']:5.1f} %"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
