"""Gemma Scope: ``params.npz`` with W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec and threshold (the
released files; lower-case ``w_`` names are accepted too). A JumpReLU that does not subtract ``b_dec`` before
encoding: folded into ``b_enc``. Read with ``numpy.load(allow_pickle=False)``.

The released repositories name what they hold: ``google/gemma-scope-2b-pt-res`` (residual stream, block output),
``-mlp`` (MLP output), ``-att`` (attention heads' outputs, before the output projection), and folders
``layer_20/width_16k/average_l0_71``; both give the hook and the model when present in the path or hub id.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..sae import JumpReLUConfig
from .common import ImportedDictionary, assemble, centred_bias, check_shape, finite, log_threshold, unit_rows

WEIGHTS_FILE = "params.npz"
KINDS = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}
MODELS = {"2b-pt": "google/gemma-2-2b", "9b-pt": "google/gemma-2-9b", "27b-pt": "google/gemma-2-27b"}
MODELS.update({"9b-it": "google/gemma-2-9b-it"})


def weights_file(path: Path) -> Path:
    return path if path.name == WEIGHTS_FILE else path / WEIGHTS_FILE


def looks_like(path: Path) -> bool:
    return weights_file(path).is_file()


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {
                ("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(np.asarray(data[k], dtype=np.float32))
                for k in data.files
            }
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable .npz file ({first})") from None


def read(path: Path, hint: str | None = None) -> ImportedDictionary:
    """Read params.npz; ``hint`` (a hub id with subfolder) helps name the hook and model when the path does not."""
    file = weights_file(path)
    if not file.is_file():
        raise DataError(f"{file}: file not found")
    where = str(file)
    t = _load(file)
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in t]
    if missing:
        raise DataError(f"{where}: missing array(s) {', '.join(missing)}")
    finite(t, where)
    if t["W_enc"].ndim != 2:
        raise DataError(f"{where}: W_enc must be 2-D (d_in, d_sae), got shape {tuple(t['W_enc'].shape)}")
    d_in, n = t["W_enc"].shape
    config = f"W_enc's shape ({d_in}, {n})"
    check_shape(t["W_dec"], (n, d_in), "W_dec", where, config)
    check_shape(t["b_enc"], (n,), "b_enc", where, config)
    check_shape(t["b_dec"], (d_in,), "b_dec", where, config)
    check_shape(t["threshold"], (n,), "threshold", where, config)
    state = {"W_enc": t["W_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    state["b_enc"] = centred_bias(t["W_enc"], t["b_enc"], t["b_dec"])
    state["log_threshold"] = log_threshold(t["threshold"])
    sae = assemble(
        JumpReLUConfig(d_in=d_in, n_latents=n, unit_norm_decoder=unit_rows(t["W_dec"]), relative_threshold=False),
        state,
        where,
    )
    hook, model = names_from(f"{hint or ''}/{file.parent.as_posix()}")
    return ImportedDictionary(
        sae=sae,
        format="gemmascope",
        path=file.parent,
        hook=hook,
        model=model,
        notes=["folded b_dec @ W_enc into b_enc (Gemma Scope does not subtract b_dec from its input)"],
    )


def names_from(text: str) -> tuple[str | None, str | None]:
    """(TransformerLens hook, hub model id) named by a Gemma Scope repository and folder path, each None if not."""
    layer = re.search(r"layer_(\d+)", text)
    repo = re.search(r"gemma-scope-(\d+b-(?:pt|it))-(res|mlp|att)", text)
    hook = f"blocks.{layer.group(1)}.{KINDS[repo.group(2)]}" if layer and repo else None
    return hook, (MODELS.get(repo.group(1)) if repo else None)
