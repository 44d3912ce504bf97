"""Time the activation store's shuffle-buffer fills from an array file, and the finiteness check inside them.

    python bench/store_fill.py [PATH.npy] [--fills 5] [--chunk-rows 65536,16384] [--buffer-rows 131072] [--batch 4096]

PATH defaults to the speed benchmark's MiniLM export (bench/data/minilm-l3-train.npy, written by
bench/speed.py). Prints each fill's time for each source chunk size (interleaved), then the per-chunk
finiteness check two ways, interleaved: the source's check (a sum first, the element-wise scan only when the
sum is not finite) and the element-wise scan alone (what every chunk paid before).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from timing import interleaved_times  # bench/timing.py, next to this file

from sparsecode.activations import ActivationStore
from sparsecode.cli import parse_count
from sparsecode.sources import ArraySourceConfig, open_source
from sparsecode.sources.arrays import _describe_bad
from sparsecode.train.memory import keep_freed_memory

DEFAULT = Path(__file__).parent / "data" / "minilm-l3-train.npy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--fills", type=int, default=5)
    ap.add_argument("--chunk-rows", default="65536,16384", help="source chunk sizes to compare (default 65536,16384)")
    ap.add_argument("--buffer-rows", type=int, default=131072)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    if not Path(a.path).is_file():
        raise SystemExit(f"{a.path} not found: run `make bench` once (it exports it) or pass a .npy path")

    keep_freed_memory()  # as the trainer does
    chunk_sizes = [parse_count(c) for c in a.chunk_rows.split(",")]
    stores = {
        rows: ActivationStore(
            open_source(ArraySourceConfig(path=a.path, chunk_rows=rows)), batch_size=a.batch, buffer_rows=a.buffer_rows
        )
        for rows in chunk_sizes
    }
    source = open_source(ArraySourceConfig(path=a.path))
    print(
        f"{a.path}: {source.num_rows('train'):,} train rows; fills of {a.buffer_rows:,} rows, "
        f"{torch.get_num_threads()} threads; per fill (ms) by chunk_rows, interleaved:"
    )
    fills: dict[int, list[float]] = {rows: [] for rows in chunk_sizes}
    for fill in range(a.fills):
        for rows, store in stores.items():
            t = time.perf_counter()
            store._load_fill(fill)
            fills[rows].append(time.perf_counter() - t)
    for rows, ts in fills.items():
        print(
            f"  chunk_rows {rows:7,}: "
            + " ".join(f"{1e3 * t:6.1f}" for t in ts)
            + f"   median after the first {1e3 * statistics.median(ts[1:] or ts):6.1f} ms"
        )

    chunk = next(source.iter_batches("train"))  # one chunk_rows block, as the store receives them
    checks = {
        "sum first (the source's check)": lambda: _describe_bad(chunk.acts),
        "element-wise scan": lambda: bool((~torch.isfinite(chunk.acts)).any()),
    }
    times = interleaved_times(checks, a.repeats)
    print(f"finiteness check of one {tuple(chunk.acts.shape)} chunk, median of {a.repeats}:")
    for name, ts in times.items():
        print(f"  {name:32s} {1e3 * statistics.median(ts):7.1f} ms")


if __name__ == "__main__":
    main()
