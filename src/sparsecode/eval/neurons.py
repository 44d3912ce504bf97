"""Neuron sparsity profile (after "The Lazy Neuron Phenomenon", Li et al. 2023): per layer, the fraction
of MLP hidden activations that are "on" for a token.

An MLP hidden activation a (the output of the layer's activation function) counts as on when
a > threshold: threshold 0 for ReLU models (exactly the non-zeros), a small positive number for
GELU/SiLU models, whose outputs are never exactly zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ..hooks import HookPoint, intercept

NEURON_MODULE = re.compile(
    r"^(?P<layer>.*\.\d+)\.(?:intermediate|mlp\.act|mlp\.act_fn|mlp\.activation_fn|activation_fn|ffn\.activation)$"
)
"""Module names whose output is a layer's MLP hidden activation (post-nonlinearity):
BERT-family ``encoder.layer.N.intermediate``, GPT-2/NeoX ``h.N.mlp.act``, LLaMA-family
``layers.N.mlp.act_fn``, OPT ``layers.N.activation_fn``, DistilBERT ``layer.N.ffn.activation``."""

DEFAULT_SMOOTH_THRESHOLD = 0.01
"""Default "on" threshold for smooth activations (GELU, SiLU, ...)."""


def neuron_modules(model: torch.nn.Module) -> list[str]:
    """Names of the per-layer MLP activation modules, in forward order (empty if none is recognised)."""
    return [name for name, _ in model.named_modules() if NEURON_MODULE.match(name)]


def neuron_module_for_hook(model: torch.nn.Module, hook: str) -> str | None:
    """The MLP activation module of the layer that ``hook`` belongs to (or is), or None."""
    for name in neuron_modules(model):
        layer = NEURON_MODULE.match(name).group("layer")  # type: ignore[union-attr]
        if hook == layer or hook.startswith(layer + "."):
            return name
    return None


def activation_name(model_config: Any) -> str:
    """The model's MLP nonlinearity as its config names it (``hidden_act``, ``activation_function``, ...)."""
    for key in ("hidden_act", "activation_function", "hidden_activation", "activation"):
        value = getattr(model_config, key, None)
        if isinstance(value, str):
            return value
    return "unknown"


def default_threshold(model_config: Any) -> float:
    """0 for ReLU models (count exact non-zeros), else :data:`DEFAULT_SMOOTH_THRESHOLD`."""
    return 0.0 if activation_name(model_config).lower() == "relu" else DEFAULT_SMOOTH_THRESHOLD


@torch.inference_mode()
def neuron_sparsity(
    source: Any, split: str = "eval", max_chunks: int | None = 64, threshold: float | None = None, progress: bool = True
) -> dict[str, Any]:
    """Fraction of MLP hidden activations above ``threshold`` in every layer, over kept tokens of ``split``.

    ``source`` is a :class:`sparsecode.sources.hf.ModelSource` (its model, chunks, tokenizer and keep
    mask are used; its hook is not). For layer ℓ with hidden activations a (tokens × neurons):

    - ``fraction_active`` = #{(t, i) : a_ti > threshold} / (tokens · neurons);
    - ``never_active_fraction`` = fraction of neurons with a_ti ≤ threshold on every token.

    Returns {"activation", "threshold", "tokens", "chunks", "layers": [{"module", "n_neurons",
    "fraction_active", "never_active_fraction"}, ...]}.
    """
    model = source.model
    names = neuron_modules(model)
    if not names:
        raise DataError(
            f"{type(model).__name__}: no MLP activation modules recognised (looked for names like "
            "encoder.layer.N.intermediate, h.N.mlp.act, layers.N.mlp.act_fn)"
        )
    thr = default_threshold(source.model_config) if threshold is None else float(threshold)
    chunks = source.chunks(split)[:max_chunks] if max_chunks else source.chunks(split)
    if not chunks:
        raise DataError(f"neuron sparsity: the {split} split has no text chunks")
    counts: dict[str, torch.Tensor] = {}
    keep_now: list[torch.Tensor] = []

    def count(name: str) -> Callable[[torch.Tensor], None]:
        def fn(h: torch.Tensor) -> None:
            on = (h[keep_now[0]] > thr).sum(0).to("cpu", torch.int64)  # (neurons,)
            counts[name] = counts[name] + on if name in counts else on

        return fn

    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with ExitStack() as hooks:  # hooks removed however the loop ends
            for name in names:
                hooks.enter_context(intercept(HookPoint.at(model, name), count(name)))
            bs = source.config.batch_size
            for start in tqdm(
                range(0, len(chunks), bs), desc="neurons", unit="batch", disable=not progress, leave=False
            ):
                batch = source.tokenize(chunks[start : start + bs])
                keep = source.keep_mask(batch["input_ids"], batch["attention_mask"])
                keep_now[:] = [keep]
                extra = {"use_cache": False} if source.is_causal_lm else {}
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
                n_tokens += int(keep.sum())
    finally:
        model.train(was_training)
    if n_tokens == 0:
        raise DataError(f"neuron sparsity: no kept tokens in the {split} split")
    layers = []
    for name in names:
        c = counts.get(name)
        if c is None:
            continue  # a module the forward pass never reached
        layers.append(
            {
                "module": name,
                "n_neurons": int(c.numel()),
                "fraction_active": float(c.sum()) / (n_tokens * c.numel()),
                "never_active_fraction": float((c == 0).to(torch.float64).mean()),
            }
        )
    return {
        "activation": activation_name(source.model_config),
        "threshold": thr,
        "tokens": n_tokens,
        "chunks": len(chunks),
        "layers": layers,
    }


def format_neurons(result: dict[str, Any]) -> str:
    """One line per layer: module, neurons, % active, % never active."""
    lines = [
        (
            f"MLP neuron sparsity ({result['activation']}, on = activation > {result['threshold']:g}; "
            f"{result['tokens']} tokens from {result['chunks']} chunks)"
        )
    ]
    for layer in result["layers"]:
        lines.append(
            f"  {layer['module']:<40} {layer['n_neurons']:>6} neurons   active {100 * layer['fraction_active']:6.2f}%"
            f"   never active {100 * layer['never_active_fraction']:5.1f}%"
        )
    return "\n".join(lines)
