"""Held-out FVU of sparsecode's TopK trainer at several peak learning rates (same data, same batches).

    .venv-bench/bin/python bench/lr_sweep.py [--tokens 500k] [--factors 1,2,4,8] [--threads 1] [--seeds 0]

Each run is bench/speed.py's sparsecode child (a fresh process, MiniLM layer-3 activations from
bench/data/, FVU on the held-out rows); lr = factor × the default rule in TrainConfig.peak_lr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from sparsecode.sae import TopKConfig
from sparsecode.train import TrainConfig

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def main() -> None:
    from speed import count  # bench/speed.py, next to this file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=count, default=500_000)
    ap.add_argument("--factors", default="1,2,4,8", help="multiples of the default peak lr")
    ap.add_argument("--base-lr", type=float, help="the lr factor 1 means (default: TrainConfig's default rule)")
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--data", type=Path, default=DATA, help="folder of bench/speed.py's exported activations")
    a = ap.parse_args()

    base = a.base_lr or TrainConfig(tokens=a.tokens, batch_size=a.batch).learning_rate(a.latents, TopKConfig.base_lr)
    print("| lr | × default | held-out FVU | L0 |\n|---|---|---|---|")
    for factor in (float(f) for f in a.factors.split(",")):
        lr = base * factor
        cmd = [
            sys.executable,
            str(HERE / "speed.py"),
            "--child",
            "sparsecode",
            "--train",
            str(a.data / "minilm-l3-train.npy"),
            "--heldout",
            str(a.data / "minilm-l3-heldout.npy"),
            "--tokens",
            str(a.tokens),
            "--latents",
            str(a.latents),
            "--k",
            str(a.k),
            "--batch",
            str(a.batch),
            "--d-in",
            str(np.load(a.data / "minilm-l3-train.npy", mmap_mode="r").shape[1]),
            "--threads",
            str(a.threads),
            "--lr",
            repr(lr),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"lr {lr:g} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        r = json.loads(lines[-1][len("RESULT ") :])
        print(f"| {lr:.3g} | {factor:g} | {r['fvu']:.4f} | {r['l0']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
