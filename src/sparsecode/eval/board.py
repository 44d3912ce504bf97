"""Board-state metrics for dictionaries on a board-game model (Karvonen et al. 2024, "Measuring Progress in
Dictionary Learning for Language Model Interpretability with Board Game Models").

Board state properties (BSPs) are binary functions of a position; here one per square and state
(empty / mine / theirs relative to the player to move), 192 in all. Feature activations are divided by each
feature's largest activation on the *fit* rows and thresholded at t in ``THRESHOLDS``; "feature f on at t" then
acts as a binary classifier of every BSP.

* **Coverage** (their Cov): for each BSP the best F1 of any feature as its classifier, averaged over BSPs
  (BSPs that never occur are left out), maximised over t.
* **Board reconstruction** (their Rec): a feature is a *high-precision classifier* of a BSP at t when, on the fit
  rows, the BSP holds on at least ``PRECISION`` (0.95) of the rows where the feature is on (and the feature is on
  at least ``MIN_ON`` times, so one lucky row does not count). On the held-out rows, a BSP is predicted true
  when any feature classifying it is on. F1 of the predicted against the true boards, counted per square as in
  their code: a square whose true state is predicted along with a false one counts as a false positive and not
  as a true positive. Maximised over t.

Rows are split in two: the first half fits (maxima, classifier choice), the second half scores, so neither
metric is measured on the rows that chose it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))
"""Fractions of a feature's maximum activation at which it counts as on: 0.0, 0.1, ..., 0.9."""
PRECISION = 0.95
"""Precision a feature needs on the fit rows to be a high-precision classifier of a BSP."""
MIN_ON = 10
"""Fit rows a feature must be on to classify anything (the precision of a handful of rows is noise)."""


def bsp_labels(boards: torch.Tensor, n_states: int = 3) -> torch.Tensor:
    """(n, squares * n_states) bool one-hot BSPs from (n, squares) integer square states."""
    one_hot = torch.nn.functional.one_hot(boards.long(), n_states).bool()  # (n, squares, states)
    return one_hot.reshape(boards.shape[0], -1)


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1)


def board_metrics(features: torch.Tensor, boards: torch.Tensor, n_states: int = 3) -> dict[str, Any]:
    """Coverage and board reconstruction F1 of ``features`` (n, F) against ``boards`` (n, squares) states.

    See the module docstring; returns the two headline numbers, the threshold each was reached at, and per
    threshold the values and the number of high-precision classifiers.
    """
    if features.ndim != 2 or boards.ndim != 2 or features.shape[0] != boards.shape[0]:
        raise DataError(f"board metrics: features {tuple(features.shape)} and boards {tuple(boards.shape)} differ")
    n = features.shape[0]
    if n < 4:
        raise DataError(f"board metrics need at least 4 positions, got {n}")
    half = n // 2
    feats = features.detach().to("cpu", torch.float32)
    labels = bsp_labels(boards.cpu(), n_states)  # (n, B)
    fit_f, test_f = feats[:half], feats[half:]
    fit_y, test_y = labels[:half].float(), labels[half:]
    peak = fit_f.max(dim=0).values  # (F,)
    alive = peak > 0
    fit_f, test_f, peak = fit_f[:, alive], test_f[:, alive], peak[alive]
    occurs = test_y.any(0)  # (B,) BSPs present in the scored rows
    per_t = []
    for t in THRESHOLDS:
        on_fit = (fit_f > t * peak).float()  # (half, F')
        on_test = (test_f > t * peak).float()  # (n - half, F')
        # coverage on the scored rows: best F1 of any feature for each BSP
        tp = on_test.T @ test_y.float()  # (F', B)
        pred = on_test.sum(0)[:, None]  # (F', 1)
        actual = test_y.float().sum(0)[None, :]  # (1, B)
        best = _f1(tp, pred - tp, actual - tp).max(dim=0).values if tp.numel() else torch.zeros(labels.shape[1])
        coverage = float(best[occurs].mean()) if occurs.any() else float("nan")
        # reconstruction: classifiers chosen on the fit rows, boards predicted on the scored rows
        fit_tp = on_fit.T @ fit_y  # (F', B)
        fit_on = on_fit.sum(0)[:, None]  # (F', 1)
        classifies = (fit_tp >= PRECISION * fit_on) & (fit_on >= MIN_ON)  # (F', B)
        predicted = (on_test @ classifies.float()) > 0  # (n - half, B)
        rec = _reconstruction_f1(predicted, test_y, n_states)
        per_t.append({"threshold": t, "coverage": coverage, "classifiers": int(classifies.any(1).sum()), **rec})
    best_cov = max(per_t, key=lambda r: (r["coverage"], -r["threshold"]))
    best_rec = max(per_t, key=lambda r: (r["f1"], -r["threshold"]))
    return {
        "coverage": best_cov["coverage"],
        "coverage_threshold": best_cov["threshold"],
        "reconstruction_f1": best_rec["f1"],
        "reconstruction_threshold": best_rec["threshold"],
        "alive_features": int(alive.sum()),
        "positions": n,
        "fit_positions": half,
        "per_threshold": per_t,
    }


def _reconstruction_f1(predicted: torch.Tensor, truth: torch.Tensor, n_states: int) -> dict[str, float]:
    """Per-square counts of predicted (n, B) against true (n, B) BSPs (B = squares * n_states)."""
    n, b = predicted.shape
    pred = predicted.reshape(n, b // n_states, n_states)
    true = truth.reshape(n, b // n_states, n_states)
    hit = (pred & true).any(-1)  # (n, squares) the true state predicted
    wrong = (pred & ~true).sum(-1)  # (n, squares) false states predicted
    tp = float((hit & (wrong == 0)).sum())  # a square predicted as its true state *and* another is not a TP
    fp = float(wrong.sum())
    fn = float((~hit).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    }


# --------------------------------------------------------------------------- an Othello run's board section

BOARD_ROWS = 20000
"""Eval positions (rows) whose latents feed the board metrics."""


def is_othello_source(source: Any) -> bool:
    """Whether ``source`` runs a model made by `sparsecode othello train` (its folder holds the info file)."""
    from ..sources import ModelSource
    from ..worlds.othello_gpt import INFO_FILE

    return isinstance(source, ModelSource) and (Path(source.model_path) / INFO_FILE).is_file()


def othello_section(
    source: Any, latents: torch.Tensor, doc_ids: torch.Tensor, positions: torch.Tensor
) -> dict[str, Any]:
    """Board metrics of the SAE latents (n, F) and of the hooked layer's MLP neurons at the same eval positions.

    ``doc_ids`` / ``positions`` (n,) say which eval chunk (game) and which token of it each row is.
    """
    from ..worlds import othello
    from ..worlds.othello_gpt import SEQ_LEN, SQUARE_OF_TOKEN, load_info

    if source.config.max_length < SEQ_LEN:
        return {"skipped": f"max_length {source.config.max_length} cuts games; train with --max-length {SEQ_LEN}"}
    chunks = source.chunks("eval")
    docs = sorted(set(doc_ids.tolist()))
    games = [[int(SQUARE_OF_TOKEN[t]) for t in chunks[d] if SQUARE_OF_TOKEN[t] >= 0] for d in docs]
    truth = othello.replay(othello.pad_games(games))
    index = {d: i for i, d in enumerate(docs)}
    game_row = torch.tensor([index[d] for d in doc_ids.tolist()])
    move = positions - 1  # token p (after [BOS]) is move p - 1
    boards = torch.from_numpy(truth.board[game_row.numpy(), move.numpy()].astype(np.int64))  # (n, 64)
    out: dict[str, Any] = {"model_legal_move_top1": load_info(source.model_path).get("legal_move_top1")}
    out["sae"] = board_metrics(latents, boards)
    neurons = _mlp_neurons(source, docs, doc_ids, positions)
    out["neurons"] = board_metrics(neurons, boards) if neurons is not None else {"skipped": "no MLP module found"}
    return out


@torch.inference_mode()
def _mlp_neurons(source: Any, docs: list[int], doc_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
    """(n, d_mlp) post-nonlinearity MLP activations of the hooked layer at each row's (chunk, position)."""
    from ..hooks import HookPoint, run_and_capture
    from .neurons import neuron_module_for_hook

    name = neuron_module_for_hook(source.model, source.config.hook)
    if name is None:
        return None
    chunks = source.chunks("eval")
    point = {"mlp": HookPoint.at(source.model, name)}
    acts: dict[int, torch.Tensor] = {}
    for s in range(0, len(docs), 128):
        part = docs[s : s + 128]
        enc = source.tokenize([chunks[d] for d in part])
        got = run_and_capture(source.model, point, **enc)["mlp"].to("cpu", torch.float32)  # (b, T, d_mlp)
        acts.update(zip(part, got))
    return torch.stack([acts[int(d)][int(p)] for d, p in zip(doc_ids, positions)])
