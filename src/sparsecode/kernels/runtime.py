"""What every compiled (numba) kernel shares: the threading layer, fast-math flags, thread count and the
claiming of row chunks.

With ``NUMBA_DISABLE_JIT=1`` the kernels run as plain Python (slowly, but a debugger can step through them):
``claim`` then adds to the counter directly, as only one thread runs.
"""

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

JIT = not numba.config.DISABLE_JIT
"""Whether the kernels are compiled (False under ``NUMBA_DISABLE_JIT=1``: they run as Python)."""

CHUNK_ROWS = 64
"""Rows per claimed chunk in the compiled row kernels."""


def compiled_threads() -> int:
    """Run the compiled kernels on as many threads as torch uses (numba keeps its own pool); 1 without the JIT."""
    if not JIT:
        return 1
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


def _claim_in_python(counter, chunk):
    start = counter[0]
    counter[0] += chunk
    return start


@numba.njit(inline="always")
def _claim_compiled(counter, chunk):  # pragma: no cover - compiled
    return _fetch_add(counter, chunk)


claim = _claim_compiled if JIT else _claim_in_python
"""``claim(counter, chunk)``: the first row of the next unclaimed chunk of ``chunk`` rows (``counter``:
np.zeros(1, np.int64), shared by the threads of one kernel call). Threads take chunks as they finish, so a core
slowed by other work takes fewer; with fixed halves the other thread would wait for it at the end."""
