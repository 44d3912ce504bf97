"""dictionary_learning (saprmarks/dictionary_learning): a folder with ``ae.pt`` (a pickled state dict) and
``config.json`` (``{"trainer": {"dict_class": ..., "activation_dim": ..., "dict_size": ..., "k": ...}, ...}``).

``ae.pt`` is read with ``torch.load(weights_only=True)`` only: plain tensors load, a file that needs arbitrary
Python classes to unpickle is refused. Classes: AutoEncoder (ReLU), AutoEncoderTopK, BatchTopKSAE and
MatryoshkaBatchTopKSAE (both encode with their learned threshold at inference: sparsecode's BatchTopK with raw
ranking), JumpReluAutoEncoder (no b_dec subtraction: folded) and GatedAutoEncoder.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..errors import DataError
from ..io import read_json
from ..sae import BatchTopKConfig, GatedConfig, JumpReLUConfig, ReLUConfig, TopKConfig
from .common import (
    ImportedDictionary,
    as_float,
    assemble,
    centred_bias,
    check_shape,
    finite,
    log_threshold,
    positive_int,
    require,
    unit_rows,
)

WEIGHTS_FILE = "ae.pt"
CFG_FILE = "config.json"
READABLE = (
    "AutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
    "GatedAutoEncoder",
)
SUBMODULE_HOOKS = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "attn_out": "hook_attn_out"}


def looks_like(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS_FILE).is_file()


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in ``ae.pt``, never unpickling anything but tensors and plain containers."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"{path}: the pickle needs arbitrary Python classes to load; sparsecode reads only plain tensors "
            "(torch.load weights_only=True): save the model's state_dict() instead"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable torch file ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def read(path: Path) -> ImportedDictionary:
    where = str(path)
    if not (path / CFG_FILE).is_file():
        raise DataError(f"{path / CFG_FILE}: file not found (dictionary_learning saves it beside {WEIGHTS_FILE})")
    trainer = read_json(path / CFG_FILE).get("trainer")
    if not isinstance(trainer, dict):
        raise DataError(f"{path / CFG_FILE}: no 'trainer' section (not a dictionary_learning config)")
    cls = trainer.get("dict_class")
    if cls not in READABLE:
        raise DataError(
            f"{where}: dictionary_learning class {cls!r} has no sparsecode equivalent (readable: {', '.join(READABLE)})"
        )
    d_in = positive_int(trainer.get("activation_dim"), "trainer.activation_dim", where)
    n = positive_int(trainer.get("dict_size"), "trainer.dict_size", where)
    raw = as_float(load_state(path / WEIGHTS_FILE))
    finite(raw, where)
    notes: list[str] = []
    state = _standard_names(cls, raw, d_in, n, where)
    base = {"d_in": d_in, "n_latents": n, "unit_norm_decoder": unit_rows(state["W_dec"])}
    if cls == "AutoEncoder":
        sae = assemble(ReLUConfig(**base), state, where)
    elif cls == "GatedAutoEncoder":
        sae = assemble(GatedConfig(**base), state, where)
    elif cls == "JumpReluAutoEncoder":
        require(raw, ["threshold"], where)
        check_shape(raw["threshold"], (n,), "threshold", where, "config.json")
        state["b_enc"] = centred_bias(state["W_enc"], state["b_enc"], state["b_dec"])
        state["log_threshold"] = log_threshold(raw["threshold"])
        notes.append("folded b_dec @ W_enc into b_enc (JumpReluAutoEncoder does not subtract b_dec from its input)")
        sae = assemble(JumpReLUConfig(**base, relative_threshold=False), state, where)
    else:
        k = positive_int(raw.get("k", trainer.get("k")), "k", where)
        if cls == "AutoEncoderTopK":
            sae = assemble(TopKConfig(**base, k=k), state, where)
        else:
            require(raw, ["threshold"], where)
            # an unset threshold (-1) lets every positive activation through in dictionary_learning's encode; in
            # sparsecode's it would mean batch ranking, so it becomes 0, which lets the same ones through
            state["threshold"] = raw["threshold"].reshape(()).clamp_min(0)
            sae = assemble(BatchTopKConfig(**base, k=k, rank_relative=False), state, where)
            if cls == "MatryoshkaBatchTopKSAE":
                notes.append("the Matryoshka groups only shape training; inference is the learned threshold")
    return ImportedDictionary(
        sae=sae, format="dictionary_learning", path=path, hook=_hook(trainer), model=trainer.get("lm_name"), notes=notes
    )


def _standard_names(cls: str, t: dict[str, torch.Tensor], d_in: int, n: int, where: str) -> dict[str, torch.Tensor]:
    """W_enc (d_in, n), b_enc, W_dec (n, d_in), b_dec (+ gate/magnitude parameters) from the class's own names."""
    config = f"config.json (activation_dim {d_in}, dict_size {n})"
    if cls in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        require(t, ["W_enc", "b_enc", "W_dec", "b_dec"], where)
        s = {k: t[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    elif cls == "GatedAutoEncoder":
        require(t, ["encoder.weight", "decoder.weight", "decoder_bias", "gate_bias", "mag_bias", "r_mag"], where)
        check_shape(t["encoder.weight"], (n, d_in), "encoder.weight", where, config)
        check_shape(t["decoder.weight"], (d_in, n), "decoder.weight", where, config)
        s = {"W_enc": t["encoder.weight"].T, "b_enc": t["gate_bias"], "W_dec": t["decoder.weight"].T}
        s.update(b_dec=t["decoder_bias"], r_mag=t["r_mag"], b_mag=t["mag_bias"])
    else:
        bias = "bias" if cls == "AutoEncoder" else "b_dec"
        require(t, ["encoder.weight", "encoder.bias", "decoder.weight", bias], where)
        check_shape(t["encoder.weight"], (n, d_in), "encoder.weight", where, config)
        check_shape(t["decoder.weight"], (d_in, n), "decoder.weight", where, config)
        s = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["decoder.weight"].T}
        s["b_dec"] = t[bias]
    check_shape(s["W_enc"], (d_in, n), "W_enc", where, config)
    check_shape(s["W_dec"], (n, d_in), "W_dec", where, config)
    check_shape(s["b_enc"], (n,), "encoder bias", where, config)
    check_shape(s["b_dec"], (d_in,), "decoder bias", where, config)
    return s


def _hook(trainer: dict) -> str | None:
    """The TransformerLens name of the point it was trained on, from its layer and submodule name (residual stream
    output when the name says nothing else, as dictionary_learning's demos train)."""
    layer = trainer.get("layer")
    if not isinstance(layer, int) or isinstance(layer, bool):
        return None
    name = str(trainer.get("submodule_name") or "resid_post")
    kind = next((v for k, v in SUBMODULE_HOOKS.items() if k in name), None)
    return f"blocks.{layer}.{kind}" if kind else None
