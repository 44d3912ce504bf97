"""Top-k selection on a TopK SAE's pre-activation block: torch.topk vs sparsecode's exact_topk (pure torch)
vs its compiled kernel (kernels/topk_rows.py, which also adds the encoder bias as it reads).

    python bench/topk.py [--rows 4096] [--latents 6144] [--k 32] [--repeats 9] [--threads 2] [--steps 5]

Times the selection alone (interleaved repeats, medians) on real-looking pre-activations (random x times
a random encoder), checks all return the same values, then times whole training steps (as
bench/train_step.py) with each selector.
"""

from __future__ import annotations

import statistics
import time

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch
from timing import interleaved_wall_and_cpu, step_shape_parser  # bench/timing.py, next to this file

from sparsecode.kernels import topk as topk_module
from sparsecode.kernels.topk_rows import topk_with_bias
from sparsecode.sae import TopKConfig, build_sae


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def main() -> None:
    ap = step_shape_parser(__doc__, repeats=9)
    ap.add_argument("--steps", type=int, default=5, help="training steps per repeat in the step timing (0: skip)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    sae = build_sae(TopKConfig(d_in=a.d_in, n_latents=a.latents, k=a.k))
    x = torch.randn(a.rows, a.d_in)
    bias = torch.randn(a.latents) * 0.1
    raw = (x @ sae.W_enc).detach().contiguous()  # (rows, latents) without the bias, as the compiled path sees it
    pre = raw + bias  # with it, as the torch paths see it
    size = topk_module.block_size(a.latents, a.k)
    out = (torch.empty(a.rows, a.k), torch.empty(a.rows, a.k, dtype=torch.long))
    reference = pre.topk(a.k, dim=-1, sorted=False)[0].sort(-1).values
    assert torch.equal(topk_module.exact_topk(pre, a.k)[0].sort(-1).values, reference), (
        "exact_topk differs from torch.topk"
    )
    topk_with_bias(raw, bias, a.k, size, out)
    assert torch.equal(out[0].sort(-1).values, reference), "topk_rows differs from torch.topk"
    selectors = {
        "torch.topk": lambda: pre.topk(a.k, dim=-1, sorted=False),
        "exact_topk": lambda: topk_module.exact_topk(pre, a.k),
        "topk_rows": lambda: topk_with_bias(raw, bias, a.k, size, out),
    }
    calls = interleaved_wall_and_cpu(selectors, a.repeats)
    times = {name: [wall for wall, _ in c] for name, c in calls.items()}
    busy = {name: statistics.median(cpu / wall for wall, cpu in c) for name, c in calls.items()}
    base = median_ms(times["torch.topk"])
    print(
        f"selection, ({a.rows}, {a.latents}) fp32 block, k={a.k}, {a.threads} threads, median of {a.repeats} "
        f"(cores busy: CPU time / wall time):"
    )
    for name in selectors:
        print(
            f"  {name:11s} {median_ms(times[name]):7.1f} ms  ({median_ms(times[name]) / base:.2f}x torch.topk)  "
            f"cores busy {busy[name]:4.2f}"
        )
    if not a.steps:
        return

    from train_step import training_step  # bench/train_step.py, next to this file

    step = training_step(sae, x, torch.zeros(a.latents, dtype=torch.bool))

    def steps() -> None:
        for _ in range(a.steps):
            step()

    # the encoder's selection alone swapped (the rest of the step compiled as usual): internals replaced, a diagnostic
    original, compiled_for = topk_module.exact_topk, topk_module.compiled_for
    never = lambda *tensors: False
    step_impls = {
        "torch.topk": (never, lambda p, k: p.topk(k, dim=-1, sorted=False)),
        "exact_topk": (never, original),
        "topk_rows": (compiled_for, original),
    }
    step_times: dict[str, list[float]] = {name: [] for name in step_impls}
    try:
        for r in range(a.repeats + 1):
            for name, (compiled, impl) in step_impls.items():
                topk_module.compiled_for, topk_module.exact_topk = compiled, impl
                t = time.perf_counter()
                steps()
                if r:  # the first round warms up
                    step_times[name].append((time.perf_counter() - t) / a.steps)
    finally:
        topk_module.compiled_for, topk_module.exact_topk = compiled_for, original
    base = median_ms(step_times["torch.topk"])
    print(f"training step (batch {a.rows}), median of {a.repeats} × {a.steps} steps:")
    for name in step_impls:
        ms = median_ms(step_times[name])
        print(f"  {name:11s} {ms:7.1f} ms/step  {a.rows / ms * 1e3:9,.0f} tokens/s  ({ms / base:.2f}x)")


if __name__ == "__main__":
    main()
