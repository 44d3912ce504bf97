"""Settings shared by the compiled (numba) CPU kernels of every stage."""

from __future__ import annotations

import numba
import torch

# numba's OpenMP layer and torch's OpenMP runtime slow each other down (measured: a TopK step 1.5x slower);
# numba's own thread pool does not
numba.config.THREADING_LAYER = "workqueue"

FASTMATH = {"nsz", "arcp", "contract", "reassoc", "afn"}
"""Fast-math without "no NaN / no inf": as fast here, and an all -inf row stays well defined."""


def compiled_threads() -> int:
    """Run the compiled kernels on as many threads as torch uses (numba keeps its own pool)."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads
