"""Batched L2-regularised logistic regression and k-sparse probes, in plain torch (Newton's method).

Many small probes (one per concept, per k, per representation) are fitted at once: problem c has its
own design matrix ``X[c]`` (n, k) and row weights ``w[c]`` (n,) — a weight of 0 leaves a row out, so
problems of different sizes share one padded tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-12


@dataclass
class LogisticFit:
    """Fitted probes on standardised inputs: p(y=1 | x) = sigmoid(((x − mean) / std) · coef + bias)."""

    coef: torch.Tensor
    """(C, k) float64 weights on the standardised features."""
    bias: torch.Tensor
    """(C,) float64 intercepts."""
    mean: torch.Tensor
    """(C, k) feature means over each problem's training rows."""
    std: torch.Tensor
    """(C, k) feature standard deviations over each problem's training rows (constant features: 1)."""

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """(C, n) logits for inputs ``x`` (C, n, k)."""
        z = (x.to(torch.float64) - self.mean[:, None]) / self.std[:, None]  # (C, n, k)
        return (z * self.coef[:, None]).sum(-1) + self.bias[:, None]

    def raw_direction(self) -> torch.Tensor:
        """(C, k) the weight vector in the original (unstandardised) coordinates: coef / std."""
        return self.coef / self.std


def weighted_moments(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem weighted mean and std of ``x`` (C, n, k) under row weights ``w`` (C, n); std 0 → 1."""
    x = x.to(torch.float64)
    w = w.to(torch.float64)
    total = w.sum(1).clamp_min(EPS)[:, None]  # (C, 1)
    mean = torch.einsum("cn,cnk->ck", w, x) / total  # (C, k)
    var = torch.einsum("cn,cnk->ck", w, (x - mean[:, None]) ** 2) / total  # (C, k)
    std = var.sqrt()
    return mean, torch.where(std > 1e-9, std, torch.ones_like(std))


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, l2: float = 1e-3, iters: int = 50, tol: float = 1e-7
) -> LogisticFit:
    """Fit C independent probes by damped Newton's method.

    ``x`` (C, n, k) features, ``y`` (C, n) labels in {0, 1}, ``w`` (C, n) non-negative row weights.
    Each problem minimises  Σ_i w_i · BCE(σ(z_i·β + b), y_i) / Σ_i w_i  +  (l2 / 2)·‖β‖²  with z the
    features standardised by their weighted mean and std (so ``l2`` means the same at every scale).
    The objective is strictly convex; each Newton step is halved until the objective does not rise;
    iteration stops when no problem's objective improves by more than ``tol``.
    """
    # each problem keeps only its own weighted rows (padded with weight-0 rows to the largest count):
    # rows a problem does not use cost time and change nothing
    order = torch.sort((w > 0).to(torch.int8), dim=1, descending=True, stable=True).indices  # (C, n)
    order = order[:, : max(int((w > 0).sum(1).max()), 1)]  # (C, n_used)
    x = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[2]))
    y, w = torch.gather(y, 1, order), torch.gather(w, 1, order)
    n_prob, _, k = x.shape
    mean, std = weighted_moments(x, w)
    z = (x.to(torch.float64) - mean[:, None]) / std[:, None]  # (C, n, k)
    z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)  # (C, n, k+1): last column is the intercept
    y = y.to(torch.float64)
    w = w.to(torch.float64)
    w = w / w.sum(1, keepdim=True).clamp_min(EPS)  # (C, n) sums to 1 per problem
    reg = torch.full((k + 1,), l2, dtype=torch.float64)
    reg[-1] = 1e-8  # the intercept is (almost) unpenalised
    beta = torch.zeros(n_prob, k + 1, dtype=torch.float64)

    def objective(b: torch.Tensor) -> torch.Tensor:
        logits = (z * b[:, None]).sum(-1)  # (C, n)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return (w * bce).sum(1) + 0.5 * (reg * b**2).sum(1)  # (C,)

    loss = objective(beta)
    for _ in range(iters):
        p = torch.sigmoid((z * beta[:, None]).sum(-1))  # (C, n)
        grad = torch.einsum("cn,cnk->ck", w * (p - y), z) + reg * beta  # (C, k+1)
        hess = torch.einsum("cn,cni,cnj->cij", w * p * (1 - p), z, z) + torch.diag(reg)  # (C, k+1, k+1)
        step = torch.linalg.solve(hess, grad[..., None])[..., 0]  # (C, k+1)
        scale = torch.ones(n_prob, dtype=torch.float64)
        new_beta, new_loss = beta - step, objective(beta - step)
        for _ in range(20):  # halve the step wherever the objective went up
            worse = new_loss > loss + 1e-15
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
            new_beta = beta - scale[:, None] * step
            new_loss = objective(new_beta)
        improvement = (loss - new_loss).abs().max()
        beta, loss = new_beta, torch.minimum(new_loss, loss)
        if improvement < tol:
            break
    return LogisticFit(coef=beta[:, :-1], bias=beta[:, -1], mean=mean, std=std)


def binary_scores(pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy, precision, recall, F1 per problem over rows with weight > 0.

    ``pred``, ``y``: (C, n) bool; ``w``: (C, n) row weights (only > 0 vs 0 matters). Each is (C,) float64;
    precision (recall) is 0 when nothing is predicted (present).
    """
    m = (w > 0).to(torch.float64)
    pred, y = pred.to(torch.float64) * m, y.to(torch.float64) * m
    tp = (pred * y).sum(1)
    fp = (pred * (1 - y) * m).sum(1)
    fn = ((1 - pred) * y * m).sum(1)
    n = m.sum(1).clamp_min(1)
    correct = (m * (pred == y).to(torch.float64)).sum(1)
    precision = tp / (tp + fp).clamp_min(1)
    recall = tp / (tp + fn).clamp_min(1)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    return {"accuracy": correct / n, "precision": precision, "recall": recall, "f1": f1}


def rank_by_mean_difference(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """(C, d) score of each feature for each problem: |mean(x | y=1) − mean(x | y=0)| / std(x).

    ``x`` (n, d) shared features, ``y`` (C, n) labels, ``w`` (C, n) row weights (training rows > 0).
    Means and std are weighted by ``w``; a constant feature scores 0. Sorting this score is the cheap
    first stage of a k-sparse probe (Gurnee et al. 2023 rank by class-mean difference).
    """
    w = w.to(torch.float64)
    pos, neg = w * y.to(torch.float64), w * (1 - y.to(torch.float64))  # (C, n)
    pos = pos / pos.sum(1, keepdim=True).clamp_min(EPS)
    neg = neg / neg.sum(1, keepdim=True).clamp_min(EPS)
    tot = w / w.sum(1, keepdim=True).clamp_min(EPS)
    out = []
    for start in range(0, x.shape[1], block):  # column blocks bound the float64 copy of a wide x
        xb = x[:, start : start + block].to(torch.float64)  # (n, b)
        mu = tot @ xb  # (C, b)
        std = ((tot @ xb**2) - mu**2).clamp_min(0).sqrt()
        score = (pos @ xb - neg @ xb).abs() / std.clamp_min(EPS)
        out.append(torch.where(std > 1e-9, score, torch.zeros_like(score)))
    return torch.cat(out, dim=1)  # (C, d)
