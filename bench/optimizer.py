"""Adam's step on a TopK SAE's weights, and the unit-norm decoder's constraint around it.

    python bench/optimizer.py [--latents 6144] [--d-in 384] [--repeats 21] [--threads 2]

1. torch's fused Adam with W_enc row-major, with W_enc latent-major (how sparsecode stores it), and
   sparsecode's Adam (train/optim.py) on the latent-major weights. torch's fused CPU kernel copies a
   non-contiguous weight in and out on every step; sparsecode's Adam hands it the weight's contiguous
   transpose instead (the same elementwise update).
2. The whole optimizer step with a unit-norm decoder: the decoder gradient's projection (compiled), Adam and the
   rows' rescaling as three passes, against sparsecode's Adam given the decoder as ``unit_rows`` (one compiled
   pass for the decoder's projection, update and rescaling).
Interleaved repeats, medians.
"""

from __future__ import annotations

import argparse
import statistics

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch
from timing import interleaved_times  # bench/timing.py, next to this file

from sparsecode.kernels import project_out_rows_
from sparsecode.train.optim import Adam


def weights(latent_major: bool, d: int, m: int) -> list[torch.nn.Parameter]:
    """A TopK SAE's (W_dec, W_enc, b_enc, b_dec), unit-norm decoder rows, random gradients."""
    W_enc = torch.randn(m, d).T if latent_major else torch.randn(d, m)  # (d, m) either way
    W_dec = torch.nn.functional.normalize(torch.randn(m, d), dim=1)
    params = [torch.nn.Parameter(t) for t in (W_dec, W_enc, torch.randn(m), torch.randn(d))]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def stepper(optimizer_class, latent_major: bool, d: int, m: int):
    opt = optimizer_class(weights(latent_major, d, m), lr=1e-3, fused=True)
    opt.step()  # creates the state
    return opt.step


def constrained_steppers(d: int, m: int):
    """(three passes, one pass): a step that keeps the decoder's rows at unit norm."""
    params = weights(True, d, m)
    separate = Adam(params, lr=1e-3, fused=True)
    W_dec = params[0]

    def three_passes() -> None:
        project_out_rows_(W_dec.grad, W_dec)
        separate.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    params = weights(True, d, m)
    fused = Adam(params, lr=1e-3, fused=True, unit_rows=[params[0]])
    for step in (three_passes, fused.step):
        step()  # creates the state
    return three_passes, fused.step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    three_passes, one_pass = constrained_steppers(a.d_in, a.latents)
    steps = {
        "torch fused Adam, W_enc row-major": stepper(torch.optim.Adam, False, a.d_in, a.latents),
        "torch fused Adam, W_enc latent-major": stepper(torch.optim.Adam, True, a.d_in, a.latents),
        "sparsecode Adam, W_enc latent-major": stepper(Adam, True, a.d_in, a.latents),
        "unit-norm decoder: project, Adam, rescale": three_passes,
        "unit-norm decoder: Adam with unit_rows": one_pass,
    }
    times = interleaved_times(steps, a.repeats)
    print(f"d_in={a.d_in}, latents={a.latents}, {a.threads} threads, median of {a.repeats}:")
    for name, ts in times.items():
        print(f"  {name:42s} {1e3 * statistics.median(ts):6.2f} ms")


if __name__ == "__main__":
    main()
