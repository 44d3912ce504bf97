"""How well a learned dictionary recovers known ground-truth feature directions (synthetic data)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError


def _unit_rows(m: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, in float64 (zero rows stay zero)."""
    m = m.detach().to("cpu", torch.float64)
    return m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)


def max_cosines(learned: torch.Tensor, true: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """(F,) for each true feature i: max_j cos(true_i, learned_j).

    ``learned`` is (m, d), ``true`` is (F, d). The (F, m) similarity matrix is built ``chunk_size``
    true rows at a time, so memory is chunk_size × m.
    """
    if learned.ndim != 2 or true.ndim != 2 or learned.shape[1] != true.shape[1]:
        raise DataError(f"dictionary shapes do not match: learned {tuple(learned.shape)}, true {tuple(true.shape)}")
    if learned.shape[0] == 0 or true.shape[0] == 0:
        raise DataError("dictionary comparison needs at least one learned and one true feature")
    learned_u = _unit_rows(learned)  # (m, d)
    true_u = _unit_rows(true)  # (F, d)
    out = []
    for start in range(0, true_u.shape[0], chunk_size):
        sims = true_u[start : start + chunk_size] @ learned_u.T  # (chunk, m)
        out.append(sims.max(dim=1).values)
    return torch.cat(out)  # (F,)


def mmcs(learned: torch.Tensor, true: torch.Tensor, chunk_size: int = 1024) -> float:
    """Mean max cosine similarity: (1/F) Σ_i max_j cos(true_i, learned_j).

    ``learned`` (m, d), ``true`` (F, d); rows are normalised first. 1.0 means every true feature
    has an exactly aligned learned direction. Signed cosine: an anti-aligned direction does not count.
    """
    return float(max_cosines(learned, true, chunk_size).mean())


def recovery_fraction(
    learned: torch.Tensor, true: torch.Tensor, threshold: float = 0.9, chunk_size: int = 1024
) -> float:
    """Fraction of true features recovered: (1/F) #{i : max_j cos(true_i, learned_j) ≥ threshold}."""
    return float((max_cosines(learned, true, chunk_size) >= threshold).to(torch.float64).mean())


def random_mmcs_baseline(d: int, m: int, grid: int = 200_001) -> float:
    """Expected MMCS of ``m`` independent uniformly random unit directions in R^d (d ≥ 2).

    The cosine t between a fixed unit vector and a uniform random one has density
    p(t) ∝ (1 − t²)^((d−3)/2) on [−1, 1], so the max of m such cosines has CDF F(t)^m and
    E[max] = ∫₋₁¹ t · d(F(t)^m) = 1 − ∫₋₁¹ F(t)^m dt, evaluated here by numerical integration.
    """
    if d < 2 or m < 1:
        raise ValueError("random_mmcs_baseline needs d >= 2 and m >= 1")
    t = np.linspace(-1.0, 1.0, grid)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = 0.5 * (d - 3) * np.log1p(-(t**2))  # unnormalised log-density
    log_p[~np.isfinite(log_p)] = -np.inf if d > 3 else 0.0
    p = np.exp(log_p - np.max(log_p[np.isfinite(log_p)]))
    if d == 2:  # density ∝ (1 − t²)^(−1/2) is infinite at ±1; use the arcsine CDF directly
        cdf = 1.0 - np.arccos(t) / math.pi
    else:
        cdf = np.concatenate([[0.0], np.cumsum((p[1:] + p[:-1]) * 0.5 * np.diff(t))])
        cdf /= cdf[-1]
    cdf_m = cdf**m
    integral = float(np.sum((cdf_m[1:] + cdf_m[:-1]) * 0.5 * np.diff(t)))
    return 1.0 - integral


def match_features(
    learned: torch.Tensor, true: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each true feature i, the learned row j* = argmax_j cos(true_i, learned_j) and that cosine.

    ``learned`` (m, d), ``true`` (F, d). Returns (indices (F,) int64, cosines (F,) float64). The matching
    is by *decoder direction* (many true features may share one learned row), not by activations.
    """
    max_cosines(learned, true, chunk_size)  # shape checks
    learned_u, true_u = _unit_rows(learned), _unit_rows(true)
    idx, cos = [], []
    for start in range(0, true_u.shape[0], chunk_size):
        best = (true_u[start : start + chunk_size] @ learned_u.T).max(dim=1)  # (chunk,)
        idx.append(best.indices)
        cos.append(best.values)
    return torch.cat(idx), torch.cat(cos)


class FeatureF1:
    """Streaming precision / recall / F1 of "matched latent fires" against "true feature is active".

    Built from ``match`` (F,): the latent matched to each true feature (see :func:`match_features`).
    Per row and true feature i, with c the true code and f the latent activations:
    predicted = f[match_i] > 0, actual = c_i > 0. Over all rows,
    precision_i = TP/(TP+FP), recall_i = TP/(TP+FN), F1_i = 2TP/(2TP+FP+FN) (0 when the denominator is 0).
    """

    def __init__(self, match: torch.Tensor) -> None:
        self.match = match.to(torch.long)
        n = match.shape[0]
        self.tp = torch.zeros(n, dtype=torch.int64)
        self.fp = torch.zeros(n, dtype=torch.int64)
        self.fn = torch.zeros(n, dtype=torch.int64)

    @torch.inference_mode()
    def update(self, codes: torch.Tensor, latents: torch.Tensor) -> None:
        """Add rows: ``codes`` (n, F) true activations, ``latents`` (n, m) the SAE's activations."""
        if codes.ndim != 2 or codes.shape[1] != self.match.shape[0] or codes.shape[0] != latents.shape[0]:
            raise DataError(
                f"true codes have shape {tuple(codes.shape)}; expected ({latents.shape[0]}, {self.match.shape[0]})"
            )
        actual = codes.detach().cpu() > 0  # (n, F)
        predicted = latents.detach().cpu()[:, self.match] > 0  # (n, F)
        self.tp += (actual & predicted).sum(0)
        self.fp += (~actual & predicted).sum(0)
        self.fn += (actual & ~predicted).sum(0)

    def per_feature(self) -> dict[str, torch.Tensor]:
        """(F,) float64 precision, recall and F1 of every true feature."""
        tp, fp, fn = (t.to(torch.float64) for t in (self.tp, self.fp, self.fn))
        return {
            "precision": tp / (tp + fp).clamp_min(1),
            "recall": tp / (tp + fn).clamp_min(1),
            "f1": 2 * tp / (2 * tp + fp + fn).clamp_min(1),
        }

    def result(self) -> dict[str, float]:
        """Means over true features that were active at least once: ``precision``, ``recall``, ``f1``."""
        seen = (self.tp + self.fn) > 0  # (F,)
        if not seen.any():
            raise DataError("feature F1: no true feature was active on the evaluated rows")
        out = {name: float(v[seen].mean()) for name, v in self.per_feature().items()}
        out["features_seen"] = int(seen.sum())
        return out
