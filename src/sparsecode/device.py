"""Device names given by users: parsed and checked once, with a one-line error."""

from __future__ import annotations

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
