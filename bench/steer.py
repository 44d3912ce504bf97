"""Steered generation speed on the embedded SmolLM2: 32 new tokens, greedy, with and without a steering edit,
with 1 and with 2 torch threads.

    python bench/steer.py RUN [--tokens 32] [--repeats 3] [--threads 1,2] [--feature ID]

RUN is a run folder on SmolLM2 (`make demo-lm` writes runs/smollm2). Each repeat generates the same continuation
plainly and with the feature's latent pushed (+4 x its typical activation, error kept, as `sparsecode steer`
does) at each thread count, interleaved so load drifts hit all alike; prints medians, ratios and the load
average (a shared machine's timings mean little without it). `sparsecode steer` generates with
`interventions.steer.DECODE_THREADS` threads; the target is under 5 s for the steered 32 tokens on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from sparsecode.device import torch_threads
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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to compare")
    ap.add_argument("--feature", type=int, default=0)
    args = ap.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    run = load_run(args.run)
    source = run.source()
    enc = encode_prompt(source, PROMPT)
    site = site_of_run(run)
    kwargs = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}
    kwargs["pad_token_id"] = source.tokenizer.pad_token_id

    def generate(threads: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode(), torch_threads(threads):
            out = run.model.generate(**enc, **kwargs)
        assert out.shape[1] == enc["input_ids"].shape[1] + args.tokens
        return time.perf_counter() - started

    value = 4.0 * typical_activation(run, args.feature)
    for threads in thread_counts:
        generate(threads)  # warm-up: first-call allocations and kernel selection
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for threads in thread_counts:
            times.setdefault(f"plain_{threads}t", []).append(generate(threads))
            with intervene(site, [add_latent(args.feature, value)]):
                times.setdefault(f"steered_{threads}t", []).append(generate(threads))
    medians = {f"{name}_s_median": statistics.median(ts) for name, ts in times.items()}
    base = medians[f"plain_{thread_counts[0]}t_s_median"]
    result = {
        "run": args.run,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        **medians,
        "over_plain_first": {name: value / base for name, value in medians.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
