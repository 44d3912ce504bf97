"""Several runs trained together from one pass over the data: ``sparsecode train`` with several hooks or
dictionary configs.

Runs whose model sources differ only in their hook points read one shared forward pass
(``activations.shared``); every run still has its own store, optimizer, checkpoints and run folder, exactly as
if trained alone (same rows, same order, same weights). The trainers advance one step at a time, always the one
that has trained on the fewest tokens next, so the shared pass never runs far ahead of any of them.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import Interrupted, SparsecodeError
from ..sources.base import Source
from .trainer import Trainer

HOOK_FIELDS = ("hook", "hook_side", "target_hook", "target_hook_side")
"""The model source fields runs may differ in and still share a forward pass."""


def _pass_key(config: Any) -> str | None:
    """What must be equal for two source configs to share a forward pass (None: not a model source)."""
    if config.kind != "model":
        return None
    rest = {k: v for k, v in config.to_dict().items() if k not in HOOK_FIELDS and k != "device"}
    return repr(sorted(rest.items()))


def open_sources(
    configs: Sequence[Any], cache_dir: str | Path | None, progress: bool = False, max_lag_rows: int = 1 << 18
) -> tuple[list[Source], list[Callable[[], None]]]:
    """A source per config, the model sources that can share a forward pass served by one; and for each, what to
    call when its run has finished (stops the shared pass holding rows for it)."""
    from ..activations import CachedSource
    from ..activations.shared import SharedPass
    from .trainer import open_training_source

    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        key = _pass_key(c)
        if key is not None:
            groups.setdefault(key, []).append(i)
    sources: list[Source | None] = [None] * len(configs)
    done: list[Callable[[], None]] = [lambda: None] * len(configs)
    for members in groups.values():
        if len(members) < 2:
            continue
        shared = SharedPass([configs[i] for i in members], max_lag_rows=max_lag_rows)
        shared.wide.validate()
        writers: set[str] = set()  # cache keys with a writer: runs on the same hook share one recording
        for i, view in zip(members, shared.views()):
            done[i] = functools.partial(shared.release, view)
            if cache_dir is None:
                sources[i] = view
                continue
            key = repr(sorted(view.config.to_dict().items()))
            cached = CachedSource(view, cache_dir, progress=progress and i == members[0], write=key not in writers)
            writers.add(key)
            if cached.is_cached("train"):  # read from disk: the shared pass need not keep its rows
                shared.release(view)
            sources[i] = cached
    for i, c in enumerate(configs):
        if sources[i] is None:
            sources[i] = open_training_source(c, cache_dir, progress)
    return sources, done  # type: ignore[return-value]


def fit_together(
    trainers: Sequence[Trainer], resume: bool | Sequence[bool] = False, finished: Sequence[Callable[[], None]] = ()
) -> None:
    """Train every trainer to its budget, one step at a time, the one furthest behind (in tokens) first.

    Ctrl-C stops them all at their next step, each with a checkpoint to resume from; a run that fails (diverges)
    stops alone and is reported at the end, the others train on."""
    resumes = [resume] * len(trainers) if isinstance(resume, bool) else list(resume)
    steps = [t.steps(r, handle_sigint=False) for t, r in zip(trainers, resumes)]
    tokens = [0] * len(trainers)
    active = list(range(len(trainers)))
    interrupted: list[str] = []
    failed: list[str] = []
    previous = _install_sigint_handler(trainers)
    try:
        while active:
            i = min(active, key=lambda j: (tokens[j], j))
            try:
                tokens[i] = next(steps[i])
                continue
            except StopIteration:
                pass
            except Interrupted:
                interrupted.append(str(trainers[i].run_dir))
            except SparsecodeError as e:
                failed.append(f"{trainers[i].run_dir}: {e}")
            active.remove(i)
            if i < len(finished):
                finished[i]()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if failed:
        raise SparsecodeError(f"{len(failed)} of {len(trainers)} runs failed: " + "; ".join(failed))
    if interrupted:
        raise Interrupted(
            f"interrupted; checkpoints saved in {', '.join(interrupted)} — continue them with the same command and "
            f"--resume (or each alone: sparsecode train --resume --out RUN)"
        )


def _install_sigint_handler(trainers: Sequence[Trainer]):
    def handler(signum, frame):
        if any(t._stop_requested for t in trainers):  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        for t in trainers:
            t._stop_requested = True

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        return None
