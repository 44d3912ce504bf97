"""Time training steps of a TopK SAE at the demo's shape on random data (tokens/s, median of repeats).

    python bench/train_step.py [--d-in 384] [--latents 6144] [--k 32] [--batch 4096] [--steps 5] [--repeats 5]
                               [--threads 2] [--dead-fraction 0.1]

Also times the encoder GEMM alone (interleaved with the steps), so the step's GEMM share, i.e. the % of the
1-GEMM limit bench/speed.py reports (without data loading), comes from one run. Where the step selects from a
bfloat16 product (``kernels.topk.screen_applies``), the step with the float32 product is timed too; with dead
latents (AuxK on), the step with AuxK computed the other way (dense or sparse, ``kernels.auxk.DENSE_AUXK_RATIO``)
as well.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch

from sparsecode import kernels
from sparsecode.kernels import auxk as auxk_module
from sparsecode.kernels.topk import screen_applies
from sparsecode.sae import TopKConfig, build_sae
from sparsecode.train.optim import Adam


def training_step(sae, x: torch.Tensor, dead: torch.Tensor) -> Callable[[], None]:
    """One optimizer step on ``x``, as the trainer takes it (fused Adam, which also projects the decoder's gradient
    and renormalises its rows)."""
    opt = Adam(sae.parameters(), lr=1e-4, fused=True, unit_rows=sae.unit_norm_rows())

    def step() -> None:
        out = sae.training_output(x, dead_mask=dead, progress=0.5)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (interleaved between variants)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--dead-fraction",
        type=float,
        default=0.0,
        help="fraction of latents marked dead, so the AuxK loss runs (default 0: no AuxK)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    sae = build_sae(TopKConfig(d_in=args.d_in, n_latents=args.latents, k=args.k))
    x = torch.randn(args.batch, args.d_in)
    dead = torch.zeros(args.latents, dtype=torch.bool)
    dead[: int(args.latents * args.dead_fraction)] = True
    step = training_step(sae, x, dead)
    encoder = torch.randn(args.d_in, args.latents)
    block = torch.empty(args.batch, args.latents)

    def float32_step() -> None:
        with kernels.use("compiled"):
            step()

    def other_auxk_step() -> None:
        ratio = auxk_module.DENSE_AUXK_RATIO
        auxk_module.DENSE_AUXK_RATIO = 0 if dense_auxk else 10**9
        try:
            step()
        finally:
            auxk_module.DENSE_AUXK_RATIO = ratio

    variants = {"encoder GEMM alone": lambda: torch.mm(x, encoder, out=block), "step": step}
    if screen_applies(x, sae.W_enc, args.k):
        variants["step, float32 product"] = float32_step
    n_dead, k_aux = int(dead.sum()), min(args.d_in // 2, int(dead.sum()))
    dense_auxk = n_dead <= auxk_module.DENSE_AUXK_RATIO * k_aux
    if n_dead:
        variants[f"step, {'sparse' if dense_auxk else 'dense'} AuxK"] = other_auxk_step
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats + 1):  # round 0 warms up
        for name, work in variants.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                work()
            if r:
                times[name].append((time.perf_counter() - t) / args.steps)
    gemm = statistics.median(times["encoder GEMM alone"])
    print(
        f"TopK d_in={args.d_in} latents={args.latents} k={args.k} batch={args.batch} dead={args.dead_fraction:.0%} "
        f"threads={torch.get_num_threads()}; medians of {args.repeats} interleaved rounds of {args.steps} steps:"
    )
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        share = (
            f"  GEMM share {100 * gemm / statistics.median(ts):4.0f}% (the % of the 1-GEMM limit)"
            if name != "encoder GEMM alone"
            else f"  {2 * args.d_in * args.latents * args.batch / gemm / 1e9:.0f} GFLOP/s"
        )
        print(f"  {name:24s} {ms:7.1f} ms  {args.batch / ms * 1e3:9,.0f} tokens/s{share}")


if __name__ == "__main__":
    main()
