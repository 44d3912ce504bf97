"""A self-contained report.html: every number of eval.json in tables, plots embedded as base64 PNG.

No scripts, no external files: the page reads the same offline, attached to an email or opened from
an archive. All text taken from the result is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any, spec: str = ".4f") -> str:
    """A number for a table cell ('n/a' for missing or non-finite)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return esc(x)
    return format(x, spec) if isinstance(x, float) else str(x)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; cells that are already strings are escaped, numbers formatted with :func:`fmt`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c) if isinstance(c, str) else fmt(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _kv(r: dict[str, Any], keys: list[tuple[str, str]]) -> str:
    return table(["metric", "value"], [[label, r.get(key)] for key, label in keys if key in r])


def _core(r: dict[str, Any], figures: dict[str, bytes]) -> str:
    rows = [
        ["FVU (fraction of variance unexplained)", r.get("fvu")],
        ["explained variance", r.get("explained_variance")],
        ["MSE", r.get("mse")],
        ["cosine(x, x̂)", r.get("cosine")],
        ["‖x̂‖ / ‖x‖", r.get("l2_ratio")],
        ["L0 (mean active latents)", r.get("l0")],
        ["L0 standard deviation", r.get("l0_std")],
        ["dead latents", f"{r.get('n_dead')} ({100 * (r.get('dead_fraction') or 0):.2f}%)"],
        [
            f"dense latents (density > {r.get('dense_threshold')})",
            f"{r.get('n_dense')} ({100 * (r.get('dense_fraction') or 0):.2f}%)",
        ],
    ]
    out = "<h2>Reconstruction and sparsity</h2>" + table(["metric", "value"], rows)
    return out + img(figures.get("density"), "latent density") + img(figures.get("l0"), "L0 distribution")


def _fidelity(r: dict[str, Any]) -> str:
    if "ce_clean" in r:
        keys = [
            ("ce_clean", "next-token CE, clean"),
            ("ce_spliced", "CE with the SAE spliced in"),
            ("ce_increase", "CE increase"),
            ("ce_zero_ablation", "CE, zero-ablation"),
            ("ce_mean_ablation", "CE, mean-ablation"),
            ("kl_spliced", "KL(clean ‖ spliced), nats/token"),
            ("kl_zero_ablation", "KL(clean ‖ zero-ablation)"),
            ("kl_mean_ablation", "KL(clean ‖ mean-ablation)"),
            ("loss_recovered_zero_ablation", "loss recovered vs zero-ablation"),
            ("loss_recovered_mean_ablation", "loss recovered vs mean-ablation"),
            ("splice_chunks", "chunks"),
            ("splice_tokens", "tokens"),
        ]
    elif "embedding_cosine" in r:
        keys = [
            ("embedding_cosine", "sentence-embedding cosine, SAE spliced in"),
            ("embedding_cosine_zero_ablation", "…, zero-ablation"),
            ("embedding_cosine_mean_ablation", "…, mean-ablation"),
            ("splice_chunks", "chunks"),
            ("splice_tokens", "tokens"),
        ]
    else:
        return ""
    return (
        "<h2>Spliced fidelity</h2><p class=note>The model run with the hooked activations replaced by "
        "their reconstructions, against the clean run.</p>" + _kv(r, keys)
    )


def _ground_truth(r: dict[str, Any], figures: dict[str, bytes]) -> str:
    gt = r.get("ground_truth")
    if not gt:
        return ""
    keys = [
        ("mmcs", "MMCS (mean max cosine)"),
        ("random_mmcs_baseline", "MMCS of a random dictionary (expected)"),
        ("recovery_fraction_0.9", "recovered features (cos ≥ 0.9)"),
        ("precision", "feature precision"),
        ("recall", "feature recall"),
        ("f1", "feature F1"),
        ("features_seen", "true features active in eval"),
        ("n_true_features", "true features"),
    ]
    note = (
        "<p class=note>Each true feature is matched to the latent whose decoder row has the highest cosine "
        "with it; precision / recall compare 'matched latent > 0' with 'feature active'.</p>"
    )
    return "<h2>Ground truth</h2>" + note + _kv(gt, keys) + img(figures.get("max_cos"), "max cosine histogram")


def _dark_matter(r: dict[str, Any]) -> str:
    dm = r.get("dark_matter")
    if not dm:
        return ""
    if "skipped" in dm:
        return f"<h2>Dark matter</h2><p class=note>skipped: {esc(dm['skipped'])}</p>"
    keys = [
        ("error_linear_r2", "share of error variance linearly predictable from x (held-out R²)"),
        ("error_norm_r2", "R² of predicting ‖error‖ linearly from x"),
        ("linear_error_fvu", "linear error (fraction of input variance)"),
        ("nonlinear_error_fvu", "nonlinear error (fraction of input variance)"),
        ("total_error_fvu", "total error (fraction of input variance)"),
        ("n_fit", "rows fitted"),
        ("n_heldout", "rows scored"),
    ]
    return (
        "<h2>Dark matter</h2><p class=note>A ridge regression from the input to the SAE error, fitted on "
        "train-split rows and scored on the held-out rows (Engels et al. 2024).</p>" + _kv(dm, keys)
    )


def _probing(r: dict[str, Any], figures: dict[str, bytes]) -> str:
    pr = r.get("probing")
    if not pr:
        return ""
    ks = pr["ks"]
    out = [
        (
            "<h2>Sparse probing</h2><p class=note>Token concepts derived from the token strings; k-sparse "
            "logistic probes on the top-k coordinates by class-mean difference; balanced held-out tokens "
            f"(chance = 0.5); {pr['n_tokens']} tokens, train/test split by text chunk.</p>"
        )
    ]
    rows = []
    for rep, scores in pr["mean"].items():
        rows.append([f"{rep} F1"] + scores["f1"])
        rows.append([f"{rep} accuracy"] + scores["accuracy"])
    out.append(table(["mean over concepts"] + [f"k={k}" for k in ks], rows))
    out.append(img(figures.get("probing"), "sparse probing"))
    reps = pr["representations"]
    rows = [
        [name]
        + [c[rep]["f1"][i] for rep in reps for i in (0, -1)]
        + [", ".join(map(str, c.get("sae_top_latents", [])))]
        for name, c in pr["concepts"].items()
    ]
    heads = ["concept"] + [f"{rep} F1 k={k}" for rep in reps for k in (ks[0], ks[-1])] + ["best SAE latents"]
    out.append(table(heads, rows))
    if pr["skipped"]:
        out.append(
            "<p class=note>skipped (too few positive tokens): "
            + "; ".join(f"{esc(n)}: {esc(why)}" for n, why in pr["skipped"].items())
            + "</p>"
        )
    return "".join(out)


def _absorption(r: dict[str, Any], figures: dict[str, bytes]) -> str:
    ab = r.get("absorption")
    if not ab:
        return ""
    out = [
        (
            f"<h2>First-letter feature absorption</h2><p>mean absorption rate: <b>{fmt(ab.get('absorption_rate'))}</b>"
            f" &nbsp; mean main-latent miss rate: {fmt(ab.get('main_miss_rate'))}</p>"
            "<p class=note>Held-out word-start tokens a linear probe assigns to the right first letter; "
            "'absorbed' = the letter's main latents are silent and another latent aligned with the probe "
            f"(cos ≥ {fmt(ab['cos_threshold'], 'g')}) carries at least {fmt(ab['min_share'], 'g')} of the letter signal.</p>"
        )
    ]
    out.append(img(figures.get("absorption"), "absorption"))
    rows = [
        [
            c,
            v["absorption_rate"],
            v["main_miss_rate"],
            v["probe_correct_tokens"],
            v["main_f1"],
            ", ".join(map(str, v["main_latents"])),
        ]
        for c, v in ab["letters"].items()
    ]
    out.append(table(["letter", "absorbed", "main silent", "tokens", "main-latent F1", "main latents"], rows))
    if ab.get("skipped"):
        out.append(f"<p class=note>letters with too few tokens: {esc(' '.join(ab['skipped']))}</p>")
    return "".join(out)


def _neurons(r: dict[str, Any], figures: dict[str, bytes]) -> str:
    ne = r.get("neurons")
    if not ne:
        return ""
    if "skipped" in ne:
        return f"<h2>Neuron sparsity</h2><p class=note>skipped: {esc(ne['skipped'])}</p>"
    rows = [
        [lay["module"], lay["n_neurons"], lay["fraction_active"], lay["never_active_fraction"]] for lay in ne["layers"]
    ]
    return (
        f"<h2>MLP neuron sparsity</h2><p class=note>{esc(ne['activation'])} activations; on = value > "
        f"{fmt(ne['threshold'], 'g')}; {ne['tokens']} tokens.</p>"
        + table(["module", "neurons", "fraction on", "never on"], rows)
        + img(figures.get("neurons"), "neurons")
    )


def _images(r: dict[str, Any], figures: dict[str, bytes]) -> str:
    im = r.get("images")
    if not im:
        return ""
    keys = [
        ("live_atoms", "live atoms"),
        ("gabor_like", "Gabor-like atoms"),
        ("gabor_like_fraction", "Gabor-like share of live atoms"),
        ("median_r2", "median Gabor fit R²"),
        ("coefficient_kurtosis", "coefficient excess kurtosis"),
        ("median_latent_kurtosis", "median per-latent excess kurtosis"),
    ]
    note = (
        f"<p class=note>Each live atom is fitted with a 2-D Gabor (oriented plane wave under a Gaussian "
        f"envelope); Gabor-like means fit R² ≥ {esc(im.get('gabor_r2_threshold'))}. Per-atom orientation, "
        "frequency and envelope are in eval.json.</p>"
    )
    return "<h2>Image atoms</h2>" + note + _kv(im, keys) + img(figures.get("atoms"), "dictionary atoms")


def _board(r: dict[str, Any]) -> str:
    b = r.get("board")
    if not b:
        return ""
    if "skipped" in b:
        return f"<h2>Board state (Othello)</h2><p class=note>skipped: {esc(b['skipped'])}</p>"
    rows = [
        [
            name,
            sec.get("reconstruction_f1"),
            sec.get("reconstruction_f1_per_square"),
            sec.get("reconstruction_threshold"),
            sec.get("coverage"),
            sec.get("coverage_threshold"),
            sec.get("alive_features"),
        ]
        for name, sec in (("SAE latents", b.get("sae") or {}), ("MLP neurons", b.get("neurons") or {}))
        if "coverage" in sec
    ]
    note = (
        "<p class=note>Board reconstruction F1 and coverage as defined by Karvonen et al. (2024), over 192 board "
        "state properties (each square empty / mine / theirs for the player to move); thresholds are fractions of "
        f"each feature's maximum. Model legal-move top-1: {esc(fmt(b.get('model_legal_move_top1')))}.</p>"
    )
    head = ["features", "reconstruction F1", "per-square F1", "at threshold", "coverage", "at threshold", "alive"]
    return "<h2>Board state (Othello)</h2>" + note + table(head, rows)


def render_report(result: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The full report page for one :func:`evaluate_run` result and its PNG figures by name."""
    r = result
    title = f"sparsecode eval: {r.get('run', '')}"
    head = (
        f"<h1>{esc(title)}</h1><p>{esc(r.get('arch'))} SAE, d_in={esc(r.get('d_in'))}, "
        f"{esc(r.get('n_latents'))} latents, {esc(r.get('n_rows'))} held-out rows"
        f"{' (quick: core metrics only)' if r.get('quick') else ''}.</p>"
    )
    timings = r.get("timings") or {}
    if timings:
        head += "<p class=note>seconds: " + esc(", ".join(f"{k} {v:.1f}" for k, v in timings.items())) + "</p>"
    parts = [
        head,
        _core(r, figures),
        _fidelity(r),
        _ground_truth(r, figures),
        _images(r, figures),
        _board(r),
        _dark_matter(r),
        _probing(r, figures),
        _absorption(r, figures),
        _neurons(r, figures),
    ]
    raw = json.dumps(r, indent=1)
    parts.append(f"<h2>eval.json</h2><details><summary>all numbers</summary><pre>{esc(raw)}</pre></details>")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
