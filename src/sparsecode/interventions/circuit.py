"""Attribution for a prompt on one or several runs of the same model: the metric, the graph as JSON and a picture.

The metric is the log-probability of ``target`` as the next token after ``prompt`` or, with ``baseline``, the
logit difference target − baseline (the prompt's last position). Several runs (dictionaries at different layers
of one model) give a sparse feature circuit: edges between the features of adjacent dictionaries.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io import atomic_write, write_json
from ..sources.hf import resolve_model
from .attribute import Attribution, attribute
from .lm import encode_prompt, single_token
from .sites import site_of_run


def _same_model(runs: list[Any]) -> None:
    for r in runs:
        if r.config.source.kind != "model":
            raise ConfigError(f"{r.path}: attribution needs a run on a text model, not on {r.config.source.kind} data")
    first = runs[0]
    where = resolve_model(first.config.source.model)
    for r in runs[1:]:
        other = resolve_model(r.config.source.model)
        if other != where:
            raise ConfigError(
                f"runs from different models: {first.path} is on {where}, {r.path} on {other}; "
                "attribute runs of one model together"
            )


def attribute_prompt(
    runs: list[Any], prompt: str, target: str, baseline: str | None = None, *, top: int = 10, ablate: bool = True
) -> tuple[Attribution, dict[str, Any]]:
    """Attribution of the target's log-prob (or the target − baseline logit difference) after ``prompt``."""
    if not runs:
        raise ConfigError("give at least one run")
    _same_model(runs)
    source = runs[0].source()
    if not source.is_causal_lm:
        raise ConfigError(f"{runs[0].path}: attribution to a next token needs a causal LM")
    model, tok = source.model, source.tokenizer
    sites = [site_of_run(r, model) for r in runs]
    for s in sites:
        s.sae.to(source.device)
    enc = encode_prompt(source, prompt)
    t_id = single_token(tok, target, "target")
    b_id = None if baseline is None else single_token(tok, baseline, "baseline")

    def metric() -> torch.Tensor:
        logits = model(**enc).logits[0, -1].double()  # (V,)
        if b_id is None:
            return torch.log_softmax(logits, -1)[t_id]
        return logits[t_id] - logits[b_id]

    result = attribute(sites, metric, top=top, ablate=ablate, edges=len(sites) > 1, positions=_positions(source, enc))
    tokens = [tok.decode([i]) for i in enc["input_ids"][0].tolist()]
    info = {
        "prompt": prompt,
        "tokens": tokens,
        "target": target,
        "baseline": baseline,
        "metric_name": f"log p({target!r})" if baseline is None else f"logit({target!r}) - logit({baseline!r})",
        "runs": [str(r.path) for r in runs],
    }
    return result, info


def _positions(source: Any, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prompt's positions the dictionaries were trained on: for causal LMs not the first (the attention sink,
    see ``ModelSourceConfig.exclude_first_positions``), where latents are outliers whose linear estimates mean
    little; features of the text itself sit at the later positions."""
    keep = source.keep_mask(enc["input_ids"], enc["attention_mask"])  # (1, T)
    if not keep.any():
        raise ConfigError("the prompt is a single token; give at least two, e.g. 'The capital of France is'")
    return keep


def write_graph(result: Attribution, info: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``attribution.json`` and ``attribution.png`` in ``out_dir`` (each written atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "attribution.json", out_dir / "attribution.png"
    write_json(json_path, {**info, **result.to_dict()})
    png = draw_graph(result, info)
    atomic_write(png_path, lambda tmp: tmp.write_bytes(png))
    return json_path, png_path


def draw_graph(result: Attribution, info: dict[str, Any], per_site: int = 6) -> bytes:
    """A PNG: one column of nodes per site (top ``per_site`` by |attribution|, label = latent and attribution),
    the metric on the right; lines are edges between adjacent sites and, from the last site, attributions to the
    metric; width ∝ |weight|, blue positive, red negative."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = result.sites
    pos: dict[tuple[str, int], tuple[float, float]] = {}
    fig_h = max(3.0, 0.7 * per_site + 1.5)
    fig, ax = plt.subplots(figsize=(3.2 * (len(columns) + 1), fig_h))
    for c, site in enumerate(columns):
        nodes = [n for n in result.nodes if n.site == site][:per_site]
        for r, n in enumerate(nodes):
            pos[(site, n.latent)] = (c, per_site - r)
    metric_xy = (len(columns), per_site / 2 + 0.5)
    lines = [
        (pos[(e.source_site, e.source)], pos[(e.target_site, e.target)], e.weight)
        for e in result.edges
        if (e.source_site, e.source) in pos and (e.target_site, e.target) in pos
    ]
    last = columns[-1] if columns else None
    lines += [
        (pos[(n.site, n.latent)], metric_xy, n.attribution)
        for n in result.nodes
        if n.site == last and (n.site, n.latent) in pos
    ]
    biggest = max((abs(w) for *_, w in lines), default=1.0) or 1.0
    for (x0, y0), (x1, y1), w in lines:
        if w:
            ax.plot(
                [x0, x1],
                [y0, y1],
                color="tab:blue" if w > 0 else "tab:red",
                lw=0.5 + 5 * abs(w) / biggest,
                alpha=0.6,
                zorder=1,
            )
    for n in result.nodes:
        if (n.site, n.latent) in pos:
            x, y = pos[(n.site, n.latent)]
            ax.scatter([x], [y], s=300, color="white", edgecolor="black", zorder=2)
            ax.annotate(f"{n.latent}\n{n.attribution:+.3g}", (x, y), ha="center", va="center", fontsize=7, zorder=3)
    ax.scatter([metric_xy[0]], [metric_xy[1]], s=500, color="gold", edgecolor="black", zorder=2)
    ax.annotate(
        info.get("metric_name", "metric"),
        metric_xy,
        xytext=(0, -22),
        textcoords="offset points",
        ha="center",
        fontsize=8,
    )
    ax.set_xticks(range(len(columns) + 1), [*columns, "metric"], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(columns) + 0.5)
    ax.set_ylim(0.3, per_site + 0.7)
    ax.set_title(f"{info.get('prompt', '')!r} -> {info.get('target', '')!r}   (metric {result.metric:.3f})", fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def format_attribution(result: Attribution, info: dict[str, Any], n: int = 10) -> str:
    lines = [
        f"{info['metric_name']} after {info['prompt']!r} = {result.metric:.4f}",
        f"{'site':>24} {'feature':>8} {'act':>8} {'attribution':>12} {'ablation':>10}  at token",
    ]
    for node in result.nodes[:n]:
        abl = "-" if node.ablation is None else f"{node.ablation:+.4f}"
        token = info["tokens"][node.position] if node.position < len(info["tokens"]) else "?"
        lines.append(
            f"{node.site[-24:]:>24} {node.latent:>8} {node.activation:>8.3g} {node.attribution:>+12.4f} {abl:>10}  "
            f"{token!r}"
        )
    for site, err in result.errors.items():
        lines.append(f"error term at {site}: attribution {err:+.4f}")
    if result.edges:
        top = sorted(result.edges, key=lambda e: -abs(e.weight))[:n]
        lines.append("strongest edges:")
        lines += [f"  {e.source_site}:{e.source} -> {e.target_site}:{e.target}  {e.weight:+.4f}" for e in top]
    return "\n".join(lines)
