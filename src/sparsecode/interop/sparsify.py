"""EleutherAI sparsify: one folder per hook point (named after the module, relative to the base model, e.g. ``h.6``
or ``layers.6.mlp``), each with ``cfg.json`` and ``sae.safetensors`` holding ``encoder.weight`` (M, d),
``encoder.bias``, ``W_dec`` (M, d), ``b_dec`` and, with a skip connection, ``W_skip`` (d, d) applied as
``x @ W_skip.T``.

A SparseCoder subtracts ``b_dec`` before encoding unless it transcodes; its activation is TopK (ReLU then top k).
Transcoders read the module's input and predict its output. The ``groupmax`` activation has no sparsecode equivalent
and is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..io import load_tensors, read_json, save_tensors, write_json
from ..sae import SparseAutoencoder, TopKConfig, TranscoderConfig
from .common import ImportedDictionary, as_float, assemble, centred_bias, check_shape, finite, positive_int, require

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def looks_like_hook_folder(path: Path) -> bool:
    if not (path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        cfg = read_json(path / CFG_FILE)
    except DataError:
        return False
    return "k" in cfg and ("num_latents" in cfg or "expansion_factor" in cfg)


def hook_folders(path: Path) -> list[Path]:
    """The hook-point folders in a sparsify save folder (or the folder itself if it is one)."""
    if looks_like_hook_folder(path):
        return [path]
    return sorted(p for p in path.iterdir() if looks_like_hook_folder(p)) if path.is_dir() else []


def looks_like(path: Path) -> bool:
    return bool(hook_folders(path))


def read(path: Path) -> ImportedDictionary:
    """Read one hook point: ``path`` is its folder, or a save folder holding exactly one."""
    folders = hook_folders(path)
    if not folders:
        for f in (CFG_FILE, WEIGHTS_FILE):
            if not (path / f).is_file():
                raise DataError(f"{path / f}: file not found (a sparsify folder holds {CFG_FILE} and {WEIGHTS_FILE})")
        raise DataError(f"{path / CFG_FILE}: not a sparsify config (no 'k' and 'num_latents' or 'expansion_factor')")
    if len(folders) > 1:
        names = ", ".join(p.name for p in folders)
        raise DataError(f"{path} holds sparse coders for several hook points ({names}); give one, e.g. {folders[0]}")
    return _read_folder(folders[0])


def _read_folder(path: Path) -> ImportedDictionary:
    where = str(path)
    cfg = read_json(path / CFG_FILE)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise DataError(f"{where}: sparsify activation {activation!r} has no sparsecode equivalent (only 'topk' maps)")
    d_in = positive_int(cfg.get("d_in"), "d_in", where)
    n = cfg.get("num_latents") or d_in * positive_int(cfg.get("expansion_factor"), "expansion_factor", where)
    n = positive_int(n, "num_latents", where)
    k = positive_int(cfg.get("k"), "k", where)
    if k > n:
        raise DataError(f"{where}: k {k} is larger than num_latents {n}")
    transcode, skip = bool(cfg.get("transcode", False)), bool(cfg.get("skip_connection", False))
    t = as_float(load_tensors(path / WEIGHTS_FILE))
    finite(t, where)
    require(t, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"] + (["W_skip"] if skip else []), where)
    config = f"cfg.json (num_latents {n}, d_in {d_in})"
    check_shape(t["encoder.weight"], (n, d_in), "encoder.weight", where, config)
    check_shape(t["encoder.bias"], (n,), "encoder.bias", where, config)
    check_shape(t["W_dec"], (n, d_in), "W_dec", where, config)
    check_shape(t["b_dec"], (d_in,), "b_dec", where, config)
    state = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    unit = bool(cfg.get("normalize_decoder", True))
    notes = []
    if not transcode and not skip:
        sae = assemble(TopKConfig(d_in=d_in, n_latents=n, k=k, unit_norm_decoder=unit), state, where)
    else:
        if skip:
            check_shape(t["W_skip"], (d_in, d_in), "W_skip", where, config)
            state["W_skip"] = t["W_skip"].T  # sparsify: x @ W_skip.T; sparsecode: x @ W_skip
        if not transcode:  # an SAE with a skip connection: it centres its input, a sparsecode transcoder does not
            state["b_enc"] = centred_bias(state["W_enc"], state["b_enc"], -state["b_dec"])
            notes.append("an SAE with a skip connection, imported as a transcoder that predicts its own input")
        cfg_ = TranscoderConfig(d_in=d_in, n_latents=n, k=k, skip=skip, unit_norm_decoder=unit)
        sae = assemble(cfg_, state, where)
    return ImportedDictionary(
        sae=sae,
        format="sparsify",
        path=path,
        hook=path.name,
        hook_out=path.name if transcode else None,
        notes=notes,
    )


# --------------------------------------------------------------------------- writing
def write(sae: SparseAutoencoder, out: Path, hookpoint: str) -> Path:
    """Write ``sae`` as ``out/<hookpoint>/{cfg.json,sae.safetensors}``, the layout SparseCoder.load_from_disk and
    load_many read. Returns the hook folder."""
    cfg, tensors = to_sparsify(sae)
    folder = out / hookpoint
    save_tensors(folder / WEIGHTS_FILE, tensors)
    write_json(folder / CFG_FILE, cfg)
    return folder


def to_sparsify(sae: SparseAutoencoder) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    c = sae.cfg
    W_enc, b_enc, W_dec, b_dec = (p.detach().float() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    transcode = c.arch == "transcoder"
    if not (c.plain_topk or transcode) or (transcode and c.activation != "topk"):
        what = f"{c.activation} transcoder" if transcode else f"{c.arch} dictionary"
        raise ConfigError(f"sparsify has only TopK sparse coders; this {what} does not map (try --format saelens)")
    if transcode and c.d_out != c.d_in:
        raise ConfigError(f"sparsify transcoders predict d_in values; this one predicts d_out={c.d_out} != {c.d_in}")
    tensors = {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    skip = transcode and c.skip
    if skip:
        tensors["W_skip"] = sae.W_skip.detach().float().T.contiguous()
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, c.n_latents // c.d_in),
        "normalize_decoder": bool(c.unit_norm_decoder),
        "num_latents": c.n_latents,
        "k": c.k,
        "multi_topk": False,
        "skip_connection": skip,
        "transcode": transcode,
        "d_in": c.d_in,
    }
    return cfg, tensors
