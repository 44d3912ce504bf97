"""Adam's step on a TopK SAE's weights: torch's fused Adam with W_enc row-major, with W_enc latent-major (how
sparsecode stores it), and sparsecode's Adam (train/optim.py) on the latent-major weights; then the decoder
gradient's projection (unit-norm rows, before the step), torch against the compiled one-pass kernel
(sae/cpu_backward.py).

    python bench/optimizer.py [--latents 6144] [--d-in 384] [--repeats 21] [--threads 2]

Interleaved repeats, medians. torch's fused CPU kernel copies a non-contiguous weight in and out on every step;
sparsecode's Adam hands it the weight's contiguous transpose instead (the same elementwise update).
"""

from __future__ import annotations

import argparse
import statistics

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch
from timing import interleaved_times  # bench/timing.py, next to this file

from sparsecode.sae.cpu_backward import project_out_rows_
from sparsecode.train.optim import Adam


def stepper(optimizer_class, latent_major: bool, d: int, m: int):
    W_enc = torch.randn(m, d).T if latent_major else torch.randn(d, m)  # (d, m) either way
    params = [torch.nn.Parameter(t) for t in (torch.randn(m, d), W_enc, torch.randn(m), torch.randn(d))]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = optimizer_class(params, lr=1e-3, fused=True)
    opt.step()  # creates the state
    return opt.step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    steps = {"torch fused Adam, W_enc row-major": stepper(torch.optim.Adam, False, a.d_in, a.latents),
             "torch fused Adam, W_enc latent-major": stepper(torch.optim.Adam, True, a.d_in, a.latents),
             "sparsecode Adam, W_enc latent-major": stepper(Adam, True, a.d_in, a.latents)}
    W = torch.nn.functional.normalize(torch.randn(a.latents, a.d_in), dim=1)
    G = torch.randn(a.latents, a.d_in)
    steps |= {
        "gradient projection, torch": lambda: G.addcmul_(torch.linalg.vecdot(G, W)[:, None], W, value=-1),
        "gradient projection, compiled": lambda: project_out_rows_(G, W),
    }
    times = interleaved_times(steps, a.repeats)
    print(f"d_in={a.d_in}, latents={a.latents}, {a.threads} threads, median of {a.repeats}:")
    for name, ts in times.items():
        print(f"  {name:38s} {1e3 * statistics.median(ts):6.2f} ms")


if __name__ == "__main__":
    main()
