"""steer a model with one feature: baseline vs steered continuation (encoders: the sentence embedding's shift)
Add a multiple of one feature's typical activation to its latent (= that multiple of its decoder direction, the
dictionary's error kept) at every position, and show the model's continuation of a prompt without and with it.
For encoder models, show how the prompt's sentence embedding moves and towards which vocabulary tokens.
"""

from __future__ import annotations

import argparse

from .options import positive_int

EXAMPLES = """examples:
  sparsecode steer runs/smollm2 --feature 1234 --strength 8 --prompt "The weather today is"
  sparsecode steer runs/smollm2 --feature 1234 --strength 4 --prompt "I think" --sample --seed 3
  sparsecode steer runs/demo --feature 77 --strength 10 --prompt "a cat on the mat"   # MiniLM: embedding shift
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder on a text model")
    p.add_argument("--feature", type=int, required=True, metavar="ID", help="latent to steer with")
    p.add_argument(
        "--strength", type=float, default=4.0, metavar="X", help="multiples of the feature's typical activation"
    )
    p.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue (or to embed)")
    p.add_argument("--tokens", type=positive_int, default=32, metavar="N", help="new tokens to generate")
    p.add_argument("--sample", action="store_true", help="sample (temperature --temperature) instead of greedy")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature")
    p.add_argument("--clamp", action="store_true", help="set the latent to the value instead of adding it")
    p.add_argument(
        "--output",
        choices=("text", "embedding"),
        default=None,
        help="what to show: generated text (causal LMs, their default) or the sentence embedding (encoders' default)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from ..interventions.steer import format_steering, steer_embedding, steer_text
    from ..run import load_run

    r = load_run(args.run)
    output = args.output or ("text" if r.source().is_causal_lm else "embedding")
    if output == "text":
        result = steer_text(
            r,
            args.feature,
            args.strength,
            args.prompt,
            max_new_tokens=args.tokens,
            sample=args.sample,
            seed=args.seed,
            temperature=args.temperature,
            clamp=args.clamp,
        )
    else:
        result = steer_embedding(r, args.feature, args.strength, args.prompt, clamp=args.clamp)
    print(json.dumps(result, indent=2) if args.json else format_steering(result))
    return 0
