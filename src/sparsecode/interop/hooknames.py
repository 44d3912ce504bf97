"""Where a dictionary plugs in: TransformerLens hook names <-> transformers module paths (+ output or input side).

SAELens and dictionary_learning name hook points the TransformerLens way (``blocks.6.hook_resid_post``); sparsecode
hooks a module of the transformers model (``transformer.h.6``, its output or its input); sparsify names the module
relative to the base model (``h.6``). The families below are mapped explicitly; anything else asks for ``--hook``.

The off-by-one trap: transformers' ``hidden_states[i]`` is the *input* of layer i, i.e. ``blocks.{i}.hook_resid_pre``
= ``blocks.{i-1}.hook_resid_post``, and the last entry has the final norm applied, so it is not the last block's
``hook_resid_post``. These names map to module outputs and inputs directly and never go through ``hidden_states``.

TransformerLens's ``hook_mlp_in`` is the residual stream before the MLP's norm (= ``hook_resid_mid``); the MLP's
actual input, after the norm, is ``ln2.hook_normalized`` (what transcoders usually read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

TL_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Family:
    base: str
    """The base model's attribute inside the causal-LM wrapper sparsecode loads ("" if loaded bare)."""
    layers: str
    """Dotted path of the layer list inside the base model."""
    points: dict[str, tuple[str, str]]
    """TransformerLens hook (after ``blocks.L.``) -> (module path inside layer L, "output" or "input")."""
    causal: bool = True
    """Loaded by sparsecode as a causal LM (so module paths start with ``base``)."""


def _pre_norm(ln2: str, attn: str, o_proj: str, mlp: str = "mlp") -> dict[str, tuple[str, str]]:
    return {
        "hook_resid_pre": ("", "input"),
        "hook_resid_post": ("", "output"),
        "hook_resid_mid": (ln2, "input"),
        "hook_mlp_in": (ln2, "input"),
        "ln2.hook_normalized": (ln2, "output"),
        "hook_attn_out": (attn, "output"),
        "hook_mlp_out": (mlp, "output"),
        "attn.hook_z": (o_proj, "input"),
    }


_LLAMA = Family("model", "layers", _pre_norm("post_attention_layernorm", "self_attn", "self_attn.o_proj"))
_BERT = Family(
    "",
    "encoder.layer",
    {
        "hook_resid_pre": ("", "input"),
        "hook_resid_post": ("", "output"),
        "hook_resid_mid": ("attention", "output"),  # post-LN: the attention block's normalised output
        "hook_mlp_in": ("attention", "output"),
        "hook_attn_out": ("attention.output.dense", "output"),
        "hook_mlp_out": ("output.dense", "output"),
        "attn.hook_z": ("attention.output.dense", "input"),
    },
    causal=False,
)
FAMILIES: dict[str, Family] = {
    "gpt2": Family("transformer", "h", _pre_norm("ln_2", "attn", "attn.c_proj")),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": Family(  # Gemma 2 normalises sublayer outputs too; TransformerLens hooks after those norms
        "model",
        "layers",
        {
            **_pre_norm("pre_feedforward_layernorm", "post_attention_layernorm", "self_attn.o_proj"),
            "hook_mlp_out": ("post_feedforward_layernorm", "output"),
        },
    ),
    "gpt_neox": Family(  # parallel attention and MLP: no resid_mid
        "gpt_neox",
        "layers",
        {
            k: v
            for k, v in _pre_norm("post_attention_layernorm", "attention", "attention.dense").items()
            if k not in ("hook_resid_mid", "hook_mlp_in")
        },
    ),
    "bert": _BERT,
    "roberta": _BERT,
}
NAME_HINTS = (
    ("gemma-2", "gemma2"),
    ("gemma2", "gemma2"),
    ("gemma", "gemma"),
    ("pythia", "gpt_neox"),
    ("neox", "gpt_neox"),
    ("gpt2", "gpt2"),
    ("smollm", "llama"),
    ("llama", "llama"),
    ("qwen", "qwen2"),
    ("mistral", "mistral"),
    ("roberta", "roberta"),
    ("bert", "bert"),
    ("minilm", "bert"),
)
"""Model-name substrings -> family, for when the model's config cannot be read (offline, not downloaded)."""


@dataclass(frozen=True)
class Placement:
    """A point in a transformers model as sparsecode hooks it."""

    module: str
    side: str = "output"


def family_from_name(name: str | None) -> str | None:
    low = (name or "").lower()
    return next((family for hint, family in NAME_HINTS if hint in low), None)


def _family(family: str | None, what: str) -> Family:
    if family not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ConfigError(
            f"cannot place {what}: the model family {family or 'is unknown'}{' is not mapped' if family else ''} "
            f"(mapped: {known}); give --hook MODULE.PATH (add :input for a module's input)"
        )
    return FAMILIES[family]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def tl_to_module(name: str, family: str | None) -> Placement:
    """The module and side of TransformerLens hook ``name`` (``blocks.L.<hook>``) in ``family``."""
    m = TL_NAME.match(name)
    if not m:
        raise ConfigError(f"{name!r} is not a TransformerLens block hook (blocks.L.hook_...); give --hook MODULE.PATH")
    fam = _family(family, name)
    if m.group(2) not in fam.points:
        raise ConfigError(
            f"{name}: {m.group(2)} has no module equivalent in {family} models (mapped: {', '.join(fam.points)}); "
            "give --hook MODULE.PATH"
        )
    inner, side = fam.points[m.group(2)]
    return Placement(_join(fam.base if fam.causal else "", fam.layers, m.group(1), inner), side)


def module_to_tl(point: Placement, family: str | None) -> str | None:
    """The TransformerLens name of ``point`` in ``family``, None when it has none (or the family is unknown)."""
    fam = FAMILIES.get(family or "")
    if fam is None:
        return None
    prefix = _join(fam.base if fam.causal else "", fam.layers) + "."
    if not point.module.startswith(prefix):
        return None
    layer, _, inner = point.module[len(prefix) :].partition(".")
    if not layer.isdigit():
        return None
    for hook, (suffix, side) in fam.points.items():
        if (suffix, side) == (inner, point.side):
            return f"blocks.{layer}.{hook}"
    return None


def base_relative_to_module(name: str, family: str | None) -> str:
    """sparsify names modules relative to the base model (``h.6``); sparsecode's paths include the wrapper."""
    fam = FAMILIES.get(family or "")
    if fam is None or not fam.causal or name.startswith(fam.base + "."):
        return name
    return _join(fam.base, name)


def module_to_base_relative(module: str, family: str | None) -> str:
    fam = FAMILIES.get(family or "")
    if fam is None or not fam.causal:
        return module
    return module.removeprefix(fam.base + ".")


def parse_hook(text: str, family: str | None) -> Placement:
    """``--hook``: a TransformerLens name, or a module path with an optional ``:input`` / ``:output`` side."""
    if TL_NAME.match(text) and "hook_" in text:
        return tl_to_module(text, family)
    module, _, side = text.partition(":")
    if side not in ("", "input", "output") or not module:
        raise ConfigError(f"--hook {text!r}: give MODULE.PATH, MODULE.PATH:input or a TransformerLens name")
    return Placement(module, side or "output")


TL_MODELS = {"gpt2-small": "gpt2", "gpt2": "gpt2", "gpt2-medium": "gpt2-medium", "gpt2-large": "gpt2-large"}


def hub_model(name: str | None) -> str | None:
    """A hub id for a model name as a peer recorded it (TransformerLens short names for the common ones)."""
    if not name:
        return None
    if "/" in name:
        return name
    if name in TL_MODELS:
        return TL_MODELS[name]
    if name.startswith("pythia-"):
        return f"EleutherAI/{name}"
    if name.startswith("gemma-"):
        return f"google/{name}"
    return None
