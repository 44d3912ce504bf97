"""Planted-feature recovery of one architecture, with the settings of the recovery test in
tests/test_architectures.py (512 features in 64 dims, 5 active; recovery = fraction of true features whose
best decoder row has cosine >= 0.9).

    python bench/recovery.py batchtopk '{"k": 5}' --tokens 300000
    python bench/recovery.py batchtopk '{"k": 5, "rank_relative": false}'        # the paper's raw ranking
    python bench/recovery.py jumprelu '{"target_l0": 5.0}' --seeds 0 1
    python bench/recovery.py gated '{"target_l0": 5.0}' --tokens 1000000
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sparsecode.eval import recovery_fraction
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
) -> tuple[float, dict]:
    src = SyntheticSourceConfig(n_features=n_features, dim=64, active=5, magnitude=magnitude, seed=seed)
    sae_cfg = ARCHITECTURES[arch].config_class(d_in=64, n_latents=n_features, **sae_kw)
    train = TrainConfig(tokens=tokens, batch_size=256, lr=lr, dead_tokens=50_000, buffer_rows=65536)
    with tempfile.TemporaryDirectory() as tmp:
        sae = Trainer(RunConfig(src, sae_cfg, train), Path(tmp) / "run", open_source(src), progress=False).fit()
        last = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    return recovery_fraction(sae.W_dec.detach(), open_source(src).true_features, threshold=0.9), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=list(ARCHITECTURES))
    parser.add_argument("sae_kw", nargs="?", default="{}", help="JSON dict of SAE config fields")
    parser.add_argument("--tokens", type=int, default=300_000)
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
    for seed in args.seeds:
        rec, last = recovery(
            args.arch, json.loads(args.sae_kw), args.tokens, seed, args.features, args.magnitude, args.lr
        )
        print(
            f"{args.arch} {args.sae_kw} features={args.features} {args.magnitude} tokens={args.tokens} lr={args.lr} "
            f"seed={seed}: recovery@0.9 = {rec:.3f}  "
            f"(final fvu {last.get('fvu', float('nan')):.3f}, l0 {last.get('l0', float('nan')):.2f})"
        )


if __name__ == "__main__":
    main()
