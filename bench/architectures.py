"""Train every architecture on the same data at matched L0 and compare them.

Two datasets: synthetic planted features (512 in 64 dims, 5 active; L0 matched at 5) and MiniLM layer-3
activations from the activation cache (L0 matched at 32). Top-k-like dictionaries get k directly; the
penalty-trained ones (ReLU, Gated, JumpReLU) use their target-L0 mode (``target_l0``: the sparsity coefficient
adapts during training). BatchTopK and JumpReLU also run with their other threshold setting (raw ranking;
relative thresholds). The transcoder maps the layer-3 MLP input to the MLP output, so its FVU is against
another target: it is listed, not plotted.

    python bench/architectures.py --threads 1          # ≈ 40 min on one core
    python bench/architectures.py --quick              # a smoke run in a few minutes

Writes OUT/architectures-results.md (markdown tables), OUT/architectures.png (FVU vs L0) and OUT/architectures.json.
Throughput (tokens/s) is training throughput over the whole run, on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sparsecode.activations import CachedSource, default_cache_dir
from sparsecode.cli import parse_count
from sparsecode.eval import evaluate_reconstruction, mmcs
from sparsecode.eval.budgets import evaluate_budgets
from sparsecode.run import RunConfig
from sparsecode.sae import ARCHITECTURES
from sparsecode.sources import ModelSourceConfig, SyntheticSourceConfig, open_source
from sparsecode.train import TrainConfig, Trainer

MINILM_HOOK = "encoder.layer.3"


def synthetic_runs(k: int) -> list[tuple[str, str, dict]]:
    """(label, arch, config kwargs) for the planted-feature data."""
    return [
        ("topk", "topk", {"k": k}),
        ("batchtopk", "batchtopk", {"k": k}),
        ("batchtopk raw-rank", "batchtopk", {"k": k, "rank_relative": False}),
        ("jumprelu", "jumprelu", {"target_l0": float(k)}),
        ("jumprelu absolute", "jumprelu", {"target_l0": float(k), "relative_threshold": False}),
        ("gated", "gated", {"target_l0": float(k)}),
        ("relu", "relu", {"target_l0": float(k)}),
        ("matryoshka", "matryoshka", {"k": k, "prefixes": [64, 256]}),
        ("multibudget", "multibudget", {"budgets": [k // 2, k, 2 * k]}),
        ("transcoder (x→x)", "transcoder", {"k": k}),
        ("mp", "mp", {"mp_steps": k}),
    ]


def minilm_runs(k: int) -> list[tuple[str, str, dict]]:
    return [
        ("topk", "topk", {"k": k}),
        ("batchtopk", "batchtopk", {"k": k}),
        ("batchtopk raw-rank", "batchtopk", {"k": k, "rank_relative": False}),
        ("jumprelu", "jumprelu", {"target_l0": float(k)}),
        ("jumprelu absolute", "jumprelu", {"target_l0": float(k), "relative_threshold": False}),
        ("gated", "gated", {"target_l0": float(k)}),
        ("relu", "relu", {"target_l0": float(k)}),
        ("matryoshka", "matryoshka", {"k": k}),
        ("multibudget", "multibudget", {"budgets": [k // 2, k, 2 * k]}),
        ("mp", "mp", {"mp_steps": k}),
    ]


def slug(label: str) -> str:
    """A run folder name for a table label."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label).strip("-")


def train_and_eval(
    run_dir: Path,
    source,
    source_config,
    arch: str,
    sae_kw: dict,
    train: TrainConfig,
    eval_rows: int,
    true_features: torch.Tensor | None,
) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    d_out = getattr(source, "d_out", None)
    sae_cfg = ARCHITECTURES[arch].config_class(d_in=source.d_in, **({"d_out": d_out} if d_out else {}), **sae_kw)
    config = RunConfig(source_config, sae_cfg, train)
    start = time.perf_counter()
    sae = Trainer(config, run_dir, source, progress=False).fit()
    seconds = time.perf_counter() - start
    recon, _ = evaluate_reconstruction(sae, source.iter_batches("eval"), max_rows=eval_rows, progress=False)
    row = {
        "arch": arch,
        "config": sae_kw,
        "tokens": train.tokens,
        "train_seconds": seconds,
        "tokens_per_s": train.tokens / seconds,
        "fvu": recon["fvu"],
        "l0": recon["l0"],
        "dead_fraction": recon["dead_fraction"],
        "n_eval_rows": recon["n_rows"],
    }
    if true_features is not None:
        row["mmcs"] = mmcs(sae.W_dec.detach(), true_features)
    if arch == "multibudget":
        row["budgets"] = evaluate_budgets(
            sae, sae.cfg.budgets, source.iter_batches("eval"), max_rows=eval_rows, progress=False
        )
    return row


def table(rows: list[dict], target_l0: float, with_mmcs: bool) -> list[str]:
    head = "| architecture | FVU | L0 | dead % |" + (" MMCS |" if with_mmcs else "") + " tokens/s | tokens |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["arch"] == "multibudget":
            at_k = next(b for b in r["budgets"] if b["k"] == round(target_l0))
            fvu, l0, dead = at_k["fvu"], at_k["l0"], at_k["dead_fraction"]
            label = f"{r['label']} (at k={at_k['k']} of {[b['k'] for b in r['budgets']]})"
        else:
            fvu, l0, dead, label = r["fvu"], r["l0"], r["dead_fraction"], r["label"]
        cells = [label, f"{fvu:.3f}", f"{l0:.1f}", f"{100 * dead:.1f}"]
        if with_mmcs:
            cells.append(f"{r['mmcs']:.3f}" if "mmcs" in r else "—")
        cells += [f"{r['tokens_per_s']:,.0f}", f"{r['tokens']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, data) for name, data in results.items() if data["rows"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6))
    axes = [axes] if len(panels) == 1 else list(axes)
    markers = dict(zip(ARCHITECTURES, "osD^v<>Pp*h"))
    colors = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(ARCHITECTURES)}
    for ax, (name, data) in zip(axes, panels):
        for r in data["rows"]:
            if r.get("other_target"):
                continue
            arch = r["arch"]
            pts = [(b["l0"], b["fvu"]) for b in r["budgets"]] if arch == "multibudget" else [(r["l0"], r["fvu"])]
            xs, ys = zip(*pts)
            variant = r["label"] != arch  # a second setting of the same architecture: open marker
            ax.plot(
                xs,
                ys,
                marker=markers[arch],
                color=colors[arch],
                linestyle="-" if len(pts) > 1 else "none",
                markersize=8,
                markerfacecolor="none" if variant else colors[arch],
                label=r["label"],
            )
        ax.axvline(data["target_l0"], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("L0 (active latents per token, held-out)")
        ax.set_ylabel("FVU (held-out)")
        ax.set_title(data["title"], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("FVU vs L0 (dotted: target L0; the line joins the multibudget SAE's budgets)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs", help="folder for architectures-results.md, architectures.png/.json")
    p.add_argument("--runs", default="runs/bench-architectures", help="scratch folder for the run folders")
    p.add_argument("--synthetic-tokens", type=parse_count, default=parse_count("500k"))
    p.add_argument("--minilm-tokens", type=parse_count, default=parse_count("1M"))
    p.add_argument(
        "--mp-minilm-tokens",
        type=parse_count,
        default=parse_count("250k"),
        help="matching pursuit costs ~k encoder passes per step: a smaller budget on MiniLM",
    )
    p.add_argument("--minilm-latents", type=int, default=3072)
    p.add_argument(
        "--corpus",
        default=None,
        help="MiniLM's text: the default corpus (2.2M tokens; its activation pass alone takes an hour on a busy "
        "2-core machine) or e.g. 'pydoc' (~100k tokens, the previous default, looped over the training budget)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice; 1 helps a lot on a machine shared with other jobs)",
    )
    p.add_argument(
        "--lr-scale",
        type=float,
        default=1.0,
        help="MiniLM runs: multiply each architecture's default "
        "learning rate (to compare learning rates; write to another --out, e.g. --lr-scale 3 --out /tmp/lr3)",
    )
    p.add_argument("--quick", action="store_true", help="tiny budgets, to check the script end to end")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument(
        "--only",
        metavar="LABELS",
        help="comma-separated run labels (e.g. batchtopk,mp) to (re)run; "
        "their rows replace those in OUT/architectures.json, the others stay",
    )
    p.add_argument("--report-only", action="store_true", help="rewrite the table and plot from OUT/architectures.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.synthetic_tokens, args.minilm_tokens, args.mp_minilm_tokens = 50_000, 50_000, 20_000
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "architectures.json"
    results: dict[str, dict] = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if args.report_only:
        return report(results, out)

    only = None if args.only is None else set(args.only.split(","))

    def save() -> None:  # after every run, so an interrupted bench keeps what it measured
        json_path.write_text(json.dumps(results, indent=1))

    def section(name: str, fresh: dict) -> dict:
        """The results section to fill: a fresh one, or (with --only) the saved one."""
        if only is not None and results.get(name):
            return results[name]
        results[name] = fresh
        return fresh

    def record(data: dict, label: str, row: dict) -> None:
        rows, new = data["rows"], {"label": label, **row}
        at = next((i for i, r in enumerate(rows) if r["label"] == label), None)
        rows[at if at is not None else len(rows) : at + 1 if at is not None else len(rows)] = [new]
        save()

    # -- synthetic planted features -------------------------------------------------------------
    syn_cfg = SyntheticSourceConfig(n_features=512, dim=64, active=5, seed=0)
    synthetic_specs = [] if args.skip_synthetic else [s for s in synthetic_runs(5) if only is None or s[0] in only]
    syn = open_source(syn_cfg)
    if synthetic_specs:
        data = section(
            "synthetic",
            {
                "title": "synthetic: 512 planted features in 64 dims, 5 active",
                "target_l0": 5,
                "n_latents": 512,
                "tokens": args.synthetic_tokens,
                "rows": [],
            },
        )
    for label, arch, kw in synthetic_specs:
        train = TrainConfig(
            tokens=args.synthetic_tokens, batch_size=256, lr=4e-3, dead_tokens=50_000, buffer_rows=65536
        )
        row = train_and_eval(
            runs / "synthetic" / slug(label),
            syn,
            syn_cfg,
            arch,
            {"n_latents": 512, **kw},
            train,
            16384,
            syn.true_features,
        )
        record(data, label, row)
        print(
            f"synthetic {label:18s} FVU {row['fvu']:.3f} L0 {row['l0']:5.1f} MMCS {row['mmcs']:.3f} "
            f"{row['tokens_per_s']:,.0f} tok/s",
            flush=True,
        )

    # -- MiniLM layer 3 -------------------------------------------------------------------------
    if not args.skip_minilm:
        data = section(
            "minilm",
            {
                "title": f"MiniLM {MINILM_HOOK}, {args.minilm_latents} latents"
                + ("" if args.corpus is None else f", corpus {args.corpus}"),
                "target_l0": 32,
                "n_latents": args.minilm_latents,
                "tokens": args.minilm_tokens,
                "rows": [],
            },
        )
        cache = Path(os.environ.get("SPARSECODE_CACHE") or default_cache_dir())
        corpus = None if args.corpus is None else [args.corpus]
        lm_cfg = ModelSourceConfig(hook=MINILM_HOOK, corpus=corpus)
        tc_cfg = ModelSourceConfig(
            hook=f"{MINILM_HOOK}.intermediate",
            hook_side="input",
            target_hook=f"{MINILM_HOOK}.output.dense",
            corpus=corpus,
        )
        specs = [(label, arch, kw, lm_cfg) for label, arch, kw in minilm_runs(32)]
        specs.append(("transcoder+skip (MLP in→out)", "transcoder", {"k": 32, "skip": True}, tc_cfg))
        specs = [s for s in specs if only is None or s[0] in only]
        sources = {}
        for label, arch, kw, src_cfg in specs:
            key = id(src_cfg)
            if key not in sources:
                sources[key] = CachedSource(open_source(src_cfg), cache, progress=True)
                for _ in sources[key].iter_batches("train"):  # fill the cache first: tokens/s is training only
                    pass
            train = TrainConfig(tokens=args.mp_minilm_tokens if arch == "mp" else args.minilm_tokens)
            if args.lr_scale != 1.0:
                default_lr = train.learning_rate(args.minilm_latents, ARCHITECTURES[arch].config_class.base_lr)
                train = replace(train, lr=args.lr_scale * default_lr)
            row = train_and_eval(
                runs / "minilm" / slug(label),
                sources[key],
                src_cfg,
                arch,
                {"n_latents": args.minilm_latents, **kw},
                train,
                None,
                None,
            )
            row["lr"] = train.learning_rate(args.minilm_latents, ARCHITECTURES[arch].config_class.base_lr)
            row["other_target"] = src_cfg is tc_cfg
            record(data, label, row)
            print(
                f"minilm {label:30s} FVU {row['fvu']:.3f} L0 {row['l0']:5.1f} dead {100 * row['dead_fraction']:.1f}% "
                f"{row['tokens_per_s']:,.0f} tok/s",
                flush=True,
            )

    return report(results, out)


def report(results: dict, out: Path) -> int:
    """Write the markdown table and the plot from the measured ``results``."""
    results = {name: data for name, data in results.items() if data and data["rows"]}
    plot(results, out / "architectures.png")
    md = [
        "# Architectures compared at matched L0",
        "",
        "Written by `python bench/architectures.py` (numbers: `architectures.json`; plot: `architectures.png`).",
        "FVU, L0 and dead % on the held-out split; MMCS = mean over true features of the best decoder cosine.",
        "ReLU, Gated and JumpReLU reach the target L0 through their target-L0 mode (`target_l0`).",
        "",
    ]
    for data in results.values():
        if not data["rows"]:
            continue
        md += [
            f"## {data['title']}",
            "",
            (
                f"Target L0 {data['target_l0']}, {data['n_latents']} latents, {data['tokens']:,} training tokens "
                "(matching pursuit on MiniLM: see the tokens column)."
            ),
            "",
        ]
        md += table(data["rows"], data["target_l0"], with_mmcs="mmcs" in data["rows"][0])
        md.append("")
    md += ["![FVU vs L0](architectures.png)", ""]
    (out / "architectures-results.md").write_text("\n".join(md))
    print(f"wrote {out / 'architectures-results.md'}, {out / 'architectures.png'}, {out / 'architectures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
