"""`sparsecode explain RUN`: explain and score the chosen features, storing each as it finishes.

Features are worked on concurrently (a thread per request in flight); the database is read and written by the
calling thread alone. A feature is saved in one transaction once its explanation and scores are all in, so
stopping at any point (Ctrl-C, --max-requests, an endpoint that fails for good) loses at most the features in
flight, and running the same command again carries on. Then, once every chosen feature is explained, each is
scored again with another feature's explanation (a shuffled baseline: what an unrelated explanation scores).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataError, Interrupted
from ..layout import FEATURES_FILE
from .config import ExplainConfig
from .llm import BudgetExhausted, ChatClient, LLMError, Usage
from .prompts import (
    PROMPT_VERSION,
    detection_messages,
    explain_messages,
    fuzzing_messages,
    parse_explanation,
    render,
)
from .scoring import Context, Item, Score, detection_items, fuzzing_items, score
from .store import ExplainStore

EXPLANATION_TOKENS = 24


@dataclass
class Job:
    """One feature to explain and/or score, with everything the worker needs (read by the main thread)."""

    feature: int
    explanation: str | None
    """None: write one first. For a baseline job, the other feature's explanation."""
    explanation_of: int
    top: list[Context]
    quantile: list[Context]
    negatives: list[Context]


@dataclass
class Done:
    feature: int
    new_explanation: str | None
    scores: dict[str, Score]
    explanation_of: int


class Malformed(Exception):
    """The explainer's reply held no explanation."""


def explain_run(
    run_dir: str | Path,
    client: ChatClient,
    usage: Usage,
    config: ExplainConfig | None = None,
    features: list[int] | None = None,
    top_density: int | None = None,
    progress: bool = True,
    prices: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Explain and score ``features`` (ids) or the ``top_density`` most frequent live features of the run.

    Returns a summary: features chosen / done / failed, requests and tokens used, mean scores (real and shuffled)
    over every feature scored in the database. Raises LLMError (after saving what finished) if the model cannot
    be asked any more, Interrupted on Ctrl-C.
    """
    config = config or ExplainConfig()
    store = ExplainStore(Path(run_dir) / FEATURES_FILE)
    try:
        chosen = _choose(store, features, top_density)
        if config.redo:
            store.forget(chosen)
        runner = _Runner(store, client, usage, config, progress, prices)
        stopped = runner.run_phase("explain", _explain_jobs(store, chosen, config), False)
        if config.baseline and stopped is None:
            stopped = runner.run_phase("baseline", _baseline_jobs(store, chosen, config), True)
        explained = store.explanations()
        return {
            "chosen": len(chosen),
            "explained": sum(1 for f in chosen if f in explained),
            "failed": runner.failed,
            "stopped": stopped,
            "requests": usage.requests,
            "prompt_tokens": usage.prompt_tokens if usage.reported else None,
            "completion_tokens": usage.completion_tokens if usage.reported else None,
            "cost": usage.cost(prices),
            "scores": store.summary(),
            "path": str(store.path),
        }
    finally:
        store.close()


def _choose(store: ExplainStore, features: list[int] | None, top_density: int | None) -> list[int]:
    if features is None:
        return store.top_density(top_density or 100)
    bad = [f for f in features if f >= store.n_latents]
    if bad:
        raise DataError(f"no feature {bad[0]}: this dictionary has features 0 to {store.n_latents - 1}")
    live = store.live(features)
    if not live:
        raise DataError("none of the chosen features ever fires in the feature database: nothing to explain")
    return live


def _explain_jobs(store: ExplainStore, chosen: list[int], config: ExplainConfig) -> Iterator[Job]:
    explained, scored = store.explanations(), store.scored(False)
    for f in chosen:
        if f in explained and set(config.scorer_list) <= scored.get(f, set()):
            continue
        yield Job(f, explained.get(f), f, *store.contexts(f), store.negatives(f))


def _baseline_jobs(store: ExplainStore, chosen: list[int], config: ExplainConfig) -> Iterator[Job]:
    """Each explained feature paired with another's explanation: a random cycle through them (no fixed points)."""
    explained = store.explanations()
    order = [f for f in chosen if f in explained]
    if len(order) < 2:
        return
    random.Random(f"{config.seed}:baseline").shuffle(order)
    scored = store.scored(True)
    for i, f in enumerate(order):
        if set(config.scorer_list) <= scored.get(f, set()):
            continue
        other = order[(i + 1) % len(order)]
        yield Job(f, explained[other], other, *store.contexts(f), store.negatives(f))


def work(job: Job, client: ChatClient, config: ExplainConfig) -> Done:
    """Explain the job's feature if needed, then ask the judge about each scorer's test set."""
    explanation, new = job.explanation, None
    if explanation is None:
        shown = [render(c.tokens, c.firing) for c in job.top[: config.explain_examples]]
        explanation = parse_explanation(client.chat(explain_messages(shown), EXPLANATION_TOKENS, first_line=True))
        if explanation is None:
            raise Malformed(job.feature)
        new = explanation
    held_out = job.top[config.explain_examples :] + job.quantile
    scores = {}
    for scorer in config.scorer_list:
        rng = random.Random(f"{config.seed}:{job.feature}:{scorer}")  # the same test set for real and baseline
        if scorer == "detection":
            items, ask = detection_items(held_out, job.negatives, config.test_examples, rng), detection_messages
        else:
            items, ask = fuzzing_items(held_out, config.test_examples, rng), fuzzing_messages
        scores[scorer] = _judge(client, explanation, items, ask)
    return Done(job.feature, new, scores, job.explanation_of)


def _judge(client: ChatClient, explanation: str, items: list[Item], ask: Callable) -> Score:
    return score(items, client.judge([ask(explanation, item.excerpt) for item in items]))


class _Runner:
    """Runs jobs with ``client.concurrency`` in flight and saves each result as it comes in."""

    def __init__(
        self,
        store: ExplainStore,
        client: ChatClient,
        usage: Usage,
        config: ExplainConfig,
        progress: bool,
        prices: tuple[float, float] | None,
    ) -> None:
        self.store, self.client, self.usage, self.config = store, client, usage, config
        self.progress, self.prices = progress, prices
        self.failed: list[int] = []
        self.stop = threading.Event()

    def run_phase(self, label: str, jobs: Iterator[Job], baseline: bool) -> str | None:
        """Run ``jobs``; None when all ran, else why it stopped early ("max-requests")."""
        pending = list(jobs)
        if not pending:
            return None
        bar = tqdm(total=len(pending), desc=label, unit="feature", disable=not self.progress, dynamic_ncols=True)
        width = max(1, self.client.concurrency)
        queue, in_flight = iter(pending), set()
        fatal: BaseException | None = None
        stopped = None
        with ThreadPoolExecutor(max_workers=width) as pool:
            try:
                while True:
                    while fatal is None and stopped is None and len(in_flight) < width:
                        job = next(queue, None)
                        if job is None:
                            break
                        in_flight.add(pool.submit(work, job, self.client, self.config))
                    if not in_flight:
                        break
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        outcome = self._collect(future, baseline)
                        if isinstance(outcome, BudgetExhausted):
                            stopped = "max-requests"
                        elif isinstance(outcome, BaseException):
                            fatal = fatal or outcome
                        bar.update(1)
                        self._postfix(bar)
            except KeyboardInterrupt:
                self.stop.set()
                for future in in_flight:
                    future.cancel()
                bar.close()
                raise Interrupted(
                    f"interrupted: the features finished so far are saved in {self.store.path}; run the same "
                    "command again to continue"
                ) from None
        bar.close()
        if fatal is not None:
            raise LLMError(f"{fatal} -- features finished before this are saved; run again to continue") from None
        return stopped

    def _collect(self, future: Future, baseline: bool) -> BaseException | None:
        """Save a finished job; return the exception that should stop the phase, if any."""
        try:
            done: Done = future.result()
        except Malformed as e:
            self.failed.append(int(e.args[0]))
            return None
        except (LLMError, BudgetExhausted) as e:
            return e
        judge = self.client.name
        explanation = None if done.new_explanation is None else (done.new_explanation, self.client.name)
        self.store.save(done.feature, explanation, done.scores, baseline, done.explanation_of, judge, PROMPT_VERSION)
        return None

    def _postfix(self, bar: tqdm) -> None:
        u = self.usage
        info = {"requests": u.requests}
        if u.reported:
            info["tokens"] = f"{u.prompt_tokens:,}+{u.completion_tokens:,}"
        cost = u.cost(self.prices)
        if cost is not None:
            info["cost"] = f"${cost:.4f}"
        bar.set_postfix(info, refresh=False)
