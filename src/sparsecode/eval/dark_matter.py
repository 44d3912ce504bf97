"""Dark matter (after Engels et al. 2024, "Decomposing The Dark Matter of Sparse Autoencoders"):
how much of an SAE's reconstruction error is a *linear* function of its input.

If e = x − x̂ were pure noise, no linear map of x could predict it. A large linearly predictable
share means the SAE systematically misses directions that are present in x (and that a wider
dictionary or a linear skip path could capture); the remainder is "nonlinear" error.
"""

from __future__ import annotations

import torch

from ..errors import DataError


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ≈ x @ A + c with penalty ridge·n·‖A‖² on the centred data; returns (A, c)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc  # (d, d)
    scale = float(gram.diagonal().mean()) if gram.numel() else 1.0
    gram = gram + ridge * max(scale, 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    a = torch.linalg.solve(gram, xc.T @ yc)  # (d, k)
    return a, my - mx @ a


def dark_matter(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    n_fit: int | None = None,
    ridge: float = 1e-4,
    target: torch.Tensor | None = None,
) -> dict[str, float]:
    """Fit linear maps from the input to the SAE error on the first ``n_fit`` rows (default: half) and
    score them on the remaining (held-out) rows.

    ``x`` (n, d) inputs, ``x_hat`` (n, d) reconstructions, e = x − x̂ (or ``target`` − x̂ when the
    dictionary predicts a separate target, e.g. a transcoder; x̄ below is then the target's mean). On held-out rows, with ê the
    linear prediction of e from x (ridge regression with penalty ``ridge`` × mean diagonal of XᵀX),
    ē the held-out mean error and x̄ the held-out mean input:

    - ``error_linear_r2`` = 1 − Σ‖e − ê‖² / Σ‖e − ē‖²: share of the error's variance that a linear
      map of x predicts;
    - ``error_norm_r2`` = 1 − Σ(‖e‖ − n̂)² / Σ(‖e‖ − mean ‖e‖)², with n̂ a separate linear prediction
      of the scalar ‖e‖ from x: how predictable the error's size is;
    - ``linear_error_fvu`` = Σ‖ê − ē‖² / Σ‖x − x̄‖² and ``nonlinear_error_fvu`` = Σ‖e − ê‖² / Σ‖x − x̄‖²:
      the SAE's error split into a linearly predictable and a nonlinear part, both as fractions of
      the input's variance (they add up to about the held-out FVU, with ``total_error_fvu`` = Σ‖e − ē‖² / Σ‖x − x̄‖²);
    - ``n_fit`` and ``n_heldout`` rows.
    """
    y = x if target is None else target
    if x.ndim != 2 or y.shape[0] != x.shape[0] or x_hat.shape != y.shape:
        raise DataError(
            f"dark matter: input {tuple(x.shape)}, target {tuple(y.shape)} and reconstruction "
            f"{tuple(x_hat.shape)} do not line up"
        )
    n = x.shape[0]
    n_fit = n // 2 if n_fit is None else n_fit
    if n_fit < x.shape[1] + 2 or n - n_fit < 2:
        raise DataError(
            f"dark matter needs more rows than dimensions to fit a linear map: {n} rows for width "
            f"{x.shape[1]}; evaluate more rows"
        )
    x = x.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu", torch.float64)
    e = y - x_hat.detach().to("cpu", torch.float64)  # (n, d_out)
    norm = e.norm(dim=1, keepdim=True)  # (n, 1)
    a, c = _ridge(x[:n_fit], torch.cat([e[:n_fit], norm[:n_fit]], dim=1), ridge)
    pred = x[n_fit:] @ a + c  # (n_test, d + 1)
    e_test, e_pred = e[n_fit:], pred[:, :-1]
    n_test, n_pred = norm[n_fit:, 0], pred[:, -1]
    x_var = float(((y[n_fit:] - y[n_fit:].mean(0)) ** 2).sum())
    e_var = float(((e_test - e_test.mean(0)) ** 2).sum())
    resid = float(((e_test - e_pred) ** 2).sum())
    norm_var = float(((n_test - n_test.mean()) ** 2).sum())
    return {
        "error_linear_r2": 1.0 - resid / e_var if e_var > 0 else float("nan"),
        "error_norm_r2": 1.0 - float(((n_test - n_pred) ** 2).sum()) / norm_var if norm_var > 0 else float("nan"),
        "linear_error_fvu": float(((e_pred - e_test.mean(0)) ** 2).sum()) / x_var if x_var > 0 else float("nan"),
        "nonlinear_error_fvu": resid / x_var if x_var > 0 else float("nan"),
        "total_error_fvu": e_var / x_var if x_var > 0 else float("nan"),
        "n_fit": n_fit,
        "n_heldout": n - n_fit,
    }
