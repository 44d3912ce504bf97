"""Settings shared by the compiled (numba) CPU kernels of every stage."""

from __future__ import annotations

import numba
import torch
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

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


@intrinsic
def _fetch_add(typingctx, counter, value):
    """Atomically ``counter[0] += value``, returning the value before (``counter``: a 1-d int64 array)."""
    signature = types.int64(counter, types.int64)

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, sig.args[0], array, [context.get_constant(types.intp, 0)], wraparound=False
        )
        return builder.atomic_rmw("add", pointer, args[1], "monotonic")

    return signature, codegen


@numba.njit(inline="always")
def claim(counter, chunk):  # pragma: no cover - compiled
    """The first row of the next unclaimed chunk of ``chunk`` rows (``counter``: np.zeros(1, np.int64), shared
    by the threads of one kernel call). Threads take chunks as they finish, so a core slowed by other work
    takes fewer; with fixed halves the other thread would wait for it at the end."""
    return _fetch_add(counter, chunk)


CHUNK_ROWS = 64
"""Rows per claimed chunk in the compiled row kernels."""
