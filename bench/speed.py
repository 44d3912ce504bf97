"""Training speed side by side: sparsecode vs EleutherAI sparsify vs SAELens, same activations, same config.

    make bench                                   # sets up .venv-bench (peers + jemalloc), then runs this
    .venv-bench/bin/python bench/speed.py [--tokens 500k] [--repeats 3] [--threads 2] [--only sparsecode,sparsify]

What it does, in one run:
1. exports MiniLM layer-3 activations of the default corpus once to bench/data/ (train and held-out .npy);
2. measures this machine's fp32 GEMM rate for the encoder product, (batch, d) x (d, latents), before every
   round of runs (median reported); the "1-GEMM limit" is that rate / (2·d·latents) tokens/s: what a TopK
   trainer whose only dense product is the encoder forward, in float32, could reach (the bfloat16 rate of the
   same product is reported beside it);
3. trains a TopK SAE (d=384, latents, k, batch, token budget, threads all equal) with each trainer, in a
   fresh process per run, feeding every trainer the identical batch sequence (sparsecode's shuffling
   store over the same .npy), runs interleaved so load drifts hit all alike;
   - sparsecode: the product's Trainer, as `sparsecode train --activations` runs it (with the OpenMP
     defaults the package sets when imported before torch, `sparsecode.OPENMP_DEFAULTS`); a short untimed
     run first compiles its numba kernels into their on-disk cache, as any first use after install does;
     where the CPU has AMX its encoder product is bfloat16 with exact float32 rescoring (`kernels/screen.py`);
   - sparsecode-fp32: the same with the float32 encoder product (SPARSECODE_KERNELS=compiled);
   - sparsify 1.3.3: its SparseCoder with its trainer's step (default Signum + schedule-free, FVU loss),
     once as installed and once with jemalloc (decay off) preloaded;
   - SAELens 6.54: its SAETrainer with TopKTrainingSAE (its defaults otherwise);
4. evaluates FVU and L0 of each result on the same held-out rows, records peak RSS and minor page faults;
5. runs sparsecode again on a corpus file 8x larger (same token budget): peak RSS must not grow;
6. writes bench/results/speed.json, bench/results/speed.md (table) and docs/speed.png.
Medians over --repeats runs. Child processes report their own numbers (`--child`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
TRAINERS = ("sparsecode", "sparsecode-fp32", "sparsify", "sparsify+jemalloc", "saelens")
INHERITED_ENV = dict(os.environ)
"""The environment children start from, taken before anything here imports sparsecode (which adds its OpenMP
defaults to os.environ): the peers run as installed."""


# -- data -------------------------------------------------------------------------------------------
PEER_PACKAGES = {"sparsify": "sparsify", "saelens": "sae_lens"}
"""Trainer -> the package it needs, installed only in the bench venv (`make bench-setup`)."""


def installed(name: str) -> bool:
    """Whether trainer ``name``'s library is importable here; if not, say so and leave it out of the run."""
    import importlib.util

    package = PEER_PACKAGES.get(name.split("+")[0])
    if package is None or importlib.util.find_spec(package) is not None:
        return True
    print(f"skipping {name}: {package} is not installed here (`make bench` uses .venv-bench)", file=sys.stderr)
    return False


def export_activations(
    data: Path = DATA, hook: str = "encoder.layer.3", heldout_rows: int = 32768
) -> tuple[Path, Path]:
    """One pass of the default corpus through MiniLM, saved as float32 .npy (train split, held-out split)."""
    from sparsecode.activations import CachedSource, default_cache_dir
    from sparsecode.io import atomic_write
    from sparsecode.sources import ModelSourceConfig, open_source

    train, heldout = data / "minilm-l3-train.npy", data / "minilm-l3-heldout.npy"
    if train.is_file() and heldout.is_file():
        return train, heldout
    data.mkdir(parents=True, exist_ok=True)
    source = CachedSource(open_source(ModelSourceConfig(hook=hook)), default_cache_dir(), progress=True)
    for split, path, limit in (("train", train, None), ("eval", heldout, heldout_rows)):
        parts, rows = [], 0
        for block in source.iter_batches(split):
            parts.append(block.acts.numpy())
            rows += len(block)
            if limit is not None and rows >= limit:
                break
        array = np.concatenate(parts)[:limit].astype(np.float32)
        atomic_write(path, lambda p, a=array: _save_npy(p, a))
        print(f"exported {len(array):,} rows of {hook} ({split}) to {path}", file=sys.stderr)
    return train, heldout


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
        np.save(f, array)


def tiled(path: Path, times: int) -> Path:
    """The same rows repeated ``times`` times: a bigger corpus for the memory check."""
    from sparsecode.io import atomic_write

    out = path.with_name(f"{path.stem}-x{times}.npy")
    if not out.is_file():
        array = np.load(path, mmap_mode="r")
        big = np.lib.format.open_memmap(
            str(out) + ".tmp.npy", mode="w+", dtype=np.float32, shape=(len(array) * times, array.shape[1])
        )
        for i in range(times):
            big[i * len(array) : (i + 1) * len(array)] = array
        big.flush()
        del big
        atomic_write(out, lambda p: os.replace(str(out) + ".tmp.npy", p))
    return out


def gemm_rate(batch: int, d: int, m: int, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Median FLOP/s of (batch, d) @ (d, m) in ``dtype`` at the current thread count."""
    x, w = torch.randn(batch, d, dtype=dtype), torch.randn(d, m, dtype=dtype)
    out = torch.empty(batch, m, dtype=dtype)
    for _ in range(3):
        torch.mm(x, w, out=out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(x, w, out=out)
        times.append(time.perf_counter() - t)
    return 2 * batch * d * m / statistics.median(times)


# -- children: one training run each ----------------------------------------------------------------
def batches(train_path: str, batch: int, tokens: int):
    """The identical batch sequence every trainer sees: sparsecode's shuffling store over the .npy file."""
    from sparsecode.activations import ActivationStore
    from sparsecode.sources import ArraySourceConfig, open_source

    store = ActivationStore(open_source(ArraySourceConfig(path=train_path)), batch_size=batch, buffer_rows=131072)
    for _ in range(-(-tokens // batch)):
        yield next(store)


@torch.no_grad()
def held_out_scores(reconstruct, encode_l0, heldout_path: str) -> dict[str, float]:
    x = torch.from_numpy(np.load(heldout_path))
    sq, l0 = 0.0, 0.0
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096]
        sq += (reconstruct(chunk) - chunk).pow(2).sum().item()
        l0 += encode_l0(chunk)
    total = (x - x.mean(0)).pow(2).sum().item()
    return {"fvu": sq / total, "l0": l0 / len(x)}


def loop_seconds(metrics: Path) -> tuple[float, int]:
    """(seconds, tokens) of a sparsecode run's training loop, from the per-interval rates its metrics.jsonl logged
    (setup and the final save excluded)."""
    seconds, tokens = 0.0, 0
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        seconds += (row["tokens"] - tokens) / row["tokens_per_s"]
        tokens = row["tokens"]
    return seconds, tokens


def child_sparsecode(a) -> dict:
    from sparsecode.run import RunConfig
    from sparsecode.sae import TopKConfig
    from sparsecode.sources import ArraySourceConfig, open_source
    from sparsecode.train import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(
            ArraySourceConfig(path=a.train),
            TopKConfig(d_in=a.d_in, n_latents=a.latents, k=a.k),
            TrainConfig(tokens=a.tokens, batch_size=a.batch, lr=a.lr),
        )
        t = time.perf_counter()
        sae = Trainer(config, Path(tmp) / "run", open_source(config.source), progress=False).fit()
        wall = time.perf_counter() - t
        loop, previous = loop_seconds(Path(tmp) / "run" / "metrics.jsonl")
    scores = held_out_scores(sae, lambda c: (sae.encode(c) > 0).sum().item(), a.heldout)
    return {
        "train_s": loop,
        "wall_s": wall,
        "tokens": previous,
        **scores,
        "encoder_product": "bfloat16, exact rescoring" if screen_in_use(a) else "float32",
    }


def screen_in_use(a) -> bool:
    from sparsecode.kernels.topk import screen_applies
    from sparsecode.sae import TopKConfig, build_sae

    sae = build_sae(TopKConfig(d_in=a.d_in, n_latents=a.latents, k=a.k))
    return screen_applies(torch.zeros(1, a.d_in), sae.W_enc, a.k)


def sparsify_trainer(d_in: int, latents: int, k: int):
    """sparsify's SparseCoder and its trainer's step for loss_fn="fvu" with its defaults (signum optimizer,
    schedule-free, no AuxK), minus the language-model hooks: (sae, optimizer, step(x, first) -> latent indices)."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=latents, k=k), device="cpu", dtype=torch.float32)
    lr = 5e-3 / (sae.num_latents / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()

    def step(x: torch.Tensor, first: bool = False) -> torch.Tensor:
        if first:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        loss = out.fvu + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        return out.latent_indices

    return sae, opt, step


def child_sparsify(a) -> dict:
    sae, opt, sparsify_step = sparsify_trainer(a.d_in, a.latents, a.k)
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
    t = time.perf_counter()
    seen = 0
    for step, x in enumerate(batches(a.train, a.batch, a.tokens)):
        did_fire[sparsify_step(x, first=step == 0).flatten()] = True
        with torch.no_grad():
            tokens_since_fired += x.shape[0]
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        seen += x.shape[0]
    train_s = time.perf_counter() - t
    opt.eval()  # schedule-free: evaluate the averaged weights, as sparsify saves them
    sae.set_decoder_norm_to_unit_norm()
    scores = held_out_scores(
        lambda c: sae(x=c, y=c).sae_out, lambda c: (sae.encode(c).top_acts > 0).sum().item(), a.heldout
    )
    return {"train_s": train_s, "wall_s": train_s, "tokens": seen, **scores}


def child_saelens(a) -> dict:
    from sae_lens import SAETrainer, TopKTrainingSAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=a.latents, k=a.k, device="cpu"))
    steps = -(-a.tokens // a.batch)
    lr = 3e-4  # SAETrainerConfig's default; lr_end as SAELens's runner config derives it (lr / 10)
    cfg = SAETrainerConfig(
        total_training_samples=steps * a.batch,
        train_batch_size_samples=a.batch,
        device="cpu",
        lr=lr,
        lr_end=lr / 10,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches(a.train, a.batch, a.tokens))
    t = time.perf_counter()
    sae = trainer.fit()
    train_s = time.perf_counter() - t
    sae.eval()
    scores = held_out_scores(lambda c: sae.decode(sae.encode(c)), lambda c: (sae.encode(c) > 0).sum().item(), a.heldout)
    return {"train_s": train_s, "wall_s": train_s, "tokens": trainer.n_training_samples, **scores}


CHILDREN = {"sparsecode": child_sparsecode, "sparsify": child_sparsify, "saelens": child_saelens}
CHILD_OF = {"sparsecode-fp32": "sparsecode", "sparsify+jemalloc": "sparsify"}


def peak_rss_mib(usage) -> float:
    """This process's own peak RSS. VmHWM starts afresh at exec; ru_maxrss would carry over the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return usage.ru_maxrss / 1024


def run_child(a) -> None:
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    result = CHILDREN[a.child](a)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        peak_rss_mib=peak_rss_mib(usage),
        minor_faults=usage.ru_minflt,
        tokens_per_s=result["tokens"] / result["train_s"],
    )
    print("RESULT " + json.dumps(result))


# -- parent ---------------------------------------------------------------------------------------
def launch(name: str, a, train: Path) -> dict:
    child = CHILD_OF.get(name, name)
    env = {
        **INHERITED_ENV,
        "OMP_NUM_THREADS": str(a.threads),
        "MKL_NUM_THREADS": str(a.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        # sparsify decodes with a Triton kernel whenever triton imports, and Triton has no CPU driver: without
        # this it fails on a CPU-only machine that happens to have triton installed. Its eager decoder is the
        # one it uses on CPU when triton is absent.
        **({} if torch.cuda.is_available() else {"SPARSIFY_DISABLE_TRITON": "1"}),
    }
    if (
        child == "sparsecode"
    ):  # what importing sparsecode before torch sets (as the CLI does); the child imports torch first
        from sparsecode import OPENMP_DEFAULTS

        env = {**OPENMP_DEFAULTS, **env}
    if name.endswith("+jemalloc"):
        env.update(LD_PRELOAD=JEMALLOC, MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1")
    if name == "sparsecode-fp32":
        env["SPARSECODE_KERNELS"] = "compiled"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        child,
        "--train",
        str(train),
        "--heldout",
        str(a.heldout),
        "--tokens",
        str(a.tokens),
        "--batch",
        str(a.batch),
        "--latents",
        str(a.latents),
        "--k",
        str(a.k),
        "--d-in",
        str(a.d_in),
        "--threads",
        str(a.threads),
    ] + (["--lr", str(a.lr)] if a.lr else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    print(
        f"  {name:18s} {result['tokens_per_s']:8,.0f} tok/s  FVU {result['fvu']:.4f}  L0 {result['l0']:5.1f}  "
        f"peak RSS {result['peak_rss_mib']:6,.0f} MiB  minor faults {result['minor_faults']:,}",
        file=sys.stderr,
    )
    return result


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    keys = ("tokens_per_s", "fvu", "l0", "peak_rss_mib", "minor_faults", "train_s")
    return {name: {k: statistics.median(r[k] for r in rs) for k in keys} | {"runs": rs} for name, rs in runs.items()}


def table(summary: dict, limit: float, memory: dict | None) -> str:
    ours = summary.get("sparsecode")
    lines = [
        (
            "| trainer | tokens/s | % of 1-GEMM limit | sparsecode ÷ this | held-out FVU | L0 | peak RSS (MiB) "
            "| minor page faults |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        ratio = f"{ours['tokens_per_s'] / s['tokens_per_s']:.2f}×" if ours else "–"
        lines.append(
            f"| {name} | {s['tokens_per_s']:,.0f} | {100 * s['tokens_per_s'] / limit:.0f}% | {ratio} | "
            f"{s['fvu']:.4f} | {s['l0']:.1f} | {s['peak_rss_mib']:,.0f} | {s['minor_faults']:,.0f} |"
        )
    if memory:
        lines.append("")
        lines.append(
            "sparsecode peak RSS by corpus size (same token budget): "
            + ", ".join(f"{rows:,} rows → {rss:,.0f} MiB" for rows, rss in memory.items())
        )
    return "\n".join(lines)


def plot(summary: dict, limit: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    rates = [summary[n]["tokens_per_s"] for n in names]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["#1f77b4" if n == "sparsecode" else "#999999" for n in names]
    ax.barh(names, rates, color=colors)
    ax.axvline(limit, color="#d62728", ls="--", lw=1)
    ax.text(limit, -0.55, " 1-GEMM limit", color="#d62728", va="bottom", fontsize=8)
    for i, n in enumerate(names):
        ax.text(rates[i], i, f" {rates[i]:,.0f}  (FVU {summary[n]['fvu']:.3f})", va="center", fontsize=8)
    ax.set_xlim(0, max(limit, max(rates)) * 1.45)
    ax.invert_yaxis()
    ax.set_xlabel("training tokens / s (median)")
    ax2.barh(names, [summary[n]["peak_rss_mib"] for n in names], color=colors)
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    ax2.set_xlabel("peak RSS (MiB)")
    fig.suptitle("\n".join(textwrap.wrap(title, 150)), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def count(text: str) -> int:
    from sparsecode.cli import parse_count

    return parse_count(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=count, default=500_000, help="training tokens per run (default 500k)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per trainer; medians are reported (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, help="sparsecode's learning rate (default: its own default)")
    ap.add_argument("--only", default=",".join(TRAINERS), help=f"comma-separated subset of {','.join(TRAINERS)}")
    ap.add_argument("--no-memory", action="store_true", help="skip the larger-corpus memory run")
    ap.add_argument("--data", type=Path, default=DATA, help="folder of the exported activations (made if missing)")
    ap.add_argument("--out", type=Path, help="write speed.md/.json/.png here (default bench/results, docs/speed.png)")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--heldout", help=argparse.SUPPRESS)
    ap.add_argument("--d-in", type=int, default=384, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return run_child(a)

    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = set(names) - set(TRAINERS)
    if unknown:
        sys.exit(f"unknown trainer(s) {sorted(unknown)}; choose from {TRAINERS}")
    names = [n for n in names if installed(n)]
    if any(n.endswith("+jemalloc") for n in names) and not Path(JEMALLOC).is_file():
        sys.exit(f"{JEMALLOC} not found: apt-get install libjemalloc2 (make bench-setup does)")
    train, heldout = export_activations(a.data)
    a.heldout = heldout
    a.d_in = int(np.load(train, mmap_mode="r").shape[1])
    torch.set_num_threads(a.threads)

    for name in (n for n in names if n.startswith("sparsecode")):  # numba compiles sparsecode's kernels on first
        # use and caches them on disk: a fresh checkout or a changed kernel would otherwise count compile time in
        # the first timed run
        print(f"compiling {name}'s kernels (a short run; once per install)", file=sys.stderr)
        launch(name, argparse.Namespace(**{**vars(a), "tokens": 2 * a.batch}), train)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    rates, bf16_rates = [], []
    for r in range(a.repeats):  # interleaved: a load change on the machine hits every trainer (and the GEMM) alike
        rates.append(gemm_rate(a.batch, a.d_in, a.latents))
        bf16_rates.append(gemm_rate(a.batch, a.d_in, a.latents, dtype=torch.bfloat16))
        print(
            f"repeat {r + 1}/{a.repeats}: GEMM ({a.batch}x{a.d_in}) @ ({a.d_in}x{a.latents}), {a.threads} threads: "
            f"{rates[-1] / 1e9:.1f} GFLOP/s (bfloat16: {bf16_rates[-1] / 1e9:.1f})",
            file=sys.stderr,
        )
        for name in names:
            runs[name].append(launch(name, a, train))
    summary = summarise(runs)
    flops, bf16_flops = statistics.median(rates), statistics.median(bf16_rates)
    limit = flops / (2 * a.d_in * a.latents)
    print(f"GEMM median {flops / 1e9:.1f} GFLOP/s -> 1-GEMM limit {limit:,.0f} tokens/s", file=sys.stderr)

    memory = None
    if not a.no_memory and "sparsecode" in names:
        big = tiled(train, 8)
        rows_small = len(np.load(train, mmap_mode="r"))
        print("memory: sparsecode on an 8x larger corpus file", file=sys.stderr)
        memory = {
            rows_small: summary["sparsecode"]["peak_rss_mib"],
            8 * rows_small: launch("sparsecode", a, big)["peak_rss_mib"],
        }

    date = datetime.date.today().isoformat()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.machine(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    command = "python bench/speed.py " + " ".join(sys.argv[1:])
    header = (
        f"{date}, {cpu}, {os.cpu_count()} cores, {a.threads} threads, torch {torch.__version__}; "
        f"TopK d={a.d_in}, latents={a.latents}, k={a.k}, batch={a.batch}, {a.tokens:,} tokens, fp32, "
        f"medians of {a.repeats}; fp32 GEMM {flops / 1e9:.0f} GFLOP/s → 1-GEMM limit {limit:,.0f} tokens/s "
        f"(bfloat16 GEMM {bf16_flops / 1e9:.0f} GFLOP/s)"
    )
    products = {
        name: s["runs"][0].get("encoder_product") for name, s in summary.items() if name.startswith("sparsecode")
    }
    notes = "; ".join(f"{name}: {product}" for name, product in products.items())
    md = f"{header}\n\n`{command}`\n\n{table(summary, limit, memory)}\n" + (
        f"\nEncoder product — {notes}\n" if notes else ""
    )
    results = a.out or RESULTS
    results.mkdir(parents=True, exist_ok=True)
    (results / "speed.md").write_text(md)
    (results / "speed.json").write_text(
        json.dumps(
            {
                "date": date,
                "machine": machine,
                "cpu": cpu,
                "command": command,
                "threads": a.threads,
                "config": {"d_in": a.d_in, "latents": a.latents, "k": a.k, "batch": a.batch, "tokens": a.tokens},
                "gemm_flops": flops,
                "gemm_flops_by_repeat": rates,
                "bf16_gemm_flops": bf16_flops,
                "bf16_gemm_flops_by_repeat": bf16_rates,
                "limit_tokens_per_s": limit,
                "summary": summary,
                "memory_by_corpus_rows": memory,
            },
            indent=1,
        )
    )
    plot(summary, limit, (a.out / "speed.png") if a.out else ROOT / "docs" / "speed.png", header)
    print(md)


if __name__ == "__main__":
    main()
