"""The feature database of an image-model run (``sources/vision.py``): as for image patches (``features/images.py``)
each token row is a one-token "chunk", so the usual statistics and examples apply; an example is shown as the image
region its token covers, cut from the image with a margin of context around it and outlined, and the region's pixel
box is stored beside it (``boxes`` table)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .images import picture_data_uri

MARGIN = 1.0
"""Context around a token's box in a shown region, in box sizes on every side."""
MIN_SIDE = 96
"""Regions smaller than this many pixels on their longer side are enlarged (nearest neighbour) to at least it."""
OUTLINE = (255, 64, 0)
"""RGB of the line drawn around the token's own box."""
OUTLINE_WIDTH = 2
"""Width of that line in shown pixels; it is drawn just outside the box, so the box's pixels are untouched."""


def region(image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The (h, w, 3) part of ``image`` (H, W, 3) around ``box`` (top, left, height, width) with MARGIN of context
    (clipped at the image's edges), and the box within it (top, left, height, width)."""
    top, left, h, w = box
    y0, x0 = max(0, top - math.ceil(h * MARGIN)), max(0, left - math.ceil(w * MARGIN))
    y1, x1 = min(image.shape[0], top + h + math.ceil(h * MARGIN)), min(image.shape[1], left + w + math.ceil(w * MARGIN))
    return image[y0:y1, x0:x1], (top - y0, left - x0, h, w)


def region_data_uri(image: np.ndarray, box: tuple[int, int, int, int]) -> str:
    """A PNG ``data:`` URI of the region around ``box`` in ``image``, enlarged by a whole factor to at least
    MIN_SIDE pixels, with the box outlined just outside it."""
    from PIL import Image, ImageDraw

    part, (top, left, h, w) = region(image, box)
    scale = max(1, math.ceil(MIN_SIDE / max(part.shape[:2])))
    pic = Image.fromarray(np.ascontiguousarray(part)).resize(
        (part.shape[1] * scale, part.shape[0] * scale), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(pic)
    for i in range(1, OUTLINE_WIDTH + 1):
        y0, x0, y1, x1 = top * scale - i, left * scale - i, (top + h) * scale - 1 + i, (left + w) * scale - 1 + i
        draw.rectangle((x0, y0, x1, y1), outline=OUTLINE)
    return picture_data_uri(pic)


def pictures(source: Any, rows: set[int]) -> list[tuple[str, str]]:
    """(key, data URI) rows of the ``pictures`` table: "patch:ROW" for every token row shown."""
    out = []
    for row in sorted(rows):
        img, top, left, h, w = source.box(row)
        out.append((f"patch:{row}", region_data_uri(source.images[img], (top, left, h, w))))
    return out


def boxes(source: Any, rows: set[int]) -> list[tuple[int, str, int, int, int, int]]:
    """Rows of the ``boxes`` table: (row, image name, top, left, height, width) of every token row shown."""
    out = []
    for row in sorted(rows):
        img, top, left, h, w = source.box(row)
        out.append((row, source.image_names[img], top, left, h, w))
    return out


def labels(source: Any, rows: set[int]) -> dict[int, str]:
    """Display text of each shown token row: its image, then its box's top-left corner and size."""
    out = {}
    for row in rows:
        img, top, left, h, w = source.box(row)
        out[row] = f"{source.image_names[img]} ({top},{left}) {h}x{w}"
    return out


def vision_meta(source: Any) -> dict[str, Any]:
    c = source.config
    return {
        "model": c.model or "a torch module passed from Python",
        "hook": c.hook,
        "hook_side": c.hook_side,
        "world": "vision",
        "images": c.images,
        "logit_embedding": "none: an image model's tokens have no token embedding to read the decoder through",
    }
