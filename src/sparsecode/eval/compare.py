"""Several evaluated runs side by side: a table, an FVU-vs-L0 Pareto plot and a fidelity-vs-L0 plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..io import atomic_write, read_json, write_json
from ..layout import EVAL_FILE
from .html import STYLE, esc, img, table
from .plots import new_figure, png_bytes, save_png

FIDELITY_KEYS = (
    ("loss_recovered_zero_ablation", "loss recovered (vs zero-ablation)"),
    ("embedding_cosine", "spliced embedding cosine"),
    ("mmcs", "MMCS (ground truth)"),
)
"""The first key present in every run is the fidelity axis: causal LMs, encoders, synthetic data."""

COLUMNS = (
    ("arch", "arch"),
    ("n_latents", "latents"),
    ("l0", "L0"),
    ("fvu", "FVU"),
    ("cosine", "cosine"),
    ("dead_fraction", "dead"),
    ("embedding_cosine", "emb. cosine"),
    ("ce_increase", "CE increase"),
    ("kl_spliced", "KL"),
    ("mmcs", "MMCS"),
)


def load_evals(runs: list[str | Path]) -> list[dict[str, Any]]:
    """Each run's eval.json (with its folder as ``run``); a one-line error for a run not yet evaluated."""
    if len(runs) < 2:
        raise DataError("compare needs at least two runs")
    out = []
    for run in runs:
        path = Path(run) / EVAL_FILE
        if not Path(run).is_dir():
            raise DataError(f"run folder {run} not found")
        if not path.is_file():
            raise DataError(f"{path} is missing; evaluate the run first: sparsecode eval {run} --quick")
        r = read_json(path)
        for key in ("fvu", "l0"):
            if not isinstance(r.get(key), (int, float)):
                raise DataError(f"{path}: no numeric '{key}'; re-run sparsecode eval {run}")
        r["run"] = str(run)
        out.append(r)
    return out


def pareto_front(l0: np.ndarray, fvu: np.ndarray) -> np.ndarray:
    """(n,) bool: runs no other run beats on both axes (lower L0 and lower FVU, one strictly)."""
    better_or_equal = (l0[None, :] <= l0[:, None]) & (fvu[None, :] <= fvu[:, None])  # [i, j]: j dominates-or-ties i
    strictly = (l0[None, :] < l0[:, None]) | (fvu[None, :] < fvu[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


def _labels(evals: list[dict[str, Any]]) -> list[str]:
    names = [Path(r["run"]).name or r["run"] for r in evals]
    return names if len(set(names)) == len(names) else [r["run"] for r in evals]


def pareto_figure(evals: list[dict[str, Any]]) -> bytes:
    """FVU against L0, one labelled point per run; the Pareto front joined by a line."""
    l0 = np.array([r["l0"] for r in evals], dtype=float)
    fvu = np.array([r["fvu"] for r in evals], dtype=float)
    front = pareto_front(l0, fvu)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    if (~front).any():
        ax.scatter(l0[~front], fvu[~front], color="tab:gray", label="dominated")
    ax.scatter(l0[front], fvu[front], color="tab:blue", label="Pareto front", zorder=3)
    order = np.argsort(l0[front])
    ax.plot(l0[front][order], fvu[front][order], color="tab:blue")
    for x, y, name in zip(l0, fvu, _labels(evals)):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("L0 (active latents per row)")
    ax.set_ylabel("FVU (held-out)")
    ax.set_title("Sparsity vs reconstruction (lower-left is better)")
    ax.legend()
    return png_bytes(fig)


def fidelity_key(evals: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first of :data:`FIDELITY_KEYS` that every run has a number for."""
    for key, label in FIDELITY_KEYS:
        if all(isinstance(r.get(key), (int, float)) for r in evals):
            return key, label
    return None


def fidelity_figure(evals: list[dict[str, Any]]) -> bytes | None:
    """Model-output fidelity (or ground-truth MMCS) against L0, one labelled point per run."""
    found = fidelity_key(evals)
    if found is None:
        return None
    key, label = found
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    l0 = [r["l0"] for r in evals]
    ys = [r[key] for r in evals]
    ax.scatter(l0, ys, color="tab:green")
    for x, y, name in zip(l0, ys, _labels(evals)):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("L0 (active latents per row)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs L0 (higher is better)")
    return png_bytes(fig)


def compare_runs(runs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Read every run's eval.json; write compare.json, pareto.png, fidelity.png (when some fidelity number
    is shared by all runs) and a self-contained compare.html into ``out_dir``."""
    evals = load_evals(runs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} exists and is not a folder")
    l0 = np.array([r["l0"] for r in evals], dtype=float)
    fvu = np.array([r["fvu"] for r in evals], dtype=float)
    front = pareto_front(l0, fvu)
    rows = [{"run": r["run"], **{k: r.get(k) for k, _ in COLUMNS}, "pareto": bool(f)} for r, f in zip(evals, front)]
    pareto_png, fidelity_png = pareto_figure(evals), fidelity_figure(evals)
    files = {
        "compare_json": str(out_dir / "compare.json"),
        "pareto_png": str(out_dir / "pareto.png"),
        "compare_html": str(out_dir / "compare.html"),
    }
    if fidelity_png is not None:
        files["fidelity_png"] = str(out_dir / "fidelity.png")
    result = {"runs": rows, "fidelity_key": (fidelity_key(evals) or (None,))[0], "files": files}
    save_png(pareto_png, files["pareto_png"])
    if fidelity_png is not None:
        save_png(fidelity_png, files["fidelity_png"])
    write_json(files["compare_json"], result)
    cols = [k for k, _ in COLUMNS if any(row[k] is not None for row in rows)]
    heads = ["run"] + [dict(COLUMNS)[k] for k in cols] + ["Pareto"]
    body = table(heads, [[row["run"]] + [row[k] for k in cols] + ["yes" if row["pareto"] else ""] for row in rows])
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sparsecode compare</title><style>{STYLE}</style>"
        f"</head><body><h1>{esc(len(rows))} runs compared</h1>{body}{img(pareto_png, 'FVU vs L0')}"
        f"{img(fidelity_png, 'fidelity vs L0')}</body></html>\n"
    )
    atomic_write(Path(files["compare_html"]), lambda p: p.write_text(page, encoding="utf-8"))
    return result


def format_compare(result: dict[str, Any]) -> str:
    """The comparison as a fixed-width text table, sorted by L0, then the files written."""
    rows = sorted(result["runs"], key=lambda r: r["l0"])
    cols = [(k, label) for k, label in COLUMNS if any(r[k] is not None for r in rows)]
    width = max(len(r["run"]) for r in rows)

    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"{'run':<{width}}  " + "  ".join(f"{label:>11}" for _, label in cols) + "  Pareto"]
    for r in rows:
        lines.append(
            f"{r['run']:<{width}}  " + "  ".join(f"{cell(r[k]):>11}" for k, _ in cols) + ("  *" if r["pareto"] else "")
        )
    lines.append("wrote " + ", ".join(result["files"].values()))
    return "\n".join(lines)
