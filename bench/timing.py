"""Interleaved timing for the bench scripts: one call of each function per round, so load drifts hit all alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, by name: ``repeats`` rounds, each calling every function once in order."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times
