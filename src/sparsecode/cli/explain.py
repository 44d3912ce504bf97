"""explain features in words with a language model, and score the explanations
Ask a language model to describe what each chosen feature responds to, from its top contexts in
RUN/features.sqlite (activating tokens marked), then score each description: detection (does the judge, given only
the description, tell contexts where the feature fires from random ones where it does not?) and fuzzing (does it
tell correctly marked firing tokens from wrongly marked ones?). Accuracy, balanced accuracy and F1 per feature,
beside a shuffled-explanation baseline, are stored in RUN/features.sqlite and shown by `sparsecode serve RUN`.

The model is an OpenAI-compatible chat API (--llm URL --llm-model NAME; the key, if any, is read from
$OPENAI_API_KEY or --api-key-env and never stored) or a transformers model in this process (--llm local; default
the embedded SmolLM2-135M-Instruct). Finished features are saved one by one: an interrupted run continues where it
stopped when run again. See docs/explain.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .options import add_config_flags, check_run_folder, given

EXAMPLES = """examples:
  sparsecode explain runs/demo --top-density 200                  # the embedded SmolLM2, in-process
  sparsecode explain runs/demo --features 0-99,512 --llm http://127.0.0.1:8080/v1 --llm-model qwen2.5-7b
  OPENAI_API_KEY=... sparsecode explain runs/demo --llm https://api.openai.com/v1 --llm-model gpt-4o-mini \\
      --max-requests 5000 --price 0.15,0.60
  sparsecode serve runs/demo                                       # explanations and scores on every page
"""


def feature_list(text: str) -> list[int]:
    """'0-99,512' -> [0, 1, ..., 99, 512]."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]{1,9})\s*(?:-\s*([0-9]{1,9})\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise argparse.ArgumentTypeError(f"not a list of feature ids or ranges like 0-99,512: {text!r}")
        lo = int(m.group(1))
        out.extend(range(lo, int(m.group(2) or lo) + 1))
    return list(dict.fromkeys(out))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..explain import ExplainConfig, LLMConfig

    p.add_argument("run", metavar="RUN", help="run folder holding features.sqlite (see `sparsecode features`)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--features", type=feature_list, metavar="IDS", help="feature ids and ranges, e.g. 0-99,512")
    which.add_argument(
        "--top-density", type=int, metavar="N", help="the N live features that fire most often (default 100)"
    )
    p.set_defaults(config_flags=add_config_flags(p, [ExplainConfig, LLMConfig]))
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..explain import ExplainConfig, LLMConfig, explain_run
    from ..explain.llm import Usage, open_client
    from ..explain.store import ExplainStore
    from ..layout import FEATURES_FILE

    check_run_folder(args.run)
    if args.top_density is not None and args.top_density < 1:
        raise ConfigError(f"--top-density must be >= 1, got {args.top_density}")
    config = ExplainConfig(**given(args, args.config_flags, ExplainConfig))
    llm = LLMConfig(**given(args, args.config_flags, LLMConfig))
    ExplainStore(Path(args.run) / FEATURES_FILE).close()  # a missing or outdated database: said before loading a model
    usage = Usage(max_requests=llm.max_requests)
    client = open_client(llm, usage)
    result = explain_run(
        args.run,
        client,
        usage,
        config,
        features=args.features,
        top_density=args.top_density,
        progress=not args.quiet,
        prices=llm.prices,
    )
    print(format_summary(result, args.run, client.name))
    return 0


def format_summary(r: dict, run: str, model: str) -> str:
    lines = [f"explained {r['explained']} of {r['chosen']} chosen features with {model} ({r['requests']} requests"]
    if r["prompt_tokens"] is not None:
        lines[0] += f", {r['prompt_tokens']:,} prompt + {r['completion_tokens']:,} completion tokens"
    if r["cost"] is not None:
        lines[0] += f", ${r['cost']:.4f}"
    lines[0] += f"); saved in {r['path']}"
    if r["failed"]:
        lines.append(f"  {len(r['failed'])} features got no usable explanation (malformed replies): run again to retry")
    if r["stopped"] == "max-requests":
        lines.append("  stopped at --max-requests; run the same command again to continue")
    for scorer, kinds in r["scores"].items():
        lines += _scorer_lines(scorer, kinds)
    lines.append(f"  browse: sparsecode serve {run}")
    return "\n".join(lines)


def _pm(mean: float | None, se: float | None, sign: str = "") -> str:
    return "—" if mean is None else f"{mean:{sign}.3f}" + ("" if se is None else f" ± {se:.3f}")


def _scorer_lines(scorer: str, kinds: dict) -> list[str]:
    """Mean scores (± standard error) of the real explanations and the shuffled baseline, and their paired
    difference."""
    parts = []
    for kind, label in (("real", "explanations"), ("shuffled", "shuffled baseline")):
        s = kinds.get(kind)
        if s and s["balanced_accuracy"] is not None:
            auc = f"AUC {_pm(s['auc'], s['auc_se'])}, " if s["auc"] is not None else ""
            parts.append(
                f"{label} {_pm(s['balanced_accuracy'], s['balanced_accuracy_se'])} ({auc}F1 {s['f1'] or 0:.3f}, "
                f"yes-rate {s['yes_rate']:.2f}, {s['n']} features, {s['contexts']:.1f} contexts each, fewest "
                f"{s['contexts_min']})"
            )
    lines = [f"  {scorer}, mean balanced accuracy: {'; '.join(parts)}"] if parts else []
    d = kinds.get("paired")
    if d and d["n"]:
        auc = f"; AUC {_pm(d['auc'], d['auc_se'], '+')} ({d['n_auc']} features)" if d["n_auc"] else ""
        lines.append(
            f"  {scorer}, explanations minus shuffled on the same {d['n']} features: balanced accuracy "
            f"{_pm(d['balanced_accuracy'], d['balanced_accuracy_se'], '+')} (higher {d['higher']}, equal "
            f"{d['equal']}, lower {d['lower']}){auc}"
        )
    real = kinds.get("real")
    if real and real["n_scored"] < real["n"]:
        lines.append(
            f"  {scorer}: {real['n'] - real['n_scored']} of {real['n']} features have no score (no test set of both "
            "classes: e.g. a feature firing in every random window has no negatives); left out of the means"
        )
    if real and real["n_auc"] < real["n_scored"]:
        lines.append(
            f"  {scorer}: no AUC for {real['n_scored'] - real['n_auc']} of {real['n_scored']} scored features (the "
            "judge gave no P(yes): the endpoint returned no log-probabilities, or they were scored before AUCs were "
            "stored)"
        )
    return lines
