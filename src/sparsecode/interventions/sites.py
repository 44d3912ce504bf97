"""Where a dictionary sits in a model: the hook point it reads, and the point its output stands for.

For an SAE both are the same point (it reconstructs what it reads). For a transcoder they differ: it reads a
module's input (say, the MLP's) and predicts another point's activations (the MLP's output), so editing its
latents changes the *target* point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError, DataError
from ..hooks import HookPoint
from ..sae import SparseAutoencoder


@dataclass(frozen=True)
class Site:
    """A dictionary placed in a model."""

    sae: SparseAutoencoder
    """The dictionary, acting on raw activations (as ``load_run`` returns it)."""
    read: HookPoint
    """The point whose activations it encodes."""
    write: HookPoint
    """The point its reconstruction / prediction stands for (``read`` itself for an SAE)."""
    name: str = ""
    """A label for reports, e.g. the hooked module's path."""

    @property
    def n_latents(self) -> int:
        return int(self.sae.cfg.n_latents)

    def check_latent(self, latent: int) -> int:
        """``latent`` as an int, or a one-line ConfigError when it is not one of this dictionary's latents."""
        if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < self.n_latents:
            raise ConfigError(
                f"feature {latent} is out of range: {self.name or 'the dictionary'} has {self.n_latents} latents "
                f"(0-{self.n_latents - 1})"
            )
        return latent


def site_of_run(run: Any, model: nn.Module | None = None) -> Site:
    """The site of a loaded run (``sparsecode.run.Run``) in ``model`` (default: the run's own model)."""
    src = run.config.source
    if src.kind != "model":
        raise DataError(f"{run.path}: this run was trained on {src.kind} data, not on a model's activations")
    model = run.model if model is None else model
    read = HookPoint.at(model, src.hook, src.hook_side)
    write = read if src.target_hook is None else HookPoint.at(model, src.target_hook, src.target_hook_side)
    return Site(sae=run.sae, read=read, write=write, name=src.hook if src.target_hook is None else src.target_hook)


def as_site(target: Any, model: nn.Module | None = None) -> Site:
    """A :class:`Site` from a Site or a loaded run."""
    return target if isinstance(target, Site) else site_of_run(target, model)
