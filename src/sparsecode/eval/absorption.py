"""First-letter feature absorption (after Chanin et al. 2024, "A is for Absorption", as scored in SAEBench).

Absorption: the SAE has latents that mean "starts with L", yet on some L-words they stay silent
because a more specific latent (e.g. one for the token "short") has absorbed the "starts with S"
direction into its own decoder vector. A linear probe on the model's activation still sees the letter.

Definition used here, for each letter L with enough held-out word-start tokens:

1. Probe: "first letter is L" vs other word-start alphabetic tokens, on the hooked activation (all
   coordinates), fitted on training tokens: direction p_L = unit(Σ⁻¹(μ_L − μ_other)) (linear
   discriminant, Σ the covariance of the training tokens plus a small ridge), and a 1-D logistic
   regression on x · p_L decides "probe says L".
2. Main latents: SAE latents ranked by standardised class-mean difference; k-sparse probes for
   k = 1 .. ``max_main``; the main set is the top k latents for the smallest k whose F1 the next
   latent improves by less than ``split_threshold`` (SAEBench's feature-splitting rule).
3. Among held-out L tokens that the probe classifies correctly, a token is *absorbed* when no main
   latent fires and the firing latent with the largest contribution f_j · (W_dec_j · p_L) to the
   probe direction is a non-main latent j with cos(W_dec_j, p_L) ≥ ``cos_threshold`` whose
   contribution is at least ``min_share`` × the token's letter signal (x − μ_other) · p_L, with μ_other
   the mean training activation of the other letters' tokens (so a latent that merely grazes the
   direction does not count).

``absorption_rate`` for L = absorbed tokens / probe-correct L tokens; the score is the mean over letters.
``main_miss_rate`` (no main latent fires, absorbed or not) is reported alongside.
"""

from __future__ import annotations

from typing import Any

import torch

from .logistic import binary_scores, fit_logistic, rank_by_mean_difference
from .probing import LETTERS, split_train_test


def lda_directions(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """(C, d) unit directions Σ⁻¹(μ₁ − μ₀) per problem: ``x`` (n, d), ``y`` (C, n) bool, ``w`` (C, n) row weights.

    Σ is the covariance of every row any problem uses (one d×d solve for all problems) plus ``ridge`` ×
    its mean diagonal; for two classes Σ⁻¹(μ₁ − μ₀) with the total covariance points the same way as
    Fisher's discriminant with the within-class covariance.
    """
    x = x.to(torch.float64)
    w = w.to(torch.float64)
    pos, neg = w * y.to(torch.float64), w * (1 - y.to(torch.float64))  # (C, n)
    mu1 = pos @ x / pos.sum(1, keepdim=True).clamp_min(1e-12)  # (C, d)
    mu0 = neg @ x / neg.sum(1, keepdim=True).clamp_min(1e-12)  # (C, d)
    rows = w.max(0).values > 0  # (n,) rows used by any problem
    xc = x[rows] - x[rows].mean(0)
    cov = xc.T @ xc / max(int(rows.sum()), 1)  # (d, d)
    cov = cov + ridge * float(cov.diagonal().mean()) * torch.eye(cov.shape[0], dtype=cov.dtype)
    d = torch.linalg.solve(cov, (mu1 - mu0).T).T  # (C, d)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


def feature_absorption(
    residual: torch.Tensor,
    latents: torch.Tensor,
    w_dec: torch.Tensor,
    letter: torch.Tensor,
    doc_ids: torch.Tensor,
    min_tokens: int = 10,
    max_main: int = 8,
    split_threshold: float = 0.03,
    cos_threshold: float = 0.025,
    min_share: float = 0.5,
) -> dict[str, Any]:
    """Absorption of first-letter concepts (see the module docstring for the exact definition).

    ``residual`` (n, d) hooked activations, ``latents`` (n, m) SAE activations, ``w_dec`` (m, d)
    decoder rows, ``letter`` (n,) first-letter index 0..25 of word-start tokens (−1: other tokens),
    ``doc_ids`` (n,) for the train/test split. Letters with fewer than ``min_tokens`` tokens on the
    train or the test side (or fewer negatives) are skipped.
    """
    train = split_train_test(doc_ids)
    words = letter >= 0  # only word-start alphabetic tokens take part: drop the others up front
    residual, latents, letter, train = residual[words], latents[words], letter[words], train[words]
    words = words[words]
    present = [
        i
        for i in range(len(LETTERS))
        if min(
            int(((letter == i) & train).sum()),
            int(((letter == i) & ~train).sum()),
            int(((letter != i) & words & train).sum()),
        )
        >= min_tokens
    ]
    result: dict[str, Any] = {
        "cos_threshold": cos_threshold,
        "split_threshold": split_threshold,
        "min_share": min_share,
        "letters": {},
        "skipped": [LETTERS[i] for i in range(len(LETTERS)) if i not in present],
    }
    if not present:
        result.update(absorption_rate=None, main_miss_rate=None)
        return result
    y = torch.stack([letter == i for i in present])  # (C, n)
    w_train = (words & train).to(torch.float64).expand(len(present), -1)  # (C, n): word-start tokens only
    w_test = (words & ~train).to(torch.float64).expand(len(present), -1)

    # 1. probe directions on the full activation: linear discriminant directions, calibrated by 1-D logistic fits
    p = lda_directions(residual, y, w_train)  # (C, d) unit rows
    proj = (residual.to(torch.float64) @ p.T).T[..., None]  # (C, n, 1)
    probe_right = fit_logistic(proj, y, w_train).decision(proj) > 0  # (C, n)

    # 2. main latents by k-sparse probing with the feature-splitting rule
    top = rank_by_mean_difference(latents, y, w_train).topk(max_main + 1, dim=1).indices  # (C, max_main+1)
    f1 = []
    for k in range(1, max_main + 2):
        xk = latents.T[top[:, :k]].transpose(1, 2)  # (C, n, k)
        fit = fit_logistic(xk, y, w_train)
        f1.append(binary_scores(fit.decision(xk) > 0, y, w_test)["f1"])
    f1 = torch.stack(f1, dim=1)  # (C, max_main+1)
    gain = f1[:, 1:] - f1[:, :-1]  # (C, max_main)
    small = gain < split_threshold
    n_main = torch.where(
        small.any(1), small.to(torch.int64).argmax(1) + 1, torch.full_like(small[:, 0], max_main, dtype=torch.int64)
    )

    # 3. absorbed tokens among probe-correct held-out tokens
    dec = w_dec.detach().to(torch.float64)
    dec_cos = (dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ p.T  # (m, C)
    dec_proj = dec @ p.T  # (m, C)
    rates, misses = [], []
    for c, i in enumerate(present):
        main = top[c, : int(n_main[c])]
        rows = torch.nonzero(y[c] & ~train & probe_right[c]).flatten()
        f = latents[rows].to(torch.float64)  # (r, m)
        main_fires = (f[:, main] > 0).any(1)  # (r,)
        contrib = f * dec_proj[:, c]  # (r, m)
        contrib[:, main] = float("-inf")
        contrib[f <= 0] = float("-inf")
        best_val, best = contrib.max(1)  # (r,)
        other = (letter != i) & words & train
        signal = (residual[rows].to(torch.float64) - residual[other].to(torch.float64).mean(0)) @ p[c]  # (r,)
        absorbed = ~main_fires & (best_val > 0) & (best_val >= min_share * signal) & (dec_cos[best, c] >= cos_threshold)
        n = max(rows.numel(), 1)
        rates.append(float(absorbed.sum()) / n)
        misses.append(float((~main_fires).sum()) / n)
        result["letters"][LETTERS[i]] = {
            "absorption_rate": rates[-1],
            "main_miss_rate": misses[-1],
            "probe_correct_tokens": int(rows.numel()),
            "main_latents": main.tolist(),
            "main_f1": float(f1[c, int(n_main[c]) - 1]),
        }
    result["absorption_rate"] = sum(rates) / len(rates)
    result["main_miss_rate"] = sum(misses) / len(misses)
    return result
