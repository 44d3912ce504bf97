"""Steered generation speed on the embedded SmolLM2: 32 new tokens, greedy, with and without a steering edit.

    python bench/steer.py RUN [--tokens 32] [--repeats 5] [--threads 2] [--feature ID]

RUN is a run folder on SmolLM2 (`make demo-lm` writes runs/smollm2). Each repeat generates the same continuation
once plainly and once with the feature's latent pushed (+4 x its typical activation, error kept, as
`sparsecode steer` does), interleaved so load drifts hit both alike; prints medians and the ratio. The target
is under 5 s for the steered 32-token generation on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sparsecode.interventions.edit import add_latent, intervene
from sparsecode.interventions.lm import encode_prompt
from sparsecode.interventions.sites import site_of_run
from sparsecode.interventions.steer import typical_activation
from sparsecode.run import load_run

PROMPT = "The weather today is"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--feature", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    source = run.source()
    enc = encode_prompt(source, PROMPT)
    site = site_of_run(run)
    kwargs = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}
    kwargs["pad_token_id"] = source.tokenizer.pad_token_id

    def generate() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = run.model.generate(**enc, **kwargs)
        assert out.shape[1] == enc["input_ids"].shape[1] + args.tokens
        return time.perf_counter() - started

    value = 4.0 * typical_activation(run, args.feature)
    generate()  # warm-up: first-call allocations and kernel selection
    plain, steered = [], []
    for _ in range(args.repeats):
        plain.append(generate())
        with intervene(site, [add_latent(args.feature, value)]):
            steered.append(generate())
    result = {
        "run": args.run,
        "tokens": args.tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "plain_s_median": statistics.median(plain),
        "steered_s_median": statistics.median(steered),
        "steered_over_plain": statistics.median(steered) / statistics.median(plain),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
