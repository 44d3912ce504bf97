"""Board-state metrics for dictionaries on a board-game model (Karvonen et al. 2024, "Measuring Progress in
Dictionary Learning for Language Model Interpretability with Board Game Models").

Board state properties (BSPs) are binary functions of a position; here one per square and state
(empty / mine / theirs relative to the player to move), 192 in all. Feature activations are divided by each
feature's largest activation on the *fit* rows and thresholded at t in ``THRESHOLDS``; "feature f on at t" then
acts as a binary classifier of every BSP.

* **Coverage** (their Cov): for each BSP the best F1 of any feature as its classifier, averaged over all BSPs
  (one that never occurs, like an empty centre square, counts as F1 0, as in their code), maximised over t.
* **Board reconstruction** (their Rec): a feature is a *high-precision classifier* of a BSP at t when, on the fit
  rows, the BSP holds on at least ``PRECISION`` (0.95) of the rows where the feature is on, and on at least
  ``MIN_ON`` (10) of them. On the held-out rows a BSP is predicted true when any feature classifying it is on.
  The headline F1 counts predicted against true BSPs (their "per class" F1, the number their paper and results
  tables report); the threshold it is read at is the one with the best *per-square* F1, in which a square whose
  true state is predicted along with exactly one false state is a false positive and not a true positive (as their
  code picks the threshold, including its quirk: with both false states predicted the true positive stays).
  Thresholds t = 0.0 .. 0.9, as their headline (their extra t = 1.0 row is left out of it too).

Rows are split in two: the fit rows (maxima, classifier choice) and the scored rows (coverage, reconstruction),
so neither metric is measured on the rows that chose it. Their code takes the maxima from a training buffer,
the classifiers from 1,000 training games and scores on 1,000 test games; :func:`othello_section` splits the
eval positions by game, the first half of the games fitting.
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
"""Fit rows on which a classifier must be on *and* right (their significance threshold; with the 0.95 precision
this is the same as being on at least 10 times)."""


def bsp_labels(boards: torch.Tensor, n_states: int = 3) -> torch.Tensor:
    """(n, squares * n_states) bool one-hot BSPs from (n, squares) integer square states."""
    one_hot = torch.nn.functional.one_hot(boards.long(), n_states).bool()  # (n, squares, states)
    return one_hot.reshape(boards.shape[0], -1)


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1)


def board_metrics(
    features: torch.Tensor, boards: torch.Tensor, n_states: int = 3, fit: torch.Tensor | None = None
) -> dict[str, Any]:
    """Coverage and board reconstruction F1 of ``features`` (n, F) against ``boards`` (n, squares) states.

    ``fit`` (n,) bool marks the rows that fit maxima and classifiers, the rest are scored (default: the first
    half of the rows). See the module docstring; returns the two headline numbers, the threshold each was reached
    at, and per threshold the values and the number of high-precision classifiers.
    """
    if features.ndim != 2 or boards.ndim != 2 or features.shape[0] != boards.shape[0]:
        raise DataError(f"board metrics: features {tuple(features.shape)} and boards {tuple(boards.shape)} differ")
    n = features.shape[0]
    if fit is None:
        fit = torch.arange(n) < n // 2
    fit = fit.cpu().bool()
    if fit.shape != (n,) or int(fit.sum()) < 2 or int((~fit).sum()) < 2:
        raise DataError(f"board metrics need at least 2 fit and 2 scored positions of {n}")
    feats = features.detach().to("cpu", torch.float32)
    labels = bsp_labels(boards.cpu(), n_states)  # (n, B)
    fit_f, test_f = feats[fit], feats[~fit]
    fit_y, test_y = labels[fit].float(), labels[~fit]
    peak = fit_f.max(dim=0).values  # (F,)
    alive = peak > 0
    fit_f, test_f, peak = fit_f[:, alive], test_f[:, alive], peak[alive]
    per_t = []
    for t in THRESHOLDS:
        on_fit = (fit_f > t * peak).float()  # (fit, F')
        on_test = (test_f > t * peak).float()  # (scored, F')
        # coverage on the scored rows: best F1 of any feature for each BSP
        tp = on_test.T @ test_y.float()  # (F', B)
        pred = on_test.sum(0)[:, None]  # (F', 1)
        actual = test_y.float().sum(0)[None, :]  # (1, B)
        best = _f1(tp, pred - tp, actual - tp).max(dim=0).values if tp.numel() else torch.zeros(labels.shape[1])
        coverage = float(best.mean())  # over all BSPs: one that never occurs scores 0
        # reconstruction: classifiers chosen on the fit rows, boards predicted on the scored rows
        fit_tp = on_fit.T @ fit_y  # (F', B)
        fit_on = on_fit.sum(0)[:, None]  # (F', 1)
        classifies = (fit_tp >= PRECISION * fit_on) & (fit_on >= MIN_ON)  # (F', B)
        predicted = (on_test @ classifies.float()) > 0  # (scored, B)
        rec = _reconstruction_f1(predicted, test_y, n_states)
        per_t.append({"threshold": t, "coverage": coverage, "classifiers": int(classifies.any(1).sum()), **rec})
    best_cov = max(per_t, key=lambda r: (r["coverage"], -r["threshold"]))
    best_rec = max(per_t, key=lambda r: (r["f1_per_square"], -r["threshold"]))
    return {
        "coverage": best_cov["coverage"],
        "coverage_threshold": best_cov["threshold"],
        "reconstruction_f1": best_rec["f1"],
        "reconstruction_f1_per_square": best_rec["f1_per_square"],
        "reconstruction_threshold": best_rec["threshold"],
        "alive_features": int(alive.sum()),
        "positions": n,
        "fit_positions": int(fit.sum()),
        "per_threshold": per_t,
    }


def _reconstruction_f1(predicted: torch.Tensor, truth: torch.Tensor, n_states: int) -> dict[str, float]:
    """F1 of predicted (n, B) against true (n, B) BSPs (B = squares * n_states): per BSP ("per class", the
    headline) and per square (a square with its true state and one false state predicted is no true positive)."""
    n, b = predicted.shape
    tp = float((predicted & truth).sum())
    fp = float((predicted & ~truth).sum())
    fn = float((~predicted & truth).sum())
    pred = predicted.reshape(n, b // n_states, n_states)
    true = truth.reshape(n, b // n_states, n_states)
    # their adjustment, as their code has it: a true positive is dropped where exactly one false state is predicted
    # beside it (with both false states predicted it stays), so the threshold is picked as theirs is
    mixed = float(((pred & true).any(-1) & ((pred & ~true).sum(-1) == 1)).sum())  # (n, squares) summed
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": _f1_of(tp, fp, fn),
        "f1_per_square": _f1_of(tp - mixed, fp, fn),
    }


def _f1_of(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


# --------------------------------------------------------------------------- an Othello run's board section

BOARD_ROWS = 60000
"""Eval positions (rows) whose latents feed the board metrics: every game of the eval split of the default corpus
(`sparsecode othello games`: 20,000 games, 1 in 20 held out, ~59,950 positions), 500 games fitting and 500 scored.
Karvonen et al. fit on 1,000 games and score on 1,000; fewer games make the chosen classifiers noisier."""


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
    # the first half of the games fit, the other half is scored (a single game: its first half of positions)
    fit = game_row < len(docs) // 2 if len(docs) > 1 else None  # (n,)
    out["sae"] = board_metrics(latents, boards, fit=fit)
    neurons = _mlp_neurons(source, docs, doc_ids, positions)
    out["neurons"] = (
        board_metrics(neurons, boards, fit=fit) if neurons is not None else {"skipped": "no MLP module found"}
    )
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
