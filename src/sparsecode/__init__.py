"""sparsecode: find the sparse, linear features hidden in neural representations."""

import os

__version__ = "0.1.0"

OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
"""Environment defaults applied when sparsecode is imported before torch (the CLI always is). torch's OpenMP
workers (GNU libgomp) otherwise busy-wait for milliseconds after every parallel op, and on a machine with few
cores that spinning takes a core from the compiled top-k and backward kernels that run next on their own
threads. 10,000 spins still covers the gap between back-to-back torch ops. A value already set in the
environment wins; once torch is loaded, changing it has no effect."""

for _name, _value in OPENMP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


def load(source, format: str = "auto"):
    """An SAE object (encode / decode / forward) from a run folder, a sparsecode SAE file, a SAELens, sparsify,
    dictionary_learning or Gemma Scope checkpoint, or a hub id ``org/repo[/subfolder]`` (see docs/interop.md)."""
    from .interop import load as _load

    return _load(source, format)
