"""Interleaved timing for the bench scripts: one call of each function per round, so load drifts hit all alike."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable


def interleaved_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, by name: ``repeats`` rounds, each calling every function once in order."""
    return {name: [wall for wall, _ in calls] for name, calls in interleaved_wall_and_cpu(functions, repeats).items()}


def interleaved_wall_and_cpu(
    functions: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[tuple[float, float]]]:
    """(wall seconds, CPU seconds of all this process's threads) of each call, by name, as ``interleaved_times``
    runs them; CPU / wall is how many cores the call kept busy on average."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, cpu = time.perf_counter(), time.process_time()
            function()
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def step_shape_parser(description: str | None, repeats: int) -> argparse.ArgumentParser:
    """An argument parser with the bench's TopK step shape (--rows --latents --d-in --k), --repeats and --threads."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--latents", type=int, default=6144)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=2)
    return ap
