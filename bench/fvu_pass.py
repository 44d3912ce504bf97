"""The TopK step's reconstruction loss on the CPU: sparsecode's compiled pass (decode, FVU and its gradients in
one pass over the rows) against the torch path it replaces, and the batch variance (the FVU's denominator)
computed by the compiled one-pass kernel against torch's centred two-pass form.

    python bench/fvu_pass.py [--rows 4096] [--latents 6144] [--d-in 384] [--k 32] [--repeats 21] [--threads 2]

Random rows, weights and patterns at the bench's shapes; forward and backward for the loss; interleaved
repeats, medians, and how many of the threads' cores each call kept busy on average.
"""

from __future__ import annotations

import statistics

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch
from timing import interleaved_wall_and_cpu, step_shape_parser  # bench/timing.py, next to this file

from sparsecode import kernels
from sparsecode.kernels import SparsePattern, sparse_fvu
from sparsecode.kernels.fvu_pass import batch_variance
from sparsecode.sae.base import total_variance


def loss_step(values, pattern, W_dec, b_dec, target, compiled: bool):
    def step() -> None:
        with kernels.use("compiled" if compiled else "torch"):
            fvu, _ = sparse_fvu(values, pattern, W_dec, b_dec, target)
            fvu.backward()
        for t in (values, W_dec, b_dec):
            t.grad = None

    return step


def main() -> None:
    a = step_shape_parser(__doc__, repeats=21).parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    values = torch.rand(a.rows, a.k, requires_grad=True)
    W_dec = torch.nn.functional.normalize(torch.randn(a.latents, a.d_in), dim=1).requires_grad_()
    b_dec = torch.zeros(a.d_in, requires_grad=True)
    target = torch.randn(a.rows, a.d_in)
    pattern = SparsePattern(torch.randint(0, a.latents, (a.rows, a.k)), a.latents)
    functions = {
        "torch path: embedding bags + mse_loss, forward + backward": loss_step(
            values, pattern, W_dec, b_dec, target, False
        ),
        "compiled pass, forward + backward": loss_step(values, pattern, W_dec, b_dec, target, True),
        "batch variance, torch (centred copy)": lambda: total_variance(target),
        "batch variance, compiled (one pass)": lambda: batch_variance(target),
    }
    times = interleaved_wall_and_cpu(functions, a.repeats + 1)
    print(
        f"FVU of a ({a.rows}, {a.d_in}) batch, {a.latents} latents, k={a.k}, {a.threads} threads, "
        f"median of {a.repeats} (cores busy: CPU time / wall time):"
    )
    for name, calls in times.items():
        wall = statistics.median(w for w, _ in calls[1:])
        busy = statistics.median(c / w for w, c in calls[1:])
        print(f"  {name:58s} {1e3 * wall:7.2f} ms  cores busy {busy:4.2f}")


if __name__ == "__main__":
    main()
