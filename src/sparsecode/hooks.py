"""The one place that puts forward hooks on a model: see, replace or edit what a module receives or returns,
and stop the forward pass once everything wanted has been seen.

A *hook point* is a module and a side: its output (for a tuple or ``ModelOutput``, the first element; the rest
is kept) or its first positional input (a forward pre-hook; a module called with keywords only gives its
``hidden_states`` keyword, else its first one). Everything here is built on :func:`intercept`, which hands that
tensor to a function each time the module runs and lets a returned tensor replace it:

- :func:`capture` records the tensor at one or several points (optionally stopping the forward right after the
  last of them; :func:`run_and_capture` does the forward for you and checks every point was reached);
- :func:`edit` replaces it by ``fn(act)``, at every position or only at chosen (batch, seq) positions.

Every context manager removes its hooks when it exits, also on exceptions. Stopping raises :class:`StopForward`,
the project's only stop-forward exception, which the context that raised it swallows: callers never see it.

**Threads.** A hook acts only on forward passes run by the thread that installed it; in any other thread it
does nothing. So one model can be shared by concurrent request threads (the dashboard) without one request's
capture seeing, stopping or editing another request's forward pass, and without anybody having to take a lock
for a plain forward. (A per-model lock would also work, but only if *every* forward on the model took it,
hooked or not, since another thread's hooks fire inside an unlocked forward too; keying hooks to their thread
cannot be forgotten by a caller.) Forward passes that torch itself spreads over threads (``DataParallel``) are
therefore not hooked. :func:`exclusive` is a per-model lock for the rarer case of changing shared model state
(train/eval mode, weights) while other threads may be running it.
"""

from __future__ import annotations

import difflib
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from .errors import DataError

Side = Literal["output", "input"]
SIDES: tuple[str, ...] = ("output", "input")
K = TypeVar("K", bound=Hashable)
Act = Callable[[torch.Tensor], torch.Tensor | None]
"""Sees the hooked tensor; returns None to leave it alone, or a tensor of the same shape to replace it."""


class StopForward(Exception):
    """Abandons the rest of a forward pass once every wanted activation has been captured.

    Raised by a hook and caught by the context manager that installed it (``owner``); never reaches callers.
    """

    def __init__(self, owner: object) -> None:
        super().__init__("forward pass stopped after the last needed hook point")
        self.owner = owner


@dataclass(frozen=True)
class HookPoint:
    """A module of a model and the side of it that is hooked."""

    module: nn.Module
    """The hooked module itself (see :meth:`at` to find it by name)."""
    side: Side = "output"
    """"output": what the module returns (first element of a tuple); "input": its first positional input."""

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise DataError(f"hook side must be 'output' or 'input', got {self.side!r}")

    @classmethod
    def at(cls, model: nn.Module, path: str, side: Side = "output") -> HookPoint:
        """The point at dotted module path ``path`` of ``model`` (e.g. ``encoder.layer.3``)."""
        return cls(find_module(model, path), side)


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted path ``path``; unknown names raise DataError with close matches."""
    modules = dict(model.named_modules())
    if path and path in modules:
        return modules[path]
    close = difflib.get_close_matches(path, [n for n in modules if n], n=5, cutoff=0.5)
    if close:
        hint = f"close matches: {', '.join(close)}"
    else:
        hint = f"top-level modules: {', '.join(n for n, _ in model.named_children())}"
    raise DataError(f"unknown hook {path!r} in {type(model).__name__}; {hint}")


def split_hidden(value: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The hidden-state tensor inside a module's output or input, and a function rebuilding the value around a
    replacement (other tuple elements / ``ModelOutput`` fields kept as they are)."""
    if isinstance(value, torch.Tensor):
        return value, lambda h: h
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0], lambda h: type(value)([h, *value[1:]])
    if isinstance(value, Mapping) and hasattr(value, "to_tuple") and value:  # a transformers ModelOutput
        first = next(iter(value))
        if isinstance(value[first], torch.Tensor):
            return value[first], lambda h: type(value)(**{**value, first: h})
    raise DataError(
        f"the hooked module gave {type(value).__name__}; expected a tensor or a tuple whose first element is one"
    )


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Callable[[Any], Any]]:
    """The value of a module's first input and a function giving (args, kwargs) with it replaced."""
    if args:
        return args[0], lambda v: ((v, *args[1:]), kwargs)
    if kwargs:  # called with keywords only
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        return kwargs[key], lambda v: (args, {**kwargs, key: v})
    raise DataError("hook side 'input', but the hooked module was called without any input")


@contextmanager
def intercept(point: HookPoint, fn: Act) -> Iterator[None]:
    """Within the block, every time ``point.module`` runs in this thread, ``fn`` sees its hidden tensor
    (e.g. (batch, seq, d)); a tensor returned by ``fn`` replaces it for the rest of the forward pass."""
    owner = threading.get_ident()
    if point.side == "output":

        def hook(_mod: nn.Module, _args: Any, output: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            h, rebuild = split_hidden(output)
            new = fn(h)
            return None if new is None else rebuild(new)

        handle = point.module.register_forward_hook(hook)
    else:

        def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
            # kwargs has a default: a thread that snapshotted the hooks just before this one was removed may call it
            # without kwargs (torch looks up the with-kwargs flag afterwards); it only ever does so as a non-owner.
            if threading.get_ident() != owner:
                return None
            value, replace_input = _first_input(args, kwargs or {})
            h, rebuild = split_hidden(value)
            new = fn(h)
            return None if new is None else replace_input(rebuild(new))

        handle = point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def edit(
    point: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor], positions: torch.Tensor | None = None
) -> Iterator[None]:
    """Within the block, the hooked tensor h (batch, seq, d) becomes ``fn(h)``; with ``positions`` (batch, seq)
    bool, only those rows change: ``fn`` gets ``h[positions]`` (n, d) and returns (n, d), every other position
    keeps its exact value. The result is cast to h's dtype and device, so an identity ``fn`` changes nothing,
    bit for bit."""

    def replace(h: torch.Tensor) -> torch.Tensor:
        if positions is None:
            new = fn(h)
            _check_shape(new, h.shape, "edit")
            return new.to(device=h.device, dtype=h.dtype)
        if h.shape[:2] != positions.shape:
            raise DataError(
                f"hooked activations have shape {tuple(h.shape)}, but positions are {tuple(positions.shape)}"
            )
        mask = positions.to(h.device)
        rows = h[mask]  # (n, d)
        new_rows = fn(rows)  # (n, d)
        _check_shape(new_rows, rows.shape, "edit")
        out = h.clone()
        out[mask] = new_rows.to(device=h.device, dtype=h.dtype)
        return out

    with intercept(point, replace):
        yield


def _check_shape(new: Any, shape: torch.Size, what: str) -> None:
    if not isinstance(new, torch.Tensor) or new.shape != shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise DataError(f"{what}: the replacement has shape {got}, expected {tuple(shape)}")


@contextmanager
def capture(points: Mapping[K, HookPoint], stop: bool = False, clone: bool = False) -> Iterator[dict[K, torch.Tensor]]:
    """Within the block, the yielded dict fills with the hooked tensor of each point (the first time each module
    runs in this thread), keyed as ``points``. The tensors are the model's own, not copies, unless ``clone``
    (then a later module that edits its input in place cannot change what an earlier point captured).

    With ``stop``, the forward pass is abandoned as soon as every point has been captured, so later layers cost
    nothing; the block is then left right after the forward call (put that call last in the block).
    """
    got: dict[K, torch.Tensor] = {}
    token = object()

    def grab(key: K) -> Act:
        def fn(h: torch.Tensor) -> None:
            if key not in got:
                got[key] = h.clone() if clone else h
            if stop and len(got) == len(points):
                raise StopForward(token)

        return fn

    try:
        with ExitStack() as stack:  # removes every hook however the block ends
            for key, point in points.items():
                stack.enter_context(intercept(point, grab(key)))
            yield got
    except StopForward as e:
        if e.owner is not token:  # another capture's stop (an enclosing one): not ours to swallow
            raise


def run_and_capture(
    model: nn.Module, points: Mapping[K, HookPoint], *args: Any, clone: bool = False, **kwargs: Any
) -> dict[K, torch.Tensor]:
    """Run ``model(*args, **kwargs)`` only as far as needed to capture every point; DataError names any point the
    forward pass never reached. ``clone``: as in :func:`capture` (for several points of one forward)."""
    with capture(points, stop=True, clone=clone) as got:
        model(*args, **kwargs)
    missing = [k for k in points if k not in got]
    if missing:
        raise DataError(
            f"hook point {', '.join(map(str, missing))} never reached in the forward pass; "
            "pick a module the forward runs through, e.g. a layer"
        )
    return got


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``model`` (one per model object, created on first use)."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def exclusive(model: nn.Module) -> Iterator[nn.Module]:
    """Hold ``model``'s lock for the block. For callers that change state other threads' forward passes would see
    (train/eval mode, weights): it excludes the other holders of the lock only, so every such caller takes it.
    Hooks from this module need no lock (see the module docstring)."""
    with model_lock(model):
        yield model
