"""Evaluate a finished run folder: one pass over held-out rows feeds every metric; write eval.json,
density.png and a self-contained report.html, and summarise them for the CLI."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..device import check_device
from ..errors import ConfigError, DataError
from ..io import atomic_write, write_json
from ..layout import DENSITY_PLOT, EVAL_FILE, REPORT_FILE
from .absorption import feature_absorption
from .board import BOARD_ROWS, is_othello_source, othello_section
from .budgets import evaluate_budgets
from .dark_matter import dark_matter
from .gabor import image_atom_metrics
from .ground_truth import FeatureF1, match_features, random_mmcs_baseline, recovery_fraction
from .html import render_report
from .metrics import evaluate_reconstruction
from .neurons import neuron_sparsity
from .plots import (
    absorption_figure,
    atoms_figure,
    density_figure,
    l0_figure,
    max_cos_figure,
    neurons_figure,
    probing_figure,
    save_png,
)
from .probing import collect_token_rows, sparse_probing, token_concepts
from .splice import spliced_fidelity
from .transcoder_splice import transcoder_spliced_fidelity

RECOVERY_THRESHOLD = 0.9
IMAGE_COEFFICIENT_ROWS = 16384
"""Eval rows whose latent activations feed the image section's kurtosis."""
ATOMS_PLOT = "atoms.png"
"""An image run's atom grid, written beside report.html."""
GRID_ATOMS = 256
"""Atoms drawn in an image run's atom grid (the most often active first)."""


def _patch_shape(source_config: Any) -> tuple[int, int] | None:
    """(H, W) of an image-patch run's rows, None for every other source."""
    from ..sources import ImageSourceConfig

    if isinstance(source_config, ImageSourceConfig):
        return (source_config.patch, source_config.patch)
    return None


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
    quick: bool = False,
    probe_tokens: int = 8192,
    neuron_chunks: int = 64,
    dark_matter_rows: int = 16384,
    corpus: list[str] | None = None,
    text_column: str | None = None,
) -> dict[str, Any]:
    """Evaluate the SAE in ``run_dir`` on its source's eval split; write eval.json, density.png and report.html.

    Core (always): reconstruction and sparsity metrics over at most ``max_rows`` eval rows (required for
    an unbounded source); ground truth (``mmcs``, ``recovery_fraction_0.9`` and a ``ground_truth``
    section with feature-level precision / recall / F1) when the source knows its true features;
    spliced fidelity over ``splice_chunks`` eval chunks (0 to skip) when it is a model source.
    Unless ``quick``: ``dark_matter`` (linear maps fitted on up to ``dark_matter_rows`` train-split rows,
    scored on up to as many of the eval rows above), and for model sources ``probing`` and
    ``absorption`` over ``probe_tokens`` tokens (eval chunks first, train chunks if the eval split is
    shorter) and the ``neurons`` profile over ``neuron_chunks`` eval chunks. ``timings`` holds seconds
    per part.
    With ``corpus`` (a model run only) the eval split of that corpus replaces the run's own (``text_column``
    names its text column): how the dictionary does on text it was not trained on. The files are then named after
    the corpus (``eval-pydoc.json``, ...) beside the run's own.
    Nothing is written until every input has been loaded and checked.
    """
    from ..run import load_run
    from ..sources import open_source

    run_dir = Path(run_dir)
    check_device(device)
    run = load_run(run_dir)  # one-line DataError naming any missing or broken file
    if run.config.source.has_device:  # evaluate where asked, whatever device the run trained on
        run.config.source.device = device
    sae = run.sae.to(device).eval()
    run.config.source, names = _other_corpus(run.config.source, corpus, text_column)
    try:
        source = open_source(run.config.source)
    except (OSError, ValueError) as e:
        raise DataError(f"{run_dir}: cannot rebuild the run's source ({type(e).__name__}: {e})") from None
    d_in, n_latents = int(sae.cfg.d_in), int(sae.cfg.n_latents)
    if source.d_in != d_in:
        raise DataError(f"{run_dir}: the source yields rows of width {source.d_in} but the SAE expects d_in={d_in}")
    n_eval = source.num_rows("eval")
    if n_eval is None and max_rows is None:
        raise DataError("the source is unbounded (synthetic): give a row limit (max_rows)")
    n_rows = n_eval if max_rows is None else (max_rows if n_eval is None else min(n_eval, max_rows))

    result: dict[str, Any] = {
        "run": str(run_dir),
        **({"corpus": corpus} if corpus else {}),
        "arch": sae.cfg.arch,
        "n_latents": n_latents,
        "d_in": d_in,
        "quick": quick,
        "timings": {},
    }
    figures: dict[str, bytes] = {}
    timer = _Timer(result["timings"])

    true = source.true_features if source.has_true_features else None  # (n_features, d_in)
    learned = sae.W_dec.detach()  # (n_latents, d_in)
    f1 = None
    if true is not None:
        match, best_cos = match_features(learned, true)
        f1 = FeatureF1(match)
    dm_rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    dm_count = [0]
    patch_shape = _patch_shape(run.config.source)
    coefficients: list[torch.Tensor] = []  # (rows, n_latents) blocks, image runs only
    coef_count = [0]
    othello = is_othello_source(source)
    board_rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (latents, doc_ids, positions)
    board_count = [0]

    def on_batch(batch: Any, target: torch.Tensor, latents: torch.Tensor, x_hat: torch.Tensor) -> None:
        if f1 is not None and batch is not None and batch.codes is not None:
            f1.update(batch.codes, latents)
        if not quick and dm_count[0] < dark_matter_rows:
            take = min(dark_matter_rows - dm_count[0], x_hat.shape[0])
            x = batch.acts if batch is not None else target
            dm_rows.append((x[:take].cpu(), target[:take].cpu(), x_hat[:take].detach().cpu()))
            dm_count[0] += take
        if patch_shape is not None and coef_count[0] < IMAGE_COEFFICIENT_ROWS:
            take = min(IMAGE_COEFFICIENT_ROWS - coef_count[0], latents.shape[0])
            coefficients.append(latents[:take].detach().cpu())
            coef_count[0] += take
        if othello and batch is not None and board_count[0] < BOARD_ROWS:
            take = min(BOARD_ROWS - board_count[0], latents.shape[0])
            board_rows.append((latents[:take].detach().cpu(), batch.doc_ids[:take], batch.positions[:take]))
            board_count[0] += take

    with timer("core"):
        recon, density = evaluate_reconstruction(
            sae,
            source.iter_batches("eval"),
            max_rows=n_rows,
            device=device,
            progress=progress,
            dense_threshold=dense_threshold,
            on_batch=on_batch,
        )
    result.update(recon)
    figures["density"] = density_figure(density)
    figures["l0"] = l0_figure(recon["l0_histogram"])
    if patch_shape is not None:
        with timer("images"):
            result["images"] = image_atom_metrics(learned.cpu(), patch_shape, density, torch.cat(coefficients))
        order = torch.argsort(density, descending=True, stable=True)[:GRID_ATOMS].tolist()
        figures["atoms"] = atoms_figure(learned, patch_shape, order, f"{len(order)} most active atoms")
    if othello and board_rows:
        with timer("board"):
            result["board"] = othello_section(source, *(torch.cat(t) for t in zip(*board_rows)))
    budgets = sae.budgets
    if budgets:  # a multi-budget SAE: the same metrics at each budget
        with timer("budgets"):
            result["budgets"] = evaluate_budgets(
                sae, budgets, source.iter_batches("eval"), max_rows=n_rows, device=device, progress=progress
            )

    if true is not None:
        result["mmcs"] = float(best_cos.mean())
        result[f"recovery_fraction_{RECOVERY_THRESHOLD}"] = recovery_fraction(learned, true, RECOVERY_THRESHOLD)
        gt = {
            "mmcs": result["mmcs"],
            f"recovery_fraction_{RECOVERY_THRESHOLD}": result[f"recovery_fraction_{RECOVERY_THRESHOLD}"],
            "random_mmcs_baseline": random_mmcs_baseline(d_in, n_latents) if d_in >= 2 else None,
            "n_true_features": int(true.shape[0]),
            "matching": "decoder cosine",
        }
        if f1 is not None and int((f1.tp + f1.fn).sum()) > 0:
            gt.update(f1.result())
        result["ground_truth"] = gt
        figures["max_cos"] = max_cos_figure(best_cos.numpy(), RECOVERY_THRESHOLD)

    model_source = source.is_text_model
    if splice_chunks and model_source:

        def reconstruct(acts: torch.Tensor) -> torch.Tensor:
            return sae(acts.to(device, torch.float32)).to(acts.device)  # (n, d_out)

        splice = transcoder_spliced_fidelity if source.config.target_hook is not None else spliced_fidelity
        with timer("splice"):
            result.update(splice(source, reconstruct, split="eval", max_chunks=splice_chunks, progress=progress))

    if not quick and dm_rows:
        with timer("dark_matter"):
            result["dark_matter"] = _dark_matter_section(sae, source, dm_rows, dark_matter_rows, device, progress)
    if not quick and model_source:
        with timer("probing"):
            rows = collect_token_rows(source, sae, max_tokens=probe_tokens, device=device, progress=progress)
            result["probing"] = sparse_probing(rows, progress=progress)
        if result["probing"]["concepts"]:
            figures["probing"] = probing_figure(result["probing"])
        with timer("absorption"):
            _, letter = token_concepts(rows.tokens)
            result["absorption"] = feature_absorption(
                rows.reps["residual"], rows.reps["sae"], learned.cpu(), letter, rows.doc_ids
            )
        if result["absorption"]["letters"]:
            figures["absorption"] = absorption_figure(result["absorption"])
        del rows
        with timer("neurons"):
            try:
                result["neurons"] = neuron_sparsity(source, max_chunks=neuron_chunks, progress=progress)
            except DataError as e:  # an architecture whose MLP modules are not recognised
                result["neurons"] = {"skipped": str(e)}
        if result["neurons"].get("layers"):
            figures["neurons"] = neurons_figure(result["neurons"])

    eval_path, plot_path, html_path = (run_dir / names(f) for f in (EVAL_FILE, DENSITY_PLOT, REPORT_FILE))
    result["files"] = {"eval_json": str(eval_path), "density_png": str(plot_path), "report_html": str(html_path)}
    save_png(figures["density"], plot_path)
    if "atoms" in figures:  # image runs: the dictionary as a picture of its own, beside the report
        result["files"]["atoms_png"] = str(run_dir / ATOMS_PLOT)
        save_png(figures["atoms"], run_dir / ATOMS_PLOT)
    safe = _json_safe(result)
    write_json(eval_path, safe)
    atomic_write(html_path, lambda p: p.write_text(render_report(safe, figures), encoding="utf-8"))
    return result


def _other_corpus(source_config: Any, corpus: list[str] | None, text_column: str | None):
    """A model run's source config pointed at ``corpus``, and the file namer for the results (both unchanged
    without ``corpus``)."""
    from ..sources import ModelSourceConfig

    if not corpus:
        if text_column is not None:
            raise ConfigError("--text-column applies with --corpus (another corpus to evaluate on)")
        return source_config, lambda name: name
    if not isinstance(source_config, ModelSourceConfig):
        raise ConfigError("--corpus applies to runs trained on a model over text (--hook)")
    source_config = dataclasses.replace(
        source_config, corpus=list(corpus), text_column=text_column or source_config.text_column
    )
    stems = "+".join(Path(c).stem if Path(c).suffix else Path(c).name or c for c in corpus)
    tag = re.sub(r"[^A-Za-z0-9]+", "-", stems).strip("-")[:60] or "corpus"
    return source_config, lambda name: f"{Path(name).stem}-{tag}{Path(name).suffix}"


def _dark_matter_section(
    sae: Any, source: Any, heldout: list[tuple[torch.Tensor, ...]], n_rows: int, device: str, progress: bool
) -> dict[str, Any]:
    """Dark matter with the linear maps fitted on up to ``n_rows`` rows of the *train* split and scored
    on the held-out eval rows gathered by the core pass (``heldout``: (x, target, x_hat) per batch)."""
    fit: list[tuple[torch.Tensor, ...]] = []

    def collect(batch: Any, target: torch.Tensor, latents: torch.Tensor, x_hat: torch.Tensor) -> None:
        fit.append((batch.acts if batch is not None else target, target.cpu(), x_hat.detach().cpu()))

    evaluate_reconstruction(
        sae, source.iter_batches("train"), max_rows=n_rows, device=device, progress=progress, on_batch=collect
    )
    x, target, x_hat = (torch.cat(t) for t in zip(*fit, *heldout))
    same = target.shape == x.shape and torch.equal(target, x)
    try:
        return dark_matter(x, x_hat, n_fit=sum(len(f[0]) for f in fit), target=None if same else target)
    except DataError as e:
        return {"skipped": str(e)}


class _Timer:
    """``with timer(name):`` adds the block's wall-clock seconds to ``timings[name]``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_report(result: dict[str, Any]) -> str:
    """A short multi-line human-readable summary of :func:`evaluate_run`'s result."""
    r = result
    dead = 100 * r["dead_fraction"] if "dead_fraction" in r else None
    dense = 100 * r["dense_fraction"] if "dense_fraction" in r else None
    lines = [
        (
            f"run {r.get('run', '?')}: {r.get('arch', '?')} SAE, d_in={r.get('d_in', '?')}, "
            f"n_latents={r.get('n_latents', '?')}, {r.get('n_rows', '?')} eval rows"
            + (f" of corpus {' '.join(r['corpus'])}" if r.get("corpus") else "")
        ),
        (
            f"  FVU {_fmt(r.get('fvu'))}   explained variance {_fmt(r.get('explained_variance'))}   "
            f"cosine {_fmt(r.get('cosine'))}   MSE {_fmt(r.get('mse'), '.4g')}"
        ),
        f"  L0 {_fmt(r.get('l0'), '.1f')}   dead {_fmt(dead, '.1f')}%   "
        + f"dense (>{r.get('dense_threshold', 0.1):g}) {_fmt(dense, '.1f')}%",
    ]
    for b in r.get("budgets") or []:
        lines.append(
            f"  at k={b['k']}: FVU {_fmt(b.get('fvu'))}   L0 {_fmt(b.get('l0'), '.1f')}   "
            f"dead {_fmt(100 * b['dead_fraction'] if b.get('dead_fraction') is not None else None, '.1f')}%"
        )
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
        lines.append(
            f"  ground truth: MMCS {_fmt(r['mmcs'])}   recovered (cos >= {RECOVERY_THRESHOLD}) "
            f"{_fmt(None if rec is None else 100 * rec, '.1f')}%"
        )
    if "kl_spliced" in r:
        lines.append(
            f"  KL(clean || spliced) {_fmt(r['kl_spliced'])} nats/token "
            f"(zero-ablation {_fmt(r.get('kl_zero_ablation'))}, mean-ablation {_fmt(r.get('kl_mean_ablation'))})"
        )
    gt = r.get("ground_truth") or {}
    if "f1" in gt:
        lines.append(
            f"  ground truth per feature: precision {_fmt(gt['precision'])}   recall {_fmt(gt['recall'])}   "
            f"F1 {_fmt(gt['f1'])}   (random-dictionary MMCS {_fmt(gt.get('random_mmcs_baseline'))})"
        )
    im = r.get("images") or {}
    if "gabor_like_fraction" in im:
        lines.append(
            f"  image atoms: {_fmt(100 * im['gabor_like_fraction'], '.1f')}% of {im['live_atoms']} live atoms "
            f"Gabor-like (fit R² ≥ {im['gabor_r2_threshold']:g}; median R² {_fmt(im['median_r2'], '.3f')}); "
            f"coefficient excess kurtosis {_fmt(im['coefficient_kurtosis'], '.1f')}"
        )
    lines.extend(_board_lines(r.get("board") or {}))
    lines.extend(_deep_lines(r))
    if r.get("zero_rows"):
        lines.append(f"  {r['zero_rows']} eval row(s) of norm 0: cosine and norm ratio count the other rows only")
    lines.extend(f"  warning: {w}" for w in r.get("warnings") or [])
    files = r.get("files", {})
    if files:
        lines.append("  wrote " + ", ".join(str(p) for p in files.values()))
    return "\n".join(lines)


def _board_lines(board: dict[str, Any]) -> list[str]:
    """Summary lines of an Othello run's board section."""
    if "skipped" in board:
        return [f"  board metrics skipped: {board['skipped']}"]
    parts = [
        f"{name} F1 {_fmt(board[key]['reconstruction_f1'], '.3f')} coverage {_fmt(board[key]['coverage'], '.3f')}"
        for name, key in (("SAE", "sae"), ("MLP neurons", "neurons"))
        if "reconstruction_f1" in (board.get(key) or {})
    ]
    return ["  board reconstruction (Karvonen et al.): " + "; ".join(parts)] if parts else []


def _deep_lines(r: dict[str, Any]) -> list[str]:
    """Summary lines for the sections a full (not --quick) evaluation adds."""
    lines = []
    dm = r.get("dark_matter") or {}
    if "error_linear_r2" in dm:
        lines.append(
            f"  dark matter: {_fmt(100 * dm['error_linear_r2'], '.1f')}% of the error variance is linear in x "
            f"(held-out); linear / nonlinear error FVU {_fmt(dm['linear_error_fvu'])} / "
            f"{_fmt(dm['nonlinear_error_fvu'])}; error-norm R² {_fmt(dm['error_norm_r2'], '.3f')}"
        )
    pr = r.get("probing") or {}
    if pr.get("mean"):
        ks = pr["ks"]
        parts = [f"{rep} {_fmt(v['f1'][0], '.3f')} → {_fmt(v['f1'][-1], '.3f')}" for rep, v in pr["mean"].items()]
        lines.append(
            f"  sparse probing, mean F1 at k={ks[0]} → k={ks[-1]} over {len(pr['concepts'])} concepts: "
            + ", ".join(parts)
        )
        digit = pr["concepts"].get("is_digit")
        if digit:
            lines.append(
                "  is_digit, 1-sparse F1: "
                + ", ".join(f"{rep} {_fmt(digit[rep]['f1'][0], '.3f')}" for rep in pr["mean"])
            )
    ab = r.get("absorption") or {}
    if ab.get("letters"):
        lines.append(
            f"  first-letter absorption {_fmt(ab['absorption_rate'], '.3f')} over {len(ab['letters'])} letters "
            f"(main latents silent on {_fmt(100 * ab['main_miss_rate'], '.1f')}% of letter tokens)"
        )
    ne = r.get("neurons") or {}
    if ne.get("layers"):
        lines.append(
            "  MLP neurons on ("
            + f"> {ne['threshold']:g}): "
            + " ".join(f"L{i} {100 * lay['fraction_active']:.1f}%" for i, lay in enumerate(ne["layers"]))
        )
    return lines
