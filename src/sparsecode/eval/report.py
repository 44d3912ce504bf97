"""Evaluate a finished run folder: write eval.json and density.png, and summarise them for the CLI."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..device import check_device
from ..errors import DataError
from ..io import write_json
from ..layout import DENSITY_PLOT, EVAL_FILE
from .budgets import evaluate_budgets
from .ground_truth import mmcs, recovery_fraction
from .metrics import evaluate_reconstruction
from .plots import plot_density_histogram
from .splice import spliced_fidelity
from .transcoder_splice import transcoder_spliced_fidelity

RECOVERY_THRESHOLD = 0.9


def _is_model_source(source: Any) -> bool:
    return all(hasattr(source, a) for a in ("model", "module", "chunks", "tokenize", "keep_mask"))


def _json_safe(obj: Any) -> Any:
    """NaN/inf become None so eval.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def evaluate_run(
    run_dir: str | Path,
    max_rows: int | None = 65536,
    splice_chunks: int = 64,
    device: str = "cpu",
    progress: bool = True,
    dense_threshold: float = 0.1,
) -> dict[str, Any]:
    """Evaluate the SAE in ``run_dir`` on its source's eval split; write eval.json and density.png.

    Reconstruction metrics use at most ``max_rows`` eval rows (required for an unbounded source).
    Adds ``mmcs`` and ``recovery_fraction_0.9`` when the source knows its true features, and spliced
    fidelity over ``splice_chunks`` eval chunks (0 to skip) when it is a model source.
    Nothing is written until every input has been loaded and checked.
    """
    from ..run import load_run
    from ..sources import open_source

    run_dir = Path(run_dir)
    check_device(device)
    run = load_run(run_dir)  # one-line DataError naming any missing or broken file
    if hasattr(run.config.source, "device"):  # evaluate where asked, whatever device the run trained on
        run.config.source.device = device
    sae = run.sae.to(device).eval()
    source = open_source(run.config.source)
    d_in, n_latents = int(sae.cfg.d_in), int(sae.cfg.n_latents)
    if source.d_in != d_in:
        raise DataError(f"{run_dir}: the source yields rows of width {source.d_in} but the SAE expects d_in={d_in}")
    n_eval = source.num_rows("eval")
    if n_eval is None and max_rows is None:
        raise DataError("the source is unbounded (synthetic): give a row limit (max_rows)")
    n_rows = n_eval if max_rows is None else (max_rows if n_eval is None else min(n_eval, max_rows))

    result: dict[str, Any] = {"run": str(run_dir), "arch": sae.cfg.arch, "n_latents": n_latents, "d_in": d_in}
    recon, density = evaluate_reconstruction(sae, source.iter_batches("eval"), max_rows=n_rows, device=device,
                                             progress=progress, dense_threshold=dense_threshold)
    result.update(recon)
    budgets = getattr(sae.cfg, "budgets", None)
    if budgets:  # a multi-budget SAE: the same metrics at each budget
        result["budgets"] = evaluate_budgets(sae, budgets, source.iter_batches("eval"), max_rows=n_rows,
                                             device=device, progress=progress)

    true = getattr(source, "true_features", None)
    if true is not None:
        learned = sae.W_dec.detach()  # (n_latents, d_in)
        result["mmcs"] = mmcs(learned, true)
        result[f"recovery_fraction_{RECOVERY_THRESHOLD}"] = recovery_fraction(learned, true, RECOVERY_THRESHOLD)

    if splice_chunks and _is_model_source(source):

        def reconstruct(acts: torch.Tensor) -> torch.Tensor:
            return sae(acts.to(device, torch.float32)).to(acts.device)  # (n, d_out)

        splice = transcoder_spliced_fidelity if getattr(source.config, "target_hook", None) else spliced_fidelity
        result.update(splice(source, reconstruct, split="eval", max_chunks=splice_chunks, progress=progress))

    eval_path, plot_path = run_dir / EVAL_FILE, run_dir / DENSITY_PLOT
    result["files"] = {"eval_json": str(eval_path), "density_png": str(plot_path)}
    plot_density_histogram(density, plot_path)
    write_json(eval_path, _json_safe(result))
    return result


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_report(result: dict[str, Any]) -> str:
    """A short multi-line human-readable summary of :func:`evaluate_run`'s result."""
    r = result
    lines = [
        f"run {r.get('run', '?')}: {r.get('arch', '?')} SAE, d_in={r.get('d_in', '?')}, "
        f"n_latents={r.get('n_latents', '?')}, {r.get('n_rows', '?')} eval rows",
        f"  FVU {_fmt(r.get('fvu'))}   explained variance {_fmt(r.get('explained_variance'))}   "
        f"cosine {_fmt(r.get('cosine'))}   MSE {_fmt(r.get('mse'), '.4g')}",
        f"  L0 {_fmt(r.get('l0'), '.1f')}   dead {_fmt(100 * r['dead_fraction'] if 'dead_fraction' in r else None, '.1f')}%   "
        f"dense (>{r.get('dense_threshold', 0.1):g}) {_fmt(100 * r['dense_fraction'] if 'dense_fraction' in r else None, '.1f')}%",
    ]
    for b in r.get("budgets") or []:
        lines.append(f"  at k={b['k']}: FVU {_fmt(b.get('fvu'))}   L0 {_fmt(b.get('l0'), '.1f')}   "
                     f"dead {_fmt(100 * b['dead_fraction'] if b.get('dead_fraction') is not None else None, '.1f')}%")
    if "embedding_cosine" in r:
        lines.append(
            f"  spliced embedding cosine {_fmt(r['embedding_cosine'])} "
            f"(zero-ablation {_fmt(r.get('embedding_cosine_zero_ablation'))}, "
            f"mean-ablation {_fmt(r.get('embedding_cosine_mean_ablation'))}; {r.get('splice_chunks', '?')} chunks)"
        )
    if "ce_spliced" in r:
        lines.append(
            f"  spliced CE {_fmt(r['ce_spliced'])} vs clean {_fmt(r.get('ce_clean'))} ({_fmt(r.get('ce_increase'), '+.4f')}); "
            f"loss recovered {_fmt(r.get('loss_recovered_zero_ablation'), '.3f')} vs zero-ablation, "
            f"{_fmt(r.get('loss_recovered_mean_ablation'), '.3f')} vs mean-ablation"
        )
    if "mmcs" in r:
        rec = r.get(f"recovery_fraction_{RECOVERY_THRESHOLD}")
        lines.append(f"  ground truth: MMCS {_fmt(r['mmcs'])}   recovered (cos >= {RECOVERY_THRESHOLD}) "
                     f"{_fmt(None if rec is None else 100 * rec, '.1f')}%")
    files = r.get("files", {})
    if files:
        lines.append("  wrote " + ", ".join(str(p) for p in files.values()))
    return "\n".join(lines)
