"""Are a dictionary's image atoms V1-like? A 2-D Gabor fit per atom, the share that fits, coefficient kurtosis.

A Gabor is a plane wave under a Gaussian envelope, both rotated by ``theta``::

    u =  (x - x0) cos(theta) + (y - y0) sin(theta)       # across the stripes
    v = -(x - x0) sin(theta) + (y - y0) cos(theta)       # along the stripes
    g(x, y) = amp * exp(-u^2 / (2 sigma_u^2) - v^2 / (2 sigma_v^2)) * cos(2 pi freq u + phase)

(x = column, y = row, in pixels). ``orientation`` is theta mod pi in degrees (the direction the wave varies
in; 0 = vertical stripes), ``frequency`` in cycles per pixel, ``sigma_u`` / ``sigma_v`` the envelope's
standard deviations in pixels. An atom is *Gabor-like* (localized, oriented, bandpass) when the fit explains
at least ``GABOR_R2`` of its variance, as in the sparse-coding literature's comparisons with V1 simple cells.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

GABOR_R2 = 0.8
"""R² at or above which an atom counts as Gabor-like."""
PARAMS = ("amp", "x0", "y0", "theta", "sigma_u", "sigma_v", "freq", "phase")


def gabor(params: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) Gabor image for ``params`` in the order of ``PARAMS``."""
    amp, x0, y0, theta, su, sv, freq, phase = params
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    u = (xx - x0) * c + (yy - y0) * s
    v = -(xx - x0) * s + (yy - y0) * c
    return amp * np.exp(-0.5 * (u / su) ** 2 - 0.5 * (v / sv) ** 2) * np.cos(2 * math.pi * freq * u + phase)


def _starts(atom: np.ndarray) -> list[np.ndarray]:
    """Initial guesses: carrier from the peak of the zero-padded spectrum, centre and size from the energy."""
    h, w = atom.shape
    n = 4 * max(h, w)
    spec = np.abs(np.fft.rfft2(atom, s=(n, n)))  # (n, n//2 + 1)
    ky, kx = np.unravel_index(int(np.argmax(spec)), spec.shape)
    fy, fx = (ky if ky <= n // 2 else ky - n) / n, kx / n  # cycles per pixel
    freq, theta = math.hypot(fx, fy), math.atan2(fy, fx)
    energy = atom**2 / max(float((atom**2).sum()), 1e-30)
    yy, xx = np.mgrid[0:h, 0:w]
    y0, x0 = float((energy * yy).sum()), float((energy * xx).sum())
    spread = math.sqrt(max(float((energy * ((yy - y0) ** 2 + (xx - x0) ** 2)).sum()) / 2, 0.25))
    amp = float(np.abs(atom).max())
    starts = []
    for sigma in (spread, 0.6 * spread):
        for phase in (0.0, math.pi / 2):  # amp is signed, so these two cover every phase
            starts.append(np.array([amp, x0, y0, theta, sigma, sigma, freq, phase]))
    return starts


def fit_gabor(atom: np.ndarray) -> dict[str, float]:
    """Least-squares 2-D Gabor fit of one (H, W) atom from several starts; the best fit's parameters and R²."""
    from scipy.optimize import least_squares

    atom = np.asarray(atom, dtype=np.float64)
    h, w = atom.shape
    total = float(((atom - atom.mean()) ** 2).sum())
    if not np.isfinite(total) or total <= 0:
        return {"r2": float("nan")}
    scale = float(np.abs(atom).max())
    target = atom / scale  # fit at unit scale: the tolerances then mean the same for every atom
    big = 2.0 * max(h, w)
    lower = [-np.inf, -0.5 * w, -0.5 * h, -np.inf, 0.4, 0.4, 0.0, -np.inf]
    upper = [np.inf, 1.5 * w, 1.5 * h, np.inf, big, big, 0.5, np.inf]
    best = None
    for p0 in _starts(target):
        p0 = np.clip(p0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        res = least_squares(
            lambda p: (gabor(p, (h, w)) - target).ravel(), p0, bounds=(lower, upper), max_nfev=200, method="trf"
        )
        if best is None or res.cost < best.cost:
            best = res
    p = best.x
    r2 = 1.0 - 2.0 * best.cost * scale**2 / total
    amp, x0, y0, theta, su, sv, freq, phase = (float(v) for v in p)
    return {
        "r2": float(r2),
        "orientation": math.degrees(theta % math.pi),
        "frequency": freq,
        "sigma_u": su,
        "sigma_v": sv,
        "x0": x0,
        "y0": y0,
        "phase": phase % (2 * math.pi),
        "amp": amp * scale,
    }


def excess_kurtosis(x: torch.Tensor) -> float:
    """Excess kurtosis E[(x-m)^4] / var^2 - 3 of all values of ``x`` (0 for a Gaussian; large when sparse)."""
    x = x.detach().to("cpu", torch.float64).flatten()
    centered = x - x.mean()
    var = float((centered**2).mean())
    return float((centered**4).mean()) / var**2 - 3.0 if var > 0 else float("nan")


def image_atom_metrics(
    decoder: torch.Tensor, patch_shape: tuple[int, int], density: torch.Tensor, coefficients: torch.Tensor
) -> dict[str, Any]:
    """The ``images`` section of eval.json: a Gabor fit of every live atom and the coefficients' kurtosis.

    ``decoder`` (n_latents, H*W) rows are atoms; ``density`` (n_latents,) firing rates on the eval rows (live:
    > 0); ``coefficients`` (n_rows, n_latents) the latent activations on (a sample of) the eval rows.
    """
    live = torch.nonzero(density > 0).flatten().tolist()
    atoms = decoder.detach().to("cpu", torch.float64).numpy()
    fits = [{"latent": i, **fit_gabor(atoms[i].reshape(patch_shape))} for i in live]
    r2 = np.array([f["r2"] for f in fits], dtype=np.float64)
    gabor_like = int(np.sum(r2 >= GABOR_R2))
    per_latent = [excess_kurtosis(coefficients[:, i]) for i in live]
    return {
        "patch_shape": list(patch_shape),
        "live_atoms": len(live),
        "gabor_r2_threshold": GABOR_R2,
        "gabor_like": gabor_like,
        "gabor_like_fraction": gabor_like / len(live) if live else float("nan"),
        "median_r2": float(np.nanmedian(r2)) if len(r2) else float("nan"),
        "coefficient_kurtosis": excess_kurtosis(coefficients[:, live]) if live else float("nan"),
        "median_latent_kurtosis": float(np.nanmedian(per_latent)) if per_latent else float("nan"),
        "atoms": fits,
    }
