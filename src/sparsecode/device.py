"""Device names given by users: parsed and checked once, with a one-line error; and CPU thread limits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import DataError


def check_device(device: str) -> torch.device:
    """``torch.device(device)``, or a DataError if the name is malformed or the device is not available here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DataError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    return dev


_threads_lock = threading.Lock()
_threads_state = {"users": 0, "saved": 0}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave the setting alone). The setting is process-wide,
    so overlapping blocks (concurrent dashboard requests) share one change: the first sets it, the last restores
    the value from before."""
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"threads must be a whole number >= 1, got {n!r}")
    with _threads_lock:
        if _threads_state["users"] == 0:
            _threads_state["saved"] = torch.get_num_threads()
            torch.set_num_threads(n)
        _threads_state["users"] += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_state["users"] -= 1
            if _threads_state["users"] == 0:
                torch.set_num_threads(_threads_state["saved"])
