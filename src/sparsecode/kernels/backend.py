"""The one setting that picks the kernels: ``SPARSECODE_KERNELS`` (environment) or ``use(...)`` (code).

- ``auto`` (default): the compiled (numba) kernels wherever they apply (float32 tensors on the CPU), and the encoder's
  top-k from a bfloat16 product with exact float32 rescoring (``screen``) where the CPU has bfloat16 matrix units
  (AMX), where it pays;
- ``compiled``: the compiled kernels, with the float32 encoder product everywhere (no bfloat16 screen);
- ``screen``: the compiled kernels and the bfloat16 screen on any CPU (correct everywhere, faster only with AMX);
- ``torch``: plain torch operations only (still the sparse formulation: embedding bags, no dense latents).

Every choice gives the same results up to float32 rounding and ties (``tests/test_kernels*.py``). Off the CPU, or
in other dtypes, the torch operations run whatever the setting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import ConfigError
from .screen import screen_supported

BACKENDS = ("auto", "compiled", "screen", "torch")
ENV = "SPARSECODE_KERNELS"

_chosen: str | None = None  # set by ``use``; else the environment decides


def current() -> str:
    """The backend in force: ``use``'s if inside one, else ``$SPARSECODE_KERNELS``, else ``auto``."""
    name = _chosen or os.environ.get(ENV) or "auto"
    if name not in BACKENDS:
        raise ConfigError(f"{ENV} must be one of {', '.join(BACKENDS)}, got {name!r}: unset it or pick one of those")
    return name


@contextmanager
def use(name: str) -> Iterator[None]:
    """Run the enclosed code with the kernels ``name`` (one of ``BACKENDS``), e.g. to compare two of them."""
    global _chosen
    if name not in BACKENDS:
        raise ConfigError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    before, _chosen = _chosen, name
    try:
        yield
    finally:
        _chosen = before


def compiled_for(*tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels may serve an operation on ``tensors``: the backend allows them and every tensor
    is float32 on the CPU (each operation checks its own layout needs on top)."""
    return current() != "torch" and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def screen_wanted() -> bool:
    """Whether the encoder's top-k should come from the bfloat16 screen (where it applies): ``screen``, or ``auto`` on
    a CPU with bfloat16 matrix units."""
    name = current()
    return name == "screen" or (name == "auto" and screen_supported())
