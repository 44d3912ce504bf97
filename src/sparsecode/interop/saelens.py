"""SAELens: a folder with ``cfg.json`` and ``sae_weights.safetensors`` (W_enc (d_in, d_sae), W_dec (d_sae, d_in)).

Read: inference files (standard, topk, jumprelu, gated, transcoder, skip_transcoder, jumprelu_transcoder,
jumprelu_skip_transcoder) and the training checkpoints of topk, batchtopk and matryoshka_batchtopk (their
threshold, as SAELens itself exports them, makes them JumpReLU). ``apply_b_dec_to_input``,
``rescale_acts_by_decoder_norm`` and an old ``scaling_factor`` are folded into the weights exactly; per-row input
normalisations (layer_norm, constant_norm_rescale), whitening and an unknown ``expected_average_only_in`` factor have
no equivalent and are refused, as are architectures sparsecode does not have (abstopk, temporal, ...).

Written: sparsecode's topk, relu, jumprelu, gated, batchtopk and matryoshka (raw-ranked or, for matryoshka, per-row
TopK) dictionaries and its relu/jumprelu transcoders, as SAELens inference files (``SAE.load_from_disk`` reads them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..io import load_tensors, read_json, save_tensors, write_json
from ..sae import (
    GatedConfig,
    JumpReLUConfig,
    ReLUConfig,
    SparseAutoencoder,
    TopKConfig,
    TranscoderConfig,
)
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
    threshold_from_log,
    unit_rows,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FILES = (CFG_FILE, WEIGHTS_FILE)

THRESHOLD_TRAINED = ("batchtopk", "matryoshka_batchtopk")
"""Training architectures whose inference form is a JumpReLU with one learned threshold for every latent."""
TRANSCODERS = {
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
READABLE = ("standard", "topk", "jumprelu", "gated", *THRESHOLD_TRAINED, *TRANSCODERS)


def looks_like(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in FILES)


def _architecture(cfg: dict[str, Any]) -> str:
    """The architecture, including configs older than SAELens 6 (no 'architecture'; TopK via activation_fn)."""
    arch = cfg.get("architecture")
    if arch:
        return arch
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    return "topk" if activation == "topk" else "standard"


def _metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    meta = cfg.get("metadata")
    return {**cfg, **meta} if isinstance(meta, dict) else cfg


def _check_normalisation(cfg: dict[str, Any], where: str) -> None:
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm == "none":
        return
    if norm == "expected_average_only_in":
        raise DataError(
            f"{where}: normalize_activations is 'expected_average_only_in' and the file does not hold its scaling "
            "factor; fold it into the weights with SAELens's fold_activation_norm_scaling_factor and save again"
        )
    raise DataError(
        f"{where}: normalize_activations {norm!r} rescales every row by its own statistics (or needs whitening "
        "statistics the file does not hold); sparsecode has no equivalent and does not approximate it"
    )


def read(path: Path) -> ImportedDictionary:
    """Read a SAELens folder; one-line DataError for anything missing, inconsistent or without an equivalent."""
    where = str(path)
    for f in FILES:
        if not (path / f).is_file():
            raise DataError(f"{path / f}: file not found (a SAELens folder holds {' and '.join(FILES)})")
    cfg = read_json(path / CFG_FILE)
    arch = _architecture(cfg)
    if arch not in READABLE:
        raise DataError(
            f"{where}: SAELens architecture {arch!r} has no sparsecode equivalent (readable: {', '.join(READABLE)})"
        )
    meta = _metadata(cfg)
    _check_normalisation(cfg, where)
    if meta.get("hook_head_index") is not None:
        raise DataError(f"{where}: the SAE reads one attention head (hook_head_index); sparsecode hooks whole modules")
    d_in = positive_int(cfg.get("d_in"), "d_in", where)
    d_sae = positive_int(cfg.get("d_sae"), "d_sae", where)
    t = as_float(load_tensors(path / WEIGHTS_FILE))
    finite(t, where)
    require(t, ["W_enc", "W_dec", "b_dec"], where)
    d_out = positive_int(cfg.get("d_out", d_in), "d_out", where) if arch in TRANSCODERS else d_in
    check_shape(t["W_enc"], (d_in, d_sae), "W_enc", where, f"cfg.json (d_in {d_in}, d_sae {d_sae})")
    check_shape(t["W_dec"], (d_sae, d_out), "W_dec", where, f"cfg.json (d_sae {d_sae}, d_out {d_out})")
    check_shape(t["b_dec"], (d_out,), "b_dec", where, "cfg.json")
    notes: list[str] = []
    if "scaling_factor" in t or "finetuning_scaling_factor" in t:
        # decode((f * s)) == decode'(f) with decoder rows scaled by s: the latents stay SAELens's
        s = t.pop("scaling_factor", None)
        s = t.pop("finetuning_scaling_factor") if s is None else s
        t["W_dec"] = t["W_dec"] * s[:, None]
        notes.append("folded the fine-tuning scaling factor into the decoder rows")
    sae = _convert(arch, cfg, t, d_in, d_sae, d_out, where, notes)
    return ImportedDictionary(
        sae=sae,
        format="saelens",
        path=path,
        hook=meta.get("hook_name") or meta.get("hook_point"),
        hook_out=meta.get("hook_name_out"),
        model=meta.get("model_name"),
        notes=notes,
    )


def _convert(
    arch: str, cfg: dict[str, Any], t: dict[str, torch.Tensor], d_in: int, d_sae: int, d_out: int, where: str, notes
) -> SparseAutoencoder:
    if arch == "gated":
        require(t, ["b_gate", "r_mag", "b_mag"], where)
        t["b_enc"] = t.pop("b_gate")
    else:
        require(t, ["b_enc"], where)
    check_shape(t["b_enc"], (d_sae,), "b_enc", where, "cfg.json")
    if arch in TRANSCODERS:
        return _transcoder(arch, t, d_in, d_sae, d_out, where)
    if not cfg.get("apply_b_dec_to_input", True):
        if arch == "gated":  # the magnitude path sees the same shift, scaled by exp(r_mag)
            t["b_mag"] = t["b_mag"] + (t["b_dec"].double() @ t["W_enc"].double()).float() * t["r_mag"].exp()
        t["b_enc"] = centred_bias(t["W_enc"], t["b_enc"], t["b_dec"])
        notes.append("folded b_dec @ W_enc into b_enc (the SAE does not subtract b_dec from its input)")
    if arch in ("topk", *THRESHOLD_TRAINED) and cfg.get("rescale_acts_by_decoder_norm", False):
        # SAELens ranks pre * |W_dec row| and decodes acts / |W_dec row|: the same SAE with the norms folded in
        norms = t["W_dec"].norm(dim=1)  # (d_sae,)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * norms, t["b_enc"] * norms, t["W_dec"] / norms[:, None]
        notes.append("folded the decoder row norms into the encoder (rescale_acts_by_decoder_norm)")
    base = {"d_in": d_in, "n_latents": d_sae, "unit_norm_decoder": unit_rows(t["W_dec"])}
    if arch == "standard":
        return assemble(ReLUConfig(**base), t, where)
    if arch == "topk":
        return assemble(TopKConfig(**base, k=positive_int(cfg.get("k"), "k", where)), t, where)
    if arch == "gated":
        return assemble(GatedConfig(**base), t, where)
    if arch in THRESHOLD_TRAINED:
        require(t, ["topk_threshold"], where)
        t["threshold"] = t.pop("topk_threshold").reshape(1).expand(d_sae)
        notes.append("the training checkpoint's batch threshold is the JumpReLU threshold of every latent")
    return _jumprelu(base, t, d_sae, where)


def _jumprelu(base: dict, t: dict[str, torch.Tensor], d_sae: int, where: str) -> SparseAutoencoder:
    if "log_threshold" in t:  # files older than SAELens 6
        t["threshold"] = t.pop("log_threshold").exp()
    require(t, ["threshold"], where)
    check_shape(t["threshold"], (d_sae,), "threshold", where, "cfg.json")
    t["log_threshold"] = log_threshold(t.pop("threshold"))
    return assemble(JumpReLUConfig(**base, relative_threshold=False), t, where)


def _transcoder(arch: str, t: dict[str, torch.Tensor], d_in: int, d_sae: int, d_out: int, where: str):
    activation, skip = TRANSCODERS[arch]
    if skip:
        require(t, ["W_skip"], where)
        check_shape(t["W_skip"], (d_out, d_in), "W_skip", where, "cfg.json (d_out, d_in)")
        t["W_skip"] = t["W_skip"].T  # SAELens: x @ W_skip.T; sparsecode: x @ W_skip
    if activation == "jumprelu":
        require(t, ["threshold"], where)
        check_shape(t["threshold"], (d_sae,), "threshold", where, "cfg.json")
    cfg = TranscoderConfig(
        d_in=d_in,
        n_latents=d_sae,
        d_out=d_out,
        k=d_sae,
        skip=skip,
        activation=activation,
        unit_norm_decoder=unit_rows(t["W_dec"]),
    )
    return assemble(cfg, t, where)


# --------------------------------------------------------------------------- writing
def write(sae: SparseAutoencoder, out: Path, hook_name: str | None, model_name: str | None, **extra: Any) -> None:
    """Write ``sae`` as a SAELens inference folder at ``out`` (created; files written atomically)."""
    arch, tensors, fields = to_saelens(sae)
    meta = {"hook_name": hook_name, "model_name": model_name, "sae_lens_version": "6.0.0", **extra}
    cfg = {
        "architecture": arch,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": arch not in TRANSCODERS,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **fields,
        "metadata": {k: v for k, v in meta.items() if v is not None},
    }
    save_tensors(out / WEIGHTS_FILE, tensors)
    write_json(out / CFG_FILE, json.loads(json.dumps(cfg)))


def to_saelens(sae: SparseAutoencoder) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """SAELens architecture, tensors and extra config fields for ``sae``; ConfigError if SAELens has no equivalent."""
    c = sae.cfg
    W_enc, b_enc, W_dec, b_dec = (p.detach().float() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    t = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if c.arch == "relu":
        return "standard", t, {}
    if c.plain_topk:
        return "topk", t, {"k": c.k, "rescale_acts_by_decoder_norm": False}
    if c.arch == "jumprelu" and not c.relative_threshold:
        return "jumprelu", {**t, "threshold": threshold_from_log(sae.log_threshold.detach())}, {}
    if c.arch in ("batchtopk", "matryoshka") and not c.rank_relative and float(sae.threshold) >= 0:
        return "jumprelu", {**t, "threshold": sae.threshold.detach().float().expand(c.n_latents).clone()}, {}
    if c.arch == "gated":
        t["b_gate"] = t.pop("b_enc")
        return "gated", {**t, "r_mag": sae.r_mag.detach().float(), "b_mag": sae.b_mag.detach().float()}, {}
    if c.arch == "transcoder" and c.activation in ("relu", "jumprelu"):
        name = ("jumprelu_" if c.activation == "jumprelu" else "") + ("skip_transcoder" if c.skip else "transcoder")
        if c.skip:
            t["W_skip"] = sae.W_skip.detach().float().T.contiguous()
        if c.activation == "jumprelu":
            t["threshold"] = sae.threshold.detach().float()
        return name, t, {"d_out": c.d_out}
    hint = "; export it with --format sparsify" if c.arch == "transcoder" and c.activation == "topk" else ""
    raise ConfigError(f"SAELens has no equivalent of this {_describe(sae)}{hint}")


def _describe(sae: SparseAutoencoder) -> str:
    c = sae.cfg
    if c.arch in ("batchtopk", "matryoshka"):
        kind = "BatchTopK" if c.arch == "batchtopk" else "Matryoshka (BatchTopK)"
        return f"{kind} SAE (its threshold is relative to each row's norm, or was never set)"
    if c.arch == "jumprelu":
        return "JumpReLU SAE (its threshold is relative to each row's RMS)"
    if c.arch == "transcoder":
        return f"{c.activation} transcoder (SAELens transcoders are ReLU or JumpReLU)"
    return f"{c.arch} dictionary"
