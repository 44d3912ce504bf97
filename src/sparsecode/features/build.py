"""`sparsecode features RUN`: stream a corpus split through the model and the SAE, write RUN/features.sqlite."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..device import check_device
from ..errors import DataError
from ..layout import FEATURES_FILE
from ..worlds.othello_gpt import SEQ_LEN, boards_of_ids
from .boards import BoardCorrelation
from .collect import ExampleLists, FeatureAccumulator, hist_edges
from .config import QUANTILE_BANDS, QUANTILE_LEVELS, FeaturesConfig
from .database import write_database
from .vocab import excluded_token_ids, logit_embedding, promoted_tokens, token_texts
from .windows import RandomWindows

MAX_HISTOGRAM_BARS = 40


def _round(x: float, digits: int = 4) -> float | None:
    """``x`` to ``digits`` significant digits (smaller JSON); None for NaN."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _pick_chunks(counts: list[int], max_tokens: int | None) -> list[int]:
    """Chunk indices in order, stopping after the chunk that reaches ``max_tokens`` kept tokens."""
    picked, total = [], 0
    for i, c in enumerate(counts):
        if max_tokens is not None and total >= max_tokens:
            break
        picked.append(i)
        total += c
    return picked


def _batches(order: list[int], chunks: list[list[int]], batch_tokens: int) -> list[list[int]]:
    """Consecutive groups of ``order`` (chunk indices sorted by length) whose padded size, group size × longest
    chunk, stays within ``batch_tokens`` (a chunk longer than that gets a group of its own)."""
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * max(len(chunks[i]), len(chunks[groups[-1][-1]])) <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def build_features(
    run_dir: str | Path, config: FeaturesConfig | None = None, progress: bool = True, source: Any = None
) -> dict[str, Any]:
    """Compute every latent's statistics and examples for the run in ``run_dir``; write RUN/features.sqlite.

    ``source``: the run's source already open, instead of reopening it from the run's config (needed for an image
    model that is a torch module passed from Python: ``VisionSource(config, model=module)``).
    Returns a summary (tokens read, dead/dense counts, seconds, database path).
    """
    from ..run import load_run
    from ..sources import open_source

    config = config or FeaturesConfig()
    started = time.perf_counter()
    run_dir = Path(run_dir)
    device = check_device(config.device)
    run = load_run(run_dir)
    kind = run.config.source.kind
    if kind not in ("model", "images", "vision"):
        raise DataError(
            f"{run_dir}: feature contexts need a text model source, image patches or an image model; this run was "
            f"trained on {kind} data"
        )
    if source is None:
        run.config.source.device = config.device
        source = open_source(run.config.source)
    sae = run.sae.to(device).eval()
    m = sae.cfg.n_latents
    if source.d_in != sae.cfg.d_in:
        raise DataError(f"{run_dir}: the model yields rows of width {source.d_in} but the SAE expects {sae.cfg.d_in}")
    if kind in ("images", "vision"):
        return _build_image_features(run_dir, source, sae, config, progress, started)

    chunks = source.chunks(config.split)
    counts = source.row_counts(config.split).tolist()
    picked = _pick_chunks(counts, config.max_tokens)
    if not picked or sum(counts[i] for i in picked) == 0:
        raise DataError(f"{run_dir}: the {config.split} split of the corpus has no tokens; try --split train")
    order = sorted(picked, key=lambda i: len(chunks[i]))  # similar lengths together: little padding
    boards = _board_correlation(source, m)
    if boards is not None:  # an Othello game: keep whole games before the token, so the dashboard can replay them
        config = dataclasses.replace(config, context_left=max(config.context_left, SEQ_LEN - 1))

    acc = FeatureAccumulator(
        m, config.top_n, config.n_samples, config.context_left, config.context_right, seed=config.seed
    )
    windows = RandomWindows(
        counts, picked, config.random_contexts, config.context_left, config.context_right, config.seed
    )
    bar = tqdm(
        total=sum(counts[i] for i in picked),
        unit="tok",
        desc=f"features ({config.split} split)",
        disable=not progress,
        dynamic_ncols=True,
    )
    with torch.inference_mode():
        for group in _batches(order, chunks, config.batch_tokens):
            enc = source.tokenize([chunks[i] for i in group])
            keep = source.keep_mask(enc["input_ids"], enc["attention_mask"])  # (B, T)
            x = source.activations(enc["input_ids"], enc["attention_mask"]).float()  # (B, T, d_in)
            B, T, d = x.shape
            latents = sae.encode(x.reshape(B * T, d)).reshape(B, T, m)  # (B, T, n_latents)
            acc.update(latents, keep.cpu(), torch.tensor(group))
            if boards is not None:
                boards.update(latents, keep.cpu(), boards_of_ids(enc["input_ids"].cpu().numpy()))
            windows.update(latents, keep.cpu(), group, chunks)
            bar.update(int(keep.sum()))
    bar.close()

    meta = {
        "run": str(run_dir),
        "model": source.config.model or "all-MiniLM-L6-v2 (embedded default)",
        "hook": source.config.hook,
        "hook_side": source.config.hook_side,
        "arch": sae.cfg.arch,
        "n_latents": m,
        "d_in": sae.cfg.d_in,
        "split": config.split,
        "n_tokens": acc.n_tokens,
        "n_chunks": len(picked),
        "settings": config.to_dict(),
        "quantile_levels": list(QUANTILE_LEVELS),
        "quantile_bands": [f"{round(100 * lo)}-{round(100 * hi)}%" for lo, hi in QUANTILE_BANDS],
        "world": "othello" if boards is not None else None,
    }

    promoted = _promoted(sae, source, config, meta)
    rows = _feature_rows(acc, config, chunks, promoted)
    random_rows = windows.sorted_rows()
    for row in random_rows:
        rows["token_ids"].update(json.loads(row[4]))
    texts = token_texts(source.tokenizer, sorted(rows["token_ids"]))
    for feature in rows["features"]:  # the list page shows the distinct words a feature is centred on
        feature[8] = json.dumps(list(dict.fromkeys(texts[t] for t in feature[8]))[:5])
    optional = {} if boards is None else {"feature_boards": _board_rows(boards)}
    return _write(run_dir, meta, rows, texts, acc, config, started, random_contexts=random_rows, **optional)


def _write(
    run_dir: Path,
    meta: dict[str, Any],
    rows: dict[str, Any],
    texts: dict[int, str],
    acc: FeatureAccumulator,
    config: FeaturesConfig,
    started: float,
    **optional: Any,
) -> dict[str, Any]:
    """Write RUN/features.sqlite (``optional``: the board / picture tables) and return the build's summary."""
    db_path = run_dir / FEATURES_FILE
    feature_tokens = ((t, f, a) for (t, f), a in rows["feature_tokens"].items())
    write_database(db_path, meta, rows["features"], rows["contexts"], texts, feature_tokens, **optional)
    fired = acc.fire_count
    density = fired.double() / max(acc.n_tokens, 1)
    return {
        "path": str(db_path),
        "n_latents": meta["n_latents"],
        "n_tokens": acc.n_tokens,
        "split": config.split,
        "dead": int((fired == 0).sum()),
        "dense": int((density > config.dense_threshold).sum()),
        "seconds": time.perf_counter() - started,
        "logit_embedding": meta["logit_embedding"],
    }


def _build_image_features(
    run_dir: Path, source: Any, sae: Any, config: FeaturesConfig, progress: bool, started: float
) -> dict[str, Any]:
    """The database of an image-patch run (``features/images.py``) or an image-model run (``features/vision.py``):
    every row a one-token chunk, shown as a picture."""
    from . import images, vision

    config = images.image_settings(config)
    acc, chunks, _ = images.collect_patches(source, sae, config, progress)
    if acc.n_tokens == 0:
        raise DataError(f"{run_dir}: the {config.split} split has no rows; try --split train")
    on_model = source.config.kind == "vision"
    meta = {
        "run": str(run_dir),
        "arch": sae.cfg.arch,
        "n_latents": sae.cfg.n_latents,
        "d_in": sae.cfg.d_in,
        "split": config.split,
        "n_tokens": acc.n_tokens,
        "n_chunks": len(chunks),
        "settings": config.to_dict(),
        "quantile_levels": list(QUANTILE_LEVELS),
        "quantile_bands": [f"{round(100 * lo)}-{round(100 * hi)}%" for lo, hi in QUANTILE_BANDS],
        **(vision.vision_meta(source) if on_model else images.image_meta(source, config)),
    }
    rows = _feature_rows(acc, config, chunks, None)
    shown = rows["token_ids"]
    texts = vision.labels(source, shown) if on_model else images.patch_labels(source, shown)
    images.top_labels(rows["features"], texts)
    if on_model:
        tables = {"pictures": vision.pictures(source, shown), "boxes": vision.boxes(source, shown)}
    else:
        tables = {"pictures": images.pictures(source, sae, shown)}
    return _write(run_dir, meta, rows, texts, acc, config, started, **tables)


def _board_correlation(source: Any, n_latents: int) -> BoardCorrelation | None:
    """An accumulator for the latents' board correlations when ``source`` runs an Othello model, else None."""
    from ..eval.board import is_othello_source

    return BoardCorrelation(n_latents) if is_othello_source(source) else None


def _board_rows(boards: BoardCorrelation) -> list[tuple[int, str]]:
    """(feature, JSON (64, 3) correlations to 3 decimals) rows of the ``feature_boards`` table."""
    corr = boards.correlation().double().round(decimals=3).tolist()  # (n_latents, 64, 3)
    return [(f, json.dumps(c)) for f, c in enumerate(corr)]


def _promoted(sae, source, config: FeaturesConfig, meta: dict[str, Any]) -> tuple[torch.Tensor, ...] | None:
    """Top/bottom token ids and scores of every decoder row through the model's token embedding; records which
    embedding was used (or why none) in ``meta``."""
    if config.n_logit_tokens == 0:
        meta["logit_embedding"] = None
        return None
    embedding, label = logit_embedding(source.model, sae.cfg.d_in)
    meta["logit_embedding"] = label if embedding is not None else f"none: {label}"
    if embedding is None:
        return None
    directions = sae.W_dec.detach()  # (n_latents, d_in)
    return promoted_tokens(directions, embedding, config.n_logit_tokens, excluded_token_ids(source.tokenizer))


def _context(
    feature: int,
    kind: str,
    band: str | None,
    rank: int,
    examples: ExampleLists,
    slot: int,
    chunks: list[list[int]],
    offsets: range,
) -> tuple[tuple, list[int], list[float]]:
    """One ``contexts`` row from slot ``slot`` of ``examples`` (shown tokens only), its token ids and activations."""
    chunk_index, position = examples.chunks[feature][slot], examples.positions[feature][slot]
    chunk = chunks[chunk_index]
    token_ids, acts, center = [], [], 0
    for off, a in zip(offsets, examples.windows[feature][slot]):
        if math.isnan(a):
            continue
        if off == 0:
            center = len(token_ids)
        token_ids.append(chunk[position + off])
        acts.append(a)
    row = (
        feature,
        kind,
        band,
        rank,
        examples.values[feature][slot],
        chunk_index,
        position,
        center,
        json.dumps(token_ids),
        json.dumps(acts),
    )
    return row, token_ids, acts


def _feature_rows(
    acc: FeatureAccumulator, config: FeaturesConfig, chunks: list[list[int]], promoted: tuple[torch.Tensor, ...] | None
) -> dict[str, Any]:
    """Rows of the ``features`` and ``contexts`` tables, the (token, feature) -> activation index, and the ids of
    every token shown. A feature's ``top_tokens`` column holds token ids here (its centre tokens, best first)."""
    m, n_tokens = acc.n_latents, max(acc.n_tokens, 1)
    quantiles = acc.quantiles(QUANTILE_LEVELS).tolist()  # (m, L)
    band_levels = sorted({q for band in QUANTILE_BANDS for q in band})
    band_q = acc.quantiles(tuple(band_levels)).tolist()  # (m, bands + 1)
    edges = [_round(e) for e in hist_edges().tolist()]
    hist = acc.hist.numpy()
    offsets = range(-config.context_left, config.context_right + 1)
    top, samples = acc.top.as_lists(), acc.samples.as_lists()
    max_act, fire_count, act_sum, min_act = (
        t.tolist() for t in (acc.max_act, acc.fire_count, acc.act_sum, acc.min_act)
    )
    logits = None  # [side][feature] -> [[token id, score], ...]
    if promoted is not None:
        logits = [
            [
                [list(p) for p in zip(ids, scores)]
                for ids, scores in zip(promoted[k].tolist(), promoted[k + 1].double().round(decimals=4).tolist())
            ]
            for k in (0, 2)
        ]
    features, contexts, token_ids, feature_tokens = [], [], set(), {}
    for f in range(m):
        fired = fire_count[f]
        centre_ids: list[int] = []
        for rank in range(top.used[f]):
            row, ids, acts = _context(f, "top", None, rank, top, rank, chunks, offsets)
            contexts.append(row)
            centre_ids.append(ids[row[7]])
            token_ids.update(ids)
            for t, a in zip(ids, acts):
                if a > feature_tokens.get((t, f), 0.0):
                    feature_tokens[(t, f)] = a
        shown_top = set(zip(top.chunks[f][: top.used[f]], top.positions[f][: top.used[f]]))
        for row, ids in _quantile_rows(
            samples, f, dict(zip(band_levels, band_q[f])), config, chunks, offsets, shown_top
        ):
            contexts.append(row)
            token_ids.update(ids)
        sides = ["[]", "[]"]
        if logits is not None:
            for side in (0, 1):
                token_ids.update(p[0] for p in logits[side][f])
                sides[side] = json.dumps(logits[side][f])
        features.append(
            [
                f,
                fired,
                fired / n_tokens,
                _round(act_sum[f] / fired) if fired else None,
                _round(max_act[f], 6),
                _round(min_act[f]) if fired else None,
                json.dumps([_round(q) for q in quantiles[f]]),
                json.dumps(_histogram(hist[f], edges)),
                centre_ids,
                sides[0],
                sides[1],
            ]
        )
    return {"features": features, "contexts": contexts, "token_ids": token_ids, "feature_tokens": feature_tokens}


def _quantile_rows(
    samples: ExampleLists,
    f: int,
    q: dict[float, float],
    config: FeaturesConfig,
    chunks: list[list[int]],
    offsets: range,
    shown_top: set[tuple[int, int]],
) -> list[tuple[tuple, list[int]]]:
    """Up to ``quantile_examples`` sampled contexts per band of the latent's activations, in random (key) order,
    leaving out firings already shown as top contexts (``shown_top``: (chunk, position) pairs)."""
    rows: list[tuple[tuple, list[int]]] = []
    values = samples.values[f]
    fresh = [
        slot
        for slot in range(samples.used[f])
        if (samples.chunks[f][slot], samples.positions[f][slot]) not in shown_top
    ]
    for lo, hi in QUANTILE_BANDS:
        band = f"{round(100 * lo)}-{round(100 * hi)}%"
        in_band = [slot for slot in fresh if (lo == 0 or q[lo] <= values[slot]) and values[slot] < q[hi]]
        for slot in in_band[: config.quantile_examples]:
            row, ids, _ = _context(f, "quantile", band, len(rows), samples, slot, chunks, offsets)
            rows.append((row, ids))
    return rows


def _histogram(counts: np.ndarray, edges: list[float]) -> list[list[float]]:
    """The non-empty span of a latent's fine log histogram (bins,), merged into at most MAX_HISTOGRAM_BARS bars of
    [low edge, high edge, count]."""
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return []
    first, last = int(nz[0]), int(nz[-1]) + 1
    group = max(1, math.ceil((last - first) / MAX_HISTOGRAM_BARS))
    starts = list(range(first, last, group))
    sums = np.add.reduceat(counts[first:last], [s - first for s in starts]).tolist()
    return [[edges[s], edges[min(s + group, last)], int(c)] for s, c in zip(starts, sums)]
