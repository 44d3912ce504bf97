"""The TopK step's selection on the CPU: the float32 encoder product + compiled top-k, against the bfloat16
product + exact screen (``kernels/screen.py``), on real activations and a briefly trained SAE.

    python bench/screen.py [PATH.npy] [--train-steps 40] [--rows 4096] [--latents 6144] [--k 32] [--repeats 11]
                           [--threads 2] [--against GIT_REVISION]

Trains a TopK SAE for a few steps on the MiniLM export (bench/data/minilm-l3-train.npy, written by `make bench`),
then on the next rows times, interleaved: both GEMMs alone and both selections (GEMM included). Reports medians,
the candidates the screen rescored per row, and whether both selections agree (same latents per row; values
within float32 rounding). ``--against REV`` also times ``kernels/screen.py`` as of git revision REV in the same
rounds and reports the median of the per-round time ratios (an A/B of a change to the screen).
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch
from timing import interleaved_wall_and_cpu, step_shape_parser  # bench/timing.py, next to this file

from sparsecode.kernels import topk as topk_module
from sparsecode.kernels.screen import EncoderScreen
from sparsecode.run import RunConfig
from sparsecode.sae import TopKConfig
from sparsecode.sources import ArraySourceConfig, open_source
from sparsecode.train import TrainConfig, Trainer

DEFAULT = Path(__file__).parent / "data" / "minilm-l3-train.npy"


def screen_at(revision: str, directory: Path):
    """``kernels/screen.py`` as of a git revision, loaded as a module beside the current one (its imports resolve to
    the current package: revisions before the kernels package, with ``sae/cpu_screen.py``, do not load)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:src/sparsecode/kernels/screen.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"--against {revision}: {e.stderr.strip()}") from None
    path = directory / "screen_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sparsecode.kernels.screen_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "sparsecode.kernels"  # its relative imports resolve to the current package
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = step_shape_parser(__doc__, repeats=11)
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--train-steps", type=int, default=40, help="training steps before timing (default 40)")
    ap.add_argument("--against", metavar="REV", help="also time the screen as of this git revision (an A/B)")
    a = ap.parse_args()
    if not Path(a.path).is_file():
        raise SystemExit(f"{a.path} not found: run `make bench` once (it exports it) or pass a .npy path")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(
            ArraySourceConfig(path=a.path),
            TopKConfig(d_in=a.d_in, n_latents=a.latents, k=a.k),
            TrainConfig(tokens=a.rows * max(1, a.train_steps), batch_size=a.rows),
        )
        trainer = Trainer(config, Path(tmp) / "run", open_source(config.source), progress=False)
        sae = trainer.fit(stop_at_step=a.train_steps)
    rows = np.load(a.path, mmap_mode="r")
    x = torch.from_numpy(np.array(rows[-a.rows :], dtype=np.float32)) * float(config.input_scale or 1.0)
    W_enc, b_enc, b_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach()

    screen = EncoderScreen()
    block = torch.empty(a.rows, a.latents)
    bias = b_enc - b_dec @ W_enc
    x_bf16, w_bf16, q = (
        x.bfloat16(),
        W_enc.T.contiguous().bfloat16(),
        torch.empty(a.rows, a.latents, dtype=torch.bfloat16),
    )
    functions = {
        "float32 GEMM alone": lambda: torch.mm(x, W_enc, out=block),
        "bfloat16 GEMM alone": lambda: torch.mm(x_bf16, w_bf16.T, out=q),
        "float32 GEMM + compiled top-k": lambda: topk_module.chunked_topk(x, W_enc, bias, a.k, buffer=block),
        "bfloat16 GEMM + exact screen": lambda: topk_module.screened_topk_rows(
            x, W_enc, b_enc, b_dec, a.k, screen, a.rows
        ),
    }
    baseline = f"exact screen at {a.against}"
    if a.against:
        earlier = screen_at(a.against, Path(tempfile.mkdtemp()))
        earlier_screen, xc = earlier.EncoderScreen(), (x - b_dec).contiguous()
        size = topk_module.block_size(a.latents, a.k)
        functions[baseline] = lambda: earlier.screened_topk(xc, W_enc, b_enc, a.k, size, a.rows, earlier_screen)
    times = interleaved_wall_and_cpu(functions, a.repeats + 1)
    plain = topk_module.chunked_topk(x, W_enc, bias, a.k, buffer=block)
    screened = topk_module.screened_topk_rows(x, W_enc, b_enc, b_dec, a.k, screen, a.rows)
    same = (plain[1].sort(1).values == screened[1].sort(1).values).all(1)
    gap = (plain[0].sort(1).values - screened[0].sort(1).values).abs().max().item()
    counts = screen.candidates.double()

    print(
        f"TopK selection, ({a.rows}, {a.d_in}) rows of {Path(a.path).name} after {a.train_steps} training steps, "
        f"{a.latents} latents, k={a.k}, {a.threads} threads, median of {a.repeats}:"
    )
    medians = {}
    for name, calls in times.items():
        medians[name] = statistics.median(w for w, _ in calls[1:])
        busy = statistics.median(c / w for w, c in calls[1:])
        print(f"  {name:32s} {1e3 * medians[name]:7.2f} ms  cores busy {busy:4.2f}")
    print(
        f"  screen ÷ float32 path: {medians['bfloat16 GEMM + exact screen'] / medians['float32 GEMM + compiled top-k']:.2f}"
    )
    if a.against:
        ratios = [now[0] / then[0] for now, then in zip(times["bfloat16 GEMM + exact screen"][1:], times[baseline][1:])]
        print(f"  exact screen now ÷ at {a.against}: {statistics.median(ratios):.3f} (median of per-round ratios)")
    print(
        f"  candidates rescored per row: mean {counts.mean():.1f}, median {counts.median():.0f}, "
        f"99th percentile {counts.quantile(0.99):.0f}, max {counts.max():.0f} (k = {a.k})"
    )
    print(
        f"  same latents in {int(same.sum())}/{len(same)} rows; largest value difference {gap:.2e} "
        f"(largest |value| {plain[0].abs().max().item():.2f})"
    )


if __name__ == "__main__":
    main()
