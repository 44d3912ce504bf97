"""Seconds per feature of `sparsecode explain` with the local model, before and after batching the judge.

    python bench/explain_speed.py RUN [--features 5] [--test-examples 10] [--explain-examples 10] [--threads 1]

RUN holds features.sqlite (`sparsecode features RUN`). For each of the --features most frequent live features that
have a full test set (--test-examples contexts where they fire and as many where they do not; the densest
features may fire in nearly every random window), as `sparsecode explain` would (detection, the same prompts and
test contexts):

- explain: the explanation generated up to EXPLANATION_TOKENS new tokens (before) and stopped once its first line
  is out (after); the explanation read from both must be the same;
- judge: P(yes) for each of the feature's 2 x --test-examples detection questions, one plain forward pass per
  question (before: `LocalChat.p_yes_alone`, how the judge worked) and all at once (after: `LocalChat.judge`, the
  shared prefix once, the tails in one padded pass); the answers must be the same and P(yes) within 1e-4.

A feature costs one explanation and two judged test sets (its own explanation and the shuffled baseline's), so
seconds per feature = explain + 2 x judge. Prints per-feature medians, the before/after ratio and the load
average (timings on a shared machine mean little without it). Default model: the embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from sparsecode.explain.llm import LocalChat
from sparsecode.explain.pipeline import EXPLANATION_TOKENS
from sparsecode.explain.prompts import detection_messages, explain_messages, parse_explanation, render
from sparsecode.explain.scoring import detection_items
from sparsecode.explain.store import ExplainStore
from sparsecode.layout import FEATURES_FILE


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--features", type=int, default=5, help="the N most frequent live features")
    ap.add_argument("--test-examples", type=int, default=10)
    ap.add_argument("--explain-examples", type=int, default=10)
    ap.add_argument("--llm-model", default=None, help="transformers model folder (default: the embedded SmolLM2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    chat = LocalChat(args.llm_model)
    store = ExplainStore(os.path.join(args.run, FEATURES_FILE))
    rows = []
    for f in store.top_density(store.n_latents):
        if len(rows) == args.features:
            break
        top, quantile = store.contexts(f)
        rng = random.Random(f"{args.seed}:{f}:detection")
        held_out = top[args.explain_examples :] + quantile
        items = detection_items(held_out, store.negatives(f), args.test_examples, rng)
        if len(items) < 2 * args.test_examples:  # too dense (or too rare) for a full test set: not timed
            continue
        shown = explain_messages([render(c.tokens, c.firing) for c in top[: args.explain_examples]])
        t_long, long = timed(chat.chat, shown, EXPLANATION_TOKENS)
        t_short, short = timed(chat.chat, shown, EXPLANATION_TOKENS, first_line=True)
        explanation = parse_explanation(long)
        if explanation != parse_explanation(short):
            raise SystemExit(f"feature {f}: stopping at the first line changed the explanation: {long!r} / {short!r}")
        questions = [detection_messages(explanation or "nothing", item.excerpt) for item in items]
        t_alone, alone = timed(list, map(chat.p_yes_alone, questions))
        t_batch, batch = timed(chat.judge, questions)
        gap = max((abs(a - b.p_yes) for a, b in zip(alone, batch)), default=0.0)
        if gap > 1e-4 or [a > 0.5 for a in alone] != [b.yes for b in batch]:
            raise SystemExit(f"feature {f}: the batched judge disagrees with one-at-a-time (max |dP| {gap:.2e})")
        rows.append((f, len(questions), t_long, t_short, t_alone, t_batch, gap))
        print(
            f"feature {f}: {len(questions)} questions; explain {t_long:.2f} -> {t_short:.2f} s, judge "
            f"{t_alone:.2f} -> {t_batch:.2f} s, max |dP(yes)| {gap:.1e}; {explanation!r}",
            flush=True,
        )
    store.close()
    if not rows:
        raise SystemExit("no live feature with a full test set in the database; lower --test-examples")
    med = {
        k: statistics.median(r[i] for r in rows) for i, k in enumerate(["", "", "long", "short", "alone", "batch"]) if k
    }
    before = statistics.median(r[2] + 2 * r[4] for r in rows)
    after = statistics.median(r[3] + 2 * r[5] for r in rows)
    print(
        f"\n{len(rows)} features, {statistics.median(r[1] for r in rows):.0f} questions each (median), "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}"
    )
    print("| median s/feature | before | after | ratio |\n|---|---|---|---|")
    print(f"| explanation | {med['long']:.2f} | {med['short']:.2f} | {med['long'] / med['short']:.2f}x |")
    print(f"| judge, one test set | {med['alone']:.2f} | {med['batch']:.2f} | {med['alone'] / med['batch']:.2f}x |")
    print(f"| explain + 2 judged sets | {before:.2f} | {after:.2f} | {before / after:.2f}x |")
    print(f"largest |dP(yes)| batched vs one at a time: {max(r[6] for r in rows):.1e}")


if __name__ == "__main__":
    main()
