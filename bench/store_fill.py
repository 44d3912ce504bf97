"""Time the activation store's shuffle-buffer fills from an array file, and the finiteness check inside them.

    python bench/store_fill.py [PATH.npy] [--fills 4] [--buffer-rows 131072] [--batch 4096]

PATH defaults to the speed benchmark's MiniLM export (bench/data/minilm-l3-train.npy, written by
bench/speed.py). Prints each fill's time, then the per-chunk finiteness check two ways, interleaved: the
source's check (a sum first, the element-wise scan only when the sum is not finite) and the element-wise
scan alone (what every chunk paid before).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sparsecode.activations import ActivationStore
from sparsecode.sources import ArraySourceConfig, open_source
from sparsecode.sources.arrays import _describe_bad

DEFAULT = Path(__file__).parent / "data" / "minilm-l3-train.npy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--fills", type=int, default=4)
    ap.add_argument("--buffer-rows", type=int, default=131072)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    if not Path(a.path).is_file():
        raise SystemExit(f"{a.path} not found: run `make bench` once (it exports it) or pass a .npy path")

    source = open_source(ArraySourceConfig(path=a.path))
    store = ActivationStore(source, batch_size=a.batch, buffer_rows=a.buffer_rows)
    print(f"{a.path}: {source.num_rows('train'):,} train rows; fills of {store.buffer_rows:,} rows, "
          f"{torch.get_num_threads()} threads")
    for fill in range(a.fills):
        t = time.perf_counter()
        store._load_fill(fill)
        print(f"  fill {fill}: {1e3 * (time.perf_counter() - t):7.1f} ms")

    chunk = next(source.iter_batches("train"))  # one chunk_rows block, as the store receives them
    checks = {"sum first (the source's check)": lambda: _describe_bad(chunk.acts),
              "element-wise scan": lambda: bool((~torch.isfinite(chunk.acts)).any())}
    times: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(a.repeats):
        for name, check in checks.items():
            t = time.perf_counter()
            check()
            times[name].append(time.perf_counter() - t)
    print(f"finiteness check of one {tuple(chunk.acts.shape)} chunk, median of {a.repeats}:")
    for name, ts in times.items():
        print(f"  {name:32s} {1e3 * statistics.median(ts):7.1f} ms")


if __name__ == "__main__":
    main()
