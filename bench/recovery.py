"""Planted-feature recovery of one architecture, with the settings of the recovery test in
tests/test_architectures.py (512 features in 64 dims, 5 active; recovery = fraction of true features whose
best decoder row has cosine >= 0.9), or with ``--cli`` those of issue 19's synthetic setting at the CLI's
defaults (`sparsecode train --synthetic features=256,dim=48,active=4 --latents 512 --tokens 500000`: 4096-row
batches, every training default). Prints recovery, MMCS and the L0 on 16384 held-out rows.

    python bench/recovery.py batchtopk '{"k": 5}' --tokens 300000
    python bench/recovery.py batchtopk '{"k": 5, "rank_relative": false}'        # the paper's raw ranking
    python bench/recovery.py jumprelu '{"target_l0": 5.0}' --seeds 0 1
    python bench/recovery.py gated '{"target_l0": 5.0}' --tokens 1000000
    python bench/recovery.py jumprelu '{"target_l0": 4.0}' --cli
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sparsecode.eval import mmcs, recovery_fraction
from sparsecode.run import RunConfig
from sparsecode.sae import ARCHITECTURES
from sparsecode.sources import SyntheticSourceConfig, open_source
from sparsecode.train import TrainConfig, Trainer


def recovery(
    arch: str,
    sae_kw: dict,
    tokens: int,
    seed: int,
    n_features: int = 512,
    magnitude: str = "uniform",
    lr: float | None = None,
    cli: bool = False,
) -> dict[str, float]:
    """Train one dictionary; its recovery@0.9, MMCS, held-out L0 and the last logged training metrics."""
    if cli:  # issue 19's setting, every training default
        src = SyntheticSourceConfig(n_features=256, dim=48, active=4, magnitude=magnitude, seed=seed)
        sae_cfg = ARCHITECTURES[arch].config_class(d_in=48, n_latents=512, **sae_kw)
        train = TrainConfig(tokens=tokens, lr=lr)
    else:
        src = SyntheticSourceConfig(n_features=n_features, dim=64, active=5, magnitude=magnitude, seed=seed)
        sae_cfg = ARCHITECTURES[arch].config_class(d_in=64, n_latents=n_features, **sae_kw)
        train = TrainConfig(tokens=tokens, batch_size=256, lr=lr, dead_tokens=50_000, buffer_rows=65536)
    with tempfile.TemporaryDirectory() as tmp:
        sae = Trainer(RunConfig(src, sae_cfg, train), Path(tmp) / "run", open_source(src), progress=False).fit()
        last = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    source = open_source(src)
    held_out = next(source.iter_batches("eval")).acts[:16384]  # (n, d_in)
    with torch.no_grad():
        eval_l0 = (sae.eval().encode(held_out) > 0).sum(-1).float().mean().item()
    true = source.true_features
    return {
        "recovery": recovery_fraction(sae.W_dec.detach(), true, threshold=0.9),
        "mmcs": mmcs(sae.W_dec.detach(), true),
        "eval_l0": eval_l0,
        "train_l0": last.get("l0", float("nan")),
        "train_fvu": last.get("fvu", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=list(ARCHITECTURES))
    parser.add_argument("sae_kw", nargs="?", default="{}", help="JSON dict of SAE config fields")
    parser.add_argument("--tokens", type=int, default=None, help="default: 300000 (500000 with --cli)")
    parser.add_argument("--cli", action="store_true", help="issue 19's synthetic setting at the CLI's defaults")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--features", type=int, default=512, help="planted features (= latents); fewer = less superposition"
    )
    parser.add_argument("--magnitude", default="uniform", help="uniform, exponential or constant")
    parser.add_argument(
        "--lr",
        type=lambda s: None if s == "default" else float(s),
        default=None,
        help="peak learning rate (default: the architecture's, as the CLI and the test use)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokens = args.tokens or (500_000 if args.cli else 300_000)
    setting = "cli 256/48/4, 512 latents" if args.cli else f"features={args.features}"
    for seed in args.seeds:
        r = recovery(args.arch, json.loads(args.sae_kw), tokens, seed, args.features, args.magnitude, args.lr, args.cli)
        print(
            f"{args.arch} {args.sae_kw} {setting} {args.magnitude} tokens={tokens} lr={args.lr} seed={seed}: "
            f"recovery@0.9 = {r['recovery']:.3f}  mmcs {r['mmcs']:.3f}  held-out l0 {r['eval_l0']:.2f}  "
            f"(final training fvu {r['train_fvu']:.3f}, l0 {r['train_l0']:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
