"""Time training steps of a TopK SAE at the demo's shape on random data (tokens/s, median of repeats).

    python bench/train_step.py [--d-in 384] [--latents 6144] [--k 32] [--batch 4096] [--steps 20] [--repeats 3]
                               [--dead-fraction 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from sparsecode.sae import TopKConfig, build_sae


def training_step(sae, x: torch.Tensor, dead: torch.Tensor) -> Callable[[], None]:
    """One optimizer step on ``x``, as the trainer takes it (fused Adam, gradient projection, renormalisation)."""
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        out = sae.training_output(x, dead_mask=dead, progress=0.5)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_grad_()
        opt.step()
        sae.normalize_decoder_()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dead-fraction", type=float, default=0.0,
                    help="fraction of latents marked dead, so the AuxK loss runs (default 0: no AuxK)")
    args = ap.parse_args()

    sae = build_sae(TopKConfig(d_in=args.d_in, n_latents=args.latents, k=args.k))
    x = torch.randn(args.batch, args.d_in)
    dead = torch.zeros(args.latents, dtype=torch.bool)
    dead[: int(args.latents * args.dead_fraction)] = True
    step = training_step(sae, x, dead)

    for _ in range(3):
        step()  # warm up
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        rates.append(args.steps * args.batch / (time.perf_counter() - t))
    gflop = 2 * args.d_in * args.latents * args.batch / 1e9
    print(f"TopK d_in={args.d_in} latents={args.latents} k={args.k} batch={args.batch} dead={args.dead_fraction:.0%} threads={torch.get_num_threads()}: "
          f"median {statistics.median(rates):,.0f} tokens/s over {args.repeats} repeats "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); encoder GEMM alone is {gflop:.1f} GFLOP per step")


if __name__ == "__main__":
    main()
