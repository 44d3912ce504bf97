"""Splicing a dictionary into a model, and editing its latents there.

Both context managers act at a :class:`~sparsecode.interventions.sites.Site` (or a loaded run): in every forward
pass run by this thread inside the block, the activations x at the site's read point are encoded, f = encode(x),
the latents are edited, f' = edit(f), and the site's write point y (= x for an SAE) becomes

- with ``add_error`` (the default of :func:`intervene`): y + (f' − f) @ W_dec, i.e. the reconstruction from f'
  plus the dictionary's error y − reconstruct(x, f). Only the edited latents move the output; with no edit (or
  an edit that changes no latent, such as zeroing a latent that is not active) the block is an exact no-op: the
  added term is exactly zero, so the model's outputs are bitwise unchanged;
- without it (the default of :func:`splice`): reconstruct(x, f'), the dictionary's reconstruction (for a
  transcoder, its prediction of the target) replacing y.

Only the rows at ``positions`` change; every other position keeps its exact value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..hooks import intercept
from .sites import Site, as_site

Op = Literal["set", "scale", "add"]
Positions = torch.Tensor | Callable[[torch.Tensor], torch.Tensor | None] | None
"""None: every position. A (batch, seq) bool tensor: those positions. A function of the hooked (batch, seq, d)
tensor returning such a mask (or None for every position), for forward passes of varying shape (generation with a
KV cache runs the prompt first, then one new token at a time)."""


@dataclass(frozen=True)
class LatentEdit:
    """One change to one latent, applied where the intervention acts."""

    latent: int
    """Index of the latent (feature id)."""
    op: Op
    """"set": to ``value``; "scale": multiply by ``value``; "add": add ``value`` (in the latent's own units)."""
    value: float

    def __post_init__(self) -> None:
        if self.op not in ("set", "scale", "add"):
            raise ConfigError(f"latent edit op must be 'set', 'scale' or 'add', got {self.op!r}")
        if not isinstance(self.value, (int, float)) or self.value != self.value or abs(self.value) == float("inf"):
            raise ConfigError(f"latent edit value must be a finite number, got {self.value!r}")


def set_latent(latent: int, value: float) -> LatentEdit:
    """Clamp ``latent`` to ``value``."""
    return LatentEdit(latent, "set", float(value))


def scale_latent(latent: int, factor: float) -> LatentEdit:
    """Multiply ``latent`` by ``factor``."""
    return LatentEdit(latent, "scale", float(factor))


def zero_latent(latent: int) -> LatentEdit:
    """Ablate ``latent`` (set it to zero)."""
    return LatentEdit(latent, "set", 0.0)


def add_latent(latent: int, value: float) -> LatentEdit:
    """Add ``value`` to ``latent`` (steering by the feature's decoder direction, ``value`` times)."""
    return LatentEdit(latent, "add", float(value))


def apply_edits(latents: torch.Tensor, edits: Iterable[LatentEdit]) -> torch.Tensor:
    """(n, n_latents) latents after ``edits``, in order (a copy; the input is not changed)."""
    out = latents.clone()
    for e in edits:
        col = out[:, e.latent]
        if e.op == "set":
            col.fill_(e.value)
        elif e.op == "scale":
            col.mul_(e.value)
        else:
            col.add_(e.value)
    return out


@dataclass
class Trace:
    """What an intervention saw, when asked to record: per forward pass, the latents at the edited positions."""

    latents: list[torch.Tensor] = field(default_factory=list)
    """(n, n_latents) latents as encoded, one tensor per forward pass (on the CPU)."""
    edited: list[torch.Tensor] = field(default_factory=list)
    """(n, n_latents) the same after the edits."""


def _mask(positions: Positions, h: torch.Tensor) -> torch.Tensor | None:
    mask = positions(h) if callable(positions) else positions
    if mask is None:
        return None
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(h.shape[:2]):
        raise DataError(
            f"positions must be a (batch, seq) bool mask of shape {tuple(h.shape[:2])}, got {tuple(mask.shape)} "
            f"{mask.dtype}"
        )
    return mask.to(h.device)


@contextmanager
def intervene(
    target: Any,
    edits: Iterable[LatentEdit] = (),
    *,
    positions: Positions = None,
    add_error: bool = True,
    model: nn.Module | None = None,
    record: bool = False,
) -> Iterator[Trace]:
    """Within the block, the site's latents are edited by ``edits`` at ``positions`` in every forward pass of this
    thread (see the module docstring). ``target`` is a :class:`Site` or a loaded run (then ``model`` defaults to
    the run's model). Yields a :class:`Trace`, filled when ``record`` is true."""
    site = as_site(target, model)
    edits = list(edits)
    for e in edits:
        site.check_latent(e.latent)
    trace = Trace()
    read: list[torch.Tensor] = []  # transcoders: the read point's activations of the current forward pass

    def on_write(y: torch.Tensor) -> torch.Tensor | None:
        x = y if site.read is site.write else (read.pop() if read else None)
        if x is None:
            raise DataError(f"{site.name}: the target point ran before the point the transcoder reads")
        mask = _mask(positions, y)
        return _edited(site, x, y, mask, edits, add_error, trace if record else None)

    def on_read(x: torch.Tensor) -> None:
        read.append(x)

    with ExitStack() as stack:
        if site.read is not site.write:
            stack.enter_context(intercept(site.read, on_read))
        stack.enter_context(intercept(site.write, on_write))
        yield trace


def splice(
    target: Any,
    edits: Iterable[LatentEdit] = (),
    *,
    positions: Positions = None,
    add_error: bool = False,
    model: nn.Module | None = None,
    record: bool = False,
) -> Any:
    """Within the block, the dictionary's reconstruction replaces the activations at its site (``add_error``
    puts its error back, making the splice exact); ``edits`` as in :func:`intervene`."""
    return intervene(target, edits, positions=positions, add_error=add_error, model=model, record=record)


def _edited(
    site: Site,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    edits: list[LatentEdit],
    add_error: bool,
    trace: Trace | None,
) -> torch.Tensor | None:
    """The write point's new tensor (B, T, d_out), or None to leave it as it is."""
    sae = site.sae
    dev = sae.W_dec.device
    if x.shape[-1] != sae.cfg.d_in:
        raise DataError(
            f"{site.name}: the hooked activations are {x.shape[-1]} wide, the dictionary reads {sae.cfg.d_in}"
        )
    x_rows = (x if mask is None else x[mask]).reshape(-1, x.shape[-1])  # (n, d_in)
    with torch.no_grad():
        f = sae.encode(x_rows.to(dev, torch.float32))  # (n, n_latents)
        f_new = apply_edits(f, edits)  # (n, n_latents)
        if trace is not None:
            trace.latents.append(f.cpu())
            trace.edited.append(f_new.cpu())
        if add_error:
            if not edits:
                return None
            rows = (f_new - f) @ sae.W_dec  # (n, d_out): exactly zero where no latent changed
            y_rows = y if mask is None else y[mask]
            new_rows = y_rows.reshape(rows.shape).to(dev, torch.float32) + rows
        else:
            new_rows = sae.reconstruct(x_rows.to(dev, torch.float32), f_new)  # (n, d_out)
    if mask is None:
        return new_rows.reshape(y.shape).to(y.device, y.dtype)
    out = y.clone()
    out[mask] = new_rows.to(y.device, y.dtype)
    return out
