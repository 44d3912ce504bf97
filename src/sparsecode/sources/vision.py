"""Activations of an image model at a hooked module, over square views cut from the image source's images.

Pipeline (seeded, so a run's config rebuilds the same rows):

* images: a folder, "skimage" or "noise" as in ``sources/images.py``, read as RGB (a folder's files on access);
* ``views`` square views drawn uniformly over every position where a ``crop`` x ``crop`` square fits in an
  image (``crop`` None: the model's input side, so a view is fed at its own resolution); each is resized to the
  input side S when ``crop`` differs, then made into pixel values by the model's image processor with its own
  resizing and cropping off (the geometry is done here, so every token's pixel box is exact);
* one forward pass per batch of views, stopped at the hooked module (``hooks.py``). Its output is either tokens
  (batch, T, d), whose last g * g form a g x g grid over the view, row-major (a ViT's patches; the T - g * g before
  them are prefix tokens: [CLS], registers), or a feature map (batch, d, h, w), an h x w grid;
* one row per grid token (prefix tokens too with ``keep_cls``), views in order, tokens in order. Row r's pixel box
  in its image (``box(r)``): grid cell (i, j) of an h x w grid covers rows i * crop / h .. (i + 1) * crop / h and
  columns j * crop / w .. of the view; a prefix token covers the whole view;
* the last ``eval_fraction`` of the views form the "eval" split.

From Python, any torch module can stand in for the transformers model: ``VisionSource(config, model=module)``
(with ``config.model`` None and ``config.image_size`` set); it gets (batch, 3, S, S) float pixel values in 0..1
unless a ``preprocess`` function (list of PIL images -> pixel tensor) is given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..configs import check_choice, check_float, check_int
from ..device import check_device
from ..errors import ConfigError, DataError
from ..hooks import HookPoint, find_module, run_and_capture
from .base import ActivationBatch, SourceBase, SourceConfigBase, check_split
from .images import RGBImages, images_identity, sample_positions


@dataclass(kw_only=True)
class VisionSourceConfig(SourceConfigBase):
    """Activations of an image model at a hook point, over views of images (see the module docstring)."""

    kind: ClassVar[str] = "vision"
    has_device: ClassVar[bool] = True

    model: str | None = None
    """A transformers image model (local directory or hub name; ViT-style: AutoModel + AutoImageProcessor); None only
    when a torch module is passed to ``VisionSource`` from Python."""
    hook: str
    """Dotted module path inside the model whose activations are taken, e.g. ``encoder.layer.3``."""
    hook_side: str = "output"
    """"output": the module's output (first element of a tuple); "input": its first positional input."""
    images: str = "skimage"
    """A folder of images, "skimage" (scikit-image's sample photographs) or "noise" (white-noise control)."""
    views: int = 256
    """Square views cut from the images in all (train + eval); one row per token of each."""
    crop: int | None = None
    """Side in pixels of each view as cut from its image, resized to the model's input; None: the input side."""
    image_size: int | None = None
    """Side of the model's square input in pixels; None: the image processor's (or the model config's)."""
    keep_cls: bool = False
    """Also make rows of the tokens before the patch grid ([CLS], registers); their pixel box is the whole view."""
    eval_fraction: float = 0.05
    """Fraction of the views held out as the "eval" split."""
    seed: int = 0
    """Seeds the view positions (and the noise control's pixels)."""
    batch_size: int = 16
    """Views per forward pass."""
    device: str = "cpu"
    """Torch device to run the model on, e.g. "cpu" or "cuda:0"."""
    dtype: str = "float32"
    """Model weights dtype: float32, float16 or bfloat16 (rows are always returned as float32)."""

    def __post_init__(self) -> None:
        from .hf import DTYPES

        for name in ("model", "images"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError(f"source.model must be an image model's directory or hub name, got {self.model!r}")
        if not isinstance(self.hook, str) or not self.hook.strip():
            raise ConfigError("source.hook is required: a dotted module path such as 'encoder.layer.3'")
        check_choice("source.hook_side", self.hook_side, ("output", "input"))
        if not isinstance(self.images, str) or not self.images:
            raise ConfigError(f"source.images must be a folder, 'skimage' or 'noise', got {self.images!r}")
        check_int("source.views", self.views, minimum=2)
        if self.crop is not None:
            check_int("source.crop", self.crop, minimum=1)
        if self.image_size is not None:
            check_int("source.image_size", self.image_size, minimum=1)
        if not isinstance(self.keep_cls, bool):
            raise ConfigError(f"source.keep_cls must be true or false, got {self.keep_cls!r}")
        self.eval_fraction = check_float(
            "source.eval_fraction", self.eval_fraction, 0.0, 1.0, low_open=True, high_open=True
        )
        check_int("source.seed", self.seed, minimum=0)
        check_int("source.batch_size", self.batch_size, minimum=1)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"source.device {self.device!r} is not a torch device; use e.g. 'cpu' or 'cuda:0'"
            ) from None
        check_choice("source.dtype", self.dtype, tuple(DTYPES))


# --------------------------------------------------------------------------- loading


def _processor_side(processor: Any) -> int | None:
    """The square side an image processor makes (its centre crop when it crops, else its resize target)."""
    for attr in ("crop_size", "size") if getattr(processor, "do_center_crop", False) else ("size",):
        size = getattr(processor, attr, None)
        get = size.get if hasattr(size, "get") else (lambda k, s=size: getattr(s, k, None))
        for key in ("height", "shortest_edge"):
            if isinstance(get(key), int):
                return int(get(key))
        if isinstance(size, int):
            return size
    return None


def load_image_model(name_or_path: str, device: str, dtype: str) -> tuple[nn.Module, Any, Any]:
    """(model in eval mode without gradients, image processor, transformers config) of an image model; a model
    that is not one (no image processor, or its main input is not ``pixel_values``) raises a one-line DataError."""
    from transformers import AutoImageProcessor

    from .hf import _load_config, _load_error, _load_weights, _offline, _quiet, resolve_model

    path = resolve_model(name_or_path)
    config = _load_config(path)
    try:
        with _quiet():
            processor = AutoImageProcessor.from_pretrained(path, local_files_only=_offline())
    except Exception as e:  # noqa: BLE001 -- transformers raises OSError/ValueError/KeyError/... for a missing one
        if not os.path.isdir(path) and _offline():
            raise _load_error(path, e) from None
        raise DataError(
            f"model '{name_or_path}' is not an image model: it has no image processor (preprocessor_config.json); "
            "give a transformers vision model such as a ViT"
        ) from None
    model = _load_weights(path, config, device, dtype)
    if getattr(model, "main_input_name", None) != "pixel_values":
        raise DataError(
            f"model '{name_or_path}' ({type(model).__name__}) does not take pixel_values as its input; give a "
            "transformers vision model such as a ViT"
        )
    return model, processor, config


# --------------------------------------------------------------------------- the source


class VisionSource(SourceBase):
    """Rows = activations at ``config.hook`` for every token of every view; ``box(row)`` is its pixel box."""

    def __init__(
        self,
        config: VisionSourceConfig,
        model: nn.Module | None = None,
        preprocess: Callable[[list[Any]], torch.Tensor] | None = None,
    ):
        from .hf import DTYPES

        self.config = c = config
        dev = check_device(c.device)
        self.processor: Any = None
        self.model_config: Any = None
        if model is not None:
            self.model = model.to(dev, DTYPES[c.dtype]).eval().requires_grad_(False)
        elif c.model is None:
            raise ConfigError(
                "source.model is required: an image model's directory or hub name (from Python, pass a torch module "
                "as VisionSource(config, model=...))"
            )
        else:
            self.model, self.processor, self.model_config = load_image_model(c.model, c.device, c.dtype)
        self.preprocess = preprocess
        self.module = find_module(self.model, c.hook)
        self.side = self._input_side()
        """Side S of the model's square input in pixels."""
        self.crop = c.crop or self.side
        self.images = RGBImages(c.images, c.seed)
        """(H, W, 3) uint8 RGB images, as fed to the model (before the processor's normalisation); a folder's are read
        from disk on access."""
        self.image_names = self.images.names
        self.view_positions = self._draw_views()
        """(views, 3) int64 (image index, top, left) of every view's top-left corner, train views first."""
        n_eval = max(1, round(c.views * c.eval_fraction))
        self.n_train_views = c.views - n_eval
        if self.n_train_views < 1:
            raise ConfigError(f"source.views {c.views} leaves no training views; raise it")
        self.grid: tuple[int, int] | None = None
        """(h, w) of the token grid at the hook, fixed by the first forward pass."""
        self.n_prefix = 0
        """Tokens before the grid ([CLS], registers)."""
        probe = self._forward(self.view_positions[:1])  # (1, T, d): checks the hook and fixes the layout
        self.d = int(probe.shape[-1])
        self.per_view = (self.n_prefix if c.keep_cls else 0) + self.grid[0] * self.grid[1]
        """Rows each view gives."""
        self.n_train = self.n_train_views * self.per_view
        """Rows of the train split (the eval split's rows are numbered after them)."""

    # -- geometry -----------------------------------------------------------------------------

    def _input_side(self) -> int:
        c = self.config
        side = c.image_size
        if side is None and self.processor is not None:
            side = _processor_side(self.processor)
        if side is None and self.model_config is not None:
            side = getattr(self.model_config, "image_size", None)
            side = side[0] if isinstance(side, (list, tuple)) else side
        if not isinstance(side, int) or side < 1:
            raise ConfigError("the model's input size is unknown: set source.image_size (--image-size N)")
        return side

    def _draw_views(self) -> np.ndarray:
        c, crop = self.config, self.crop
        shapes = self.images.shapes
        usable = [i for i, s in enumerate(shapes) if min(s) >= crop]
        if not usable:
            h, w = min(shapes, key=min)
            what = f"the view side {crop}" if c.crop else f"the model's {crop}x{crop} input"
            raise DataError(
                f"every image is smaller than {what} (smallest {h}x{w}); give larger images or --crop N with N at most "
                f"{min(min(s) for s in shapes)} (views are resized to the model's input)"
            )
        pos = sample_positions([shapes[i] for i in usable], crop, c.views, c.seed)
        pos[:, 0] = np.array(usable)[pos[:, 0]]
        return pos

    def box(self, row: int) -> tuple[int, int, int, int, int]:
        """(image index, top, left, height, width) in pixels of the image region row ``row`` (numbered over the
        train split, then the eval split) covers."""
        view, token = divmod(int(row), self.per_view)
        img, top, left = (int(v) for v in self.view_positions[view])
        cell = token - (self.n_prefix if self.config.keep_cls else 0)
        if cell < 0:  # a prefix token: the whole view
            return img, top, left, self.crop, self.crop
        (h, w), (i, j) = self.grid, divmod(cell, self.grid[1])
        y0, y1 = round(i * self.crop / h), round((i + 1) * self.crop / h)
        x0, x1 = round(j * self.crop / w), round((j + 1) * self.crop / w)
        return img, top + y0, left + x0, y1 - y0, x1 - x0

    # -- forward ------------------------------------------------------------------------------

    def pixel_values(self, views: np.ndarray) -> torch.Tensor:
        """(B, 3, S, S) model input of the views at ``views`` (B, 3) (image, top, left), on the model's device."""
        from PIL import Image

        crop, side = self.crop, self.side
        pictures = []
        for img, top, left in views:
            pic = Image.fromarray(self.images[int(img)][top : top + crop, left : left + crop])
            pictures.append(pic if crop == side else pic.resize((side, side), Image.Resampling.BICUBIC))
        if self.preprocess is not None:
            pv = self.preprocess(pictures)
        elif self.processor is not None:
            pv = self.processor(images=pictures, do_resize=False, do_center_crop=False, return_tensors="pt")
            pv = pv["pixel_values"]
        else:
            pv = torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2).float() / 255
        param = next(self.model.parameters(), None)
        return pv.to(self.config.device, param.dtype if param is not None and param.is_floating_point() else None)

    def _forward(self, views: np.ndarray) -> torch.Tensor:
        """(B, T, d) activations at the hook (tokens in sequence order; a feature map's cells row-major); the first
        call fixes ``grid`` (h, w) and ``n_prefix`` and later calls must agree."""
        pv = self.pixel_values(views)
        points = {"hook": HookPoint(self.module, self.config.hook_side)}
        args, kwargs = ((), {"pixel_values": pv}) if self.processor is not None else ((pv,), {})
        with torch.inference_mode():
            x = run_and_capture(self.model, points, *args, **kwargs)["hook"]
        if x.dim() == 4 and x.shape[0] == len(views):  # a feature map (B, d, h, w): its cells are the tokens
            grid, prefix, x = (int(x.shape[2]), int(x.shape[3])), 0, x.flatten(2).transpose(1, 2)
        elif x.dim() == 3 and x.shape[0] == len(views):
            g = math.isqrt(int(x.shape[1]))
            grid, prefix = (g, g), int(x.shape[1]) - g * g
        else:
            raise DataError(
                f"hook {self.config.hook!r} gave {tuple(x.shape)}; expected tokens (batch, tokens, d) or a feature map "
                f"(batch, d, h, w) with batch {len(views)}; hook another module (e.g. a layer of the encoder)"
            )
        if self.grid is None:
            self.grid, self.n_prefix = grid, prefix
        elif (grid, prefix) != (self.grid, self.n_prefix):
            raise DataError(f"hook {self.config.hook!r} changed its token layout between forward passes")
        return x

    def _rows(self, views: np.ndarray, split: str, first_view: int) -> ActivationBatch:
        x = self._forward(views)  # (B, T, d)
        if not self.config.keep_cls:
            x = x[:, self.n_prefix :]
        x = x.to("cpu", torch.float32)
        B, per_view, d = x.shape
        rows = x.reshape(B * per_view, d)  # (B * per_view, d)
        bad = ~torch.isfinite(rows).all(dim=1)
        if bad.any():
            view = first_view + int(bad.nonzero()[0, 0]) // per_view
            raise DataError(
                f"hook {self.config.hook!r}: non-finite activation in {split} view {view}; try dtype float32"
            )
        tokens = torch.arange(per_view) + (0 if self.config.keep_cls else self.n_prefix)
        return ActivationBatch(
            acts=rows,
            doc_ids=torch.arange(first_view, first_view + B).repeat_interleave(per_view),
            positions=tokens.repeat(B),
        )

    # -- the source protocol ------------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return self.d

    def fingerprint(self) -> dict[str, Any] | None:
        """The model's files, the images' files and the library versions (keys the activation cache); None for a
        torch module passed from Python, which only the caller can identify (such a source is never cached)."""
        import PIL

        from .hf import model_identity

        if self.config.model is None:
            return None
        return {
            **model_identity(self.config.model),
            "images": images_identity(self.config.images),
            "pillow": PIL.__version__,
        }

    def _views(self, split: str) -> tuple[int, int]:
        check_split(split)
        return (0, self.n_train_views) if split == "train" else (self.n_train_views, self.config.views)

    def num_rows(self, split: str = "train") -> int:
        lo, hi = self._views(split)
        return (hi - lo) * self.per_view

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        """Rows ``start_row..`` of ``split``: ``batch_size`` views per forward pass, one batch each (``doc_ids`` = the
        view within the split, ``positions`` = the token within the view's sequence)."""
        check_int("start_row", start_row, minimum=0)
        lo, hi = self._views(split)
        if start_row > self.num_rows(split):
            raise ConfigError(
                f"start_row {start_row} is past the end of the {split} split ({self.num_rows(split)} rows)"
            )
        bs = self.config.batch_size
        first = (
            start_row // self.per_view // bs * bs
        )  # forward batches do not depend on start_row: same rows, bit for bit
        skip = start_row - first * self.per_view
        for a in range(lo + first, hi, bs):
            b = min(a + bs, hi)
            batch = self._rows(self.view_positions[a:b], split, a - lo)
            if skip:
                batch, skip = batch.slice(skip), 0
            yield batch
