"""Spliced fidelity of a transcoder: the *target* module's output (say, the MLP's) is replaced by the
transcoder's prediction from the activations at the *input* hook of the same forward pass; ablations zero or
mean-ablate the target instead. Reuses :func:`spliced_fidelity` through a view of the source whose hooked
module is the target module."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ..hooks import HookPoint, intercept
from .splice import Replace, spliced_fidelity


class _TargetView:
    """The model source, seen from its target hook; remembers the last keep mask and the input-hook activations."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.module = source.target_module
        self.config = SimpleNamespace(hook_side=source.config.target_hook_side)
        self.keep: torch.Tensor | None = None  # (B, T) of the batch being run
        self.inputs: torch.Tensor | None = None  # (B, T, d_in) at the input hook, this forward pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def keep_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.keep = self._source.keep_mask(input_ids, attention_mask)
        return self.keep

    def capture(self, h: torch.Tensor) -> None:
        self.inputs = h


def transcoder_spliced_fidelity(
    source: Any, predict: Replace, split: str = "eval", max_chunks: int | None = 64, progress: bool = True
) -> dict[str, Any]:
    """As :func:`spliced_fidelity`, for a source with ``config.target_hook``: ``predict`` maps the kept rows
    (n, d_in) at the input hook to the (n, d_out) that replace the target module's kept rows."""
    view = _TargetView(source)

    def replace(_target_rows: torch.Tensor) -> torch.Tensor:
        assert view.inputs is not None and view.keep is not None
        return predict(view.inputs[view.keep].to(torch.float32))  # (n, d_out)

    with intercept(HookPoint(source.module, source.config.hook_side), view.capture):
        return spliced_fidelity(view, replace, split=split, max_chunks=max_chunks, progress=progress)
