"""How much larger SmolLM2's residual stream is at the first token than at the others, per layer.

    python bench/attention_sink.py

The first token of a text is an "attention sink" in many LMs: its residual norm is far above the rest. That is
why model sources leave each chunk's first position out of a causal LM's rows by default
(`exclude_first_positions`, docs/usage.md), and eval, features, steering, ablation and attribution with them: an
SAE trained on every token of deep SmolLM2 layers spends its capacity and its input scale on that one outlier.
"""

from __future__ import annotations

import torch

from sparsecode.sources.hf import load_model

TEXTS = ["The weather today is sunny and warm in the city.", "def foo(x):\n    return x + 1  # add one"]


def main() -> None:
    model, tok = load_model("smollm2")
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    print("layer  first-token norm  median of the others  ratio")
    for layer in (3, 6, 9, 12, 15, 20, 25):
        norms = hidden[layer + 1][0].norm(dim=-1)  # (T,) output of block `layer`, first text
        first, rest = float(norms[0]), float(norms[1:].median())
        print(f"{layer:>5}  {first:>16.0f}  {rest:>20.1f}  {first / rest:>5.0f}x")


if __name__ == "__main__":
    main()
