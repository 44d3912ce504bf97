"""Where the training loop's time goes: the bench's TopK run on real activations, with timers around its parts.

    python bench/loop_parts.py [PATH.npy] [--tokens 500k] [--threads 2]

Trains as `bench/speed.py` does for sparsecode (TopK, 6144 latents, k=32, batch 4096, the MiniLM export
bench/data/minilm-l3-train.npy by default) while timing the store's batches, the encoder GEMM, the compiled
top-k (or, where the CPU has AMX, the bfloat16 product with its exact top-k, ``kernels.topk.screen_applies``), the compiled pass that decodes and takes the FVU's gradients, the embedding-bag passes (both by-latent
weight gradients), the whole backward and Adam.
Prints each per step against the loop's own time (the rate the trainer logs), then the same model's bare
step (bench/train_step.py's) on random rows and on real rows, interleaved, so the gap between the bare step
and the loop, and its source, come from one run. Diagnostic only: the timers wrap library internals.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
import types
from pathlib import Path

import numpy as np

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch
import torch.nn.functional as F
from speed import loop_seconds  # bench/speed.py, next to this file
from train_step import training_step  # bench/train_step.py

from sparsecode.activations import store as store_module
from sparsecode.cli import parse_count
from sparsecode.kernels import sparse
from sparsecode.kernels import topk as topk_module
from sparsecode.run import RunConfig
from sparsecode.sae import TopKConfig, build_sae
from sparsecode.sources import ArraySourceConfig, open_source
from sparsecode.train import TrainConfig, Trainer

DEFAULT = Path(__file__).parent / "data" / "minilm-l3-train.npy"
SECONDS: dict[str, float] = collections.defaultdict(float)


def timed(function, name: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - start

    return wrapper


class _Proxy(types.ModuleType):
    """A module whose attributes are another's, except the few replaced by timed versions."""

    def __init__(self, inner: types.ModuleType, **replaced) -> None:
        super().__init__(inner.__name__)
        self._inner = inner
        self.__dict__.update(replaced)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def instrument() -> None:
    topk_module.torch = _Proxy(torch, mm=timed(torch.mm, "encoder GEMM"))
    sparse.F = _Proxy(F, embedding_bag=timed(F.embedding_bag, "embedding-bag passes"))
    topk_module.topk_with_bias = timed(topk_module.topk_with_bias, "top-k (compiled)")
    topk_module.screened_topk_rows = timed(topk_module.screened_topk_rows, "bfloat16 product + exact top-k")
    sparse.decode_and_fvu_grads = timed(sparse.decode_and_fvu_grads, "decode + FVU grads (compiled)")
    store_module.ActivationStore.__next__ = timed(store_module.ActivationStore.__next__, "store: next batch")
    torch.Tensor.backward = timed(torch.Tensor.backward, "backward (all of it)")
    torch.optim.Adam.step = timed(torch.optim.Adam.step, "Adam step")


def bare_steps(real: torch.Tensor, latents: int, k: int, rounds: int = 5, steps: int = 3) -> dict[str, float]:
    """Median ms of the bare step on random rows and on the file's rows (interleaved rounds)."""
    sae = build_sae(TopKConfig(d_in=real.shape[1], n_latents=latents, k=k))
    dead = torch.zeros(latents, dtype=torch.bool)
    inputs = {"random rows": torch.randn_like(real), "real rows": real}
    step_fns = {name: training_step(sae, x, dead) for name, x in inputs.items()}
    times: dict[str, list[float]] = {name: [] for name in inputs}
    for r in range(rounds + 1):
        for name, step in step_fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            if r:
                times[name].append((time.perf_counter() - start) / steps)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--tokens", type=parse_count, default=500_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    if not Path(a.path).is_file():
        raise SystemExit(f"{a.path} not found: run `make bench` once (it exports it) or pass a .npy path")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    real = torch.from_numpy(np.load(a.path, mmap_mode="r")[: a.batch].copy())
    real *= (real.shape[1] / real.pow(2).sum(-1).mean()).sqrt()  # the trainer's input normalisation
    bare = bare_steps(real, a.latents, a.k)

    instrument()
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(
            ArraySourceConfig(path=a.path),
            TopKConfig(d_in=real.shape[1], n_latents=a.latents, k=a.k),
            TrainConfig(tokens=a.tokens, batch_size=a.batch),
        )
        Trainer(config, Path(tmp) / "run", open_source(config.source), progress=False).fit()
        loop, tokens = loop_seconds(Path(tmp) / "run" / "metrics.jsonl")  # as bench/speed.py counts it
    steps = tokens // a.batch
    print(f"{torch.get_num_threads()} threads, {steps} steps of {a.batch} rows from {a.path}")
    print(
        f"  bare step (bench/train_step.py's): {bare['random rows']:.1f} ms on random rows, "
        f"{bare['real rows']:.1f} ms on real rows"
    )
    print(
        f"  training loop: {1e3 * loop / steps:.1f} ms per step, of which (timers; the backward includes "
        f"the by-latent embedding-bag passes):"
    )
    for name, seconds in SECONDS.items():
        print(f"    {name:30s} {1e3 * seconds / steps:7.1f} ms")


if __name__ == "__main__":
    main()
