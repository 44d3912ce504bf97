"""Interleaved timing for the bench scripts: one call of each function per round, so load drifts hit all alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, by name: ``repeats`` rounds, each calling every function once in order."""
    return {name: [wall for wall, _ in calls] for name, calls in interleaved_wall_and_cpu(functions, repeats).items()}


def interleaved_wall_and_cpu(functions: dict[str, Callable[[], object]],
                             repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall seconds, CPU seconds of all this process's threads) of each call, by name, as ``interleaved_times``
    runs them; CPU / wall is how many cores the call kept busy on average."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, cpu = time.perf_counter(), time.process_time()
            function()
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    return times
