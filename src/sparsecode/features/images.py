"""The feature database of an image-patch run: each patch is a one-token "chunk", so the usual statistics and
top / quantile examples apply unchanged; the examples are stored as pictures (the patch as cut from the gray image,
before whitening, and each latent's atom), shown by the dashboard as images instead of token strings."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from typing import Any

import numpy as np
import torch

from .collect import FeatureAccumulator


def png_data_uri(pixels: np.ndarray) -> str:
    """A gray PNG of ``pixels`` (h, w), stretched to its own min..max, as a ``data:`` URI."""
    from PIL import Image

    lo, hi = float(pixels.min()), float(pixels.max())
    scaled = np.zeros_like(pixels) if hi <= lo else (pixels - lo) / (hi - lo)
    return picture_data_uri(Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L"))


def picture_data_uri(picture: Any) -> str:
    """A PIL image as a PNG ``data:`` URI (what the ``pictures`` table stores)."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def collect_patches(source: Any, sae: Any, config: Any, progress: bool) -> tuple[FeatureAccumulator, list, int]:
    """Encode every patch of ``config.split``; (accumulator, one-row "chunks" [[row]], first row of the split).

    A chunk's single "token id" is the patch's row index in the source, so contexts name their patch."""
    from tqdm.auto import tqdm

    lo = 0 if config.split == "train" else source.n_train
    n = source.num_rows(config.split)
    if config.max_tokens is not None:
        n = min(n, config.max_tokens)
    chunks = [[lo + i] for i in range(n)]
    acc = FeatureAccumulator(sae.cfg.n_latents, config.top_n, config.n_samples, 0, 0, seed=config.seed)
    done = 0
    with torch.inference_mode(), tqdm(total=n, unit="patch", desc="features", disable=not progress) as bar:
        for batch in source.iter_batches(config.split):
            x = batch.acts[: n - done].to(config.device)  # (b, patch * patch)
            latents = sae.encode(x)[:, None, :]  # (b, 1, n_latents): each patch a chunk of one token
            acc.update(latents, torch.ones(len(x), 1, dtype=torch.bool), torch.arange(done, done + len(x)))
            done += len(x)
            bar.update(len(x))
            if done >= n:
                break
    return acc, chunks, lo


def pictures(source: Any, sae: Any, rows: set[int]) -> list[tuple[str, str]]:
    """(key, data URI) rows of the ``pictures`` table: "patch:ROW" for every patch shown (raw gray pixels, as cut
    from the image before the patch mean and whitening are removed) and "atom:ID" for every latent's decoder row."""
    from ..sources.images import load_images

    c = source.config
    images = [img for _, img in load_images(c.images, c.seed)]
    out = []
    for row in sorted(rows):
        img, top, left = (int(v) for v in source.positions[row])
        out.append((f"patch:{row}", png_data_uri(images[img][top : top + c.patch, left : left + c.patch])))
    atoms = sae.W_dec.detach().float().cpu().numpy().reshape(-1, c.patch, c.patch)  # (n_latents, p, p)
    out.extend((f"atom:{f}", png_data_uri(a)) for f, a in enumerate(atoms))
    return out


def patch_labels(source: Any, rows: set[int]) -> dict[int, str]:
    """Display text of each shown patch (its "token"): the image it comes from and its top-left corner."""
    out = {}
    for row in rows:
        img, top, left = (int(v) for v in source.positions[row])
        out[row] = f"{source.image_names[img]} ({top},{left})"
    return out


def image_settings(config: Any) -> Any:
    """The build settings for patches: a context is the patch itself (no neighbours)."""
    return dataclasses.replace(config, context_left=0, context_right=0)


def image_meta(source: Any, config: Any) -> dict[str, Any]:
    c = source.config
    return {
        "model": f"image patches of {c.images}",
        "hook": f"{c.patch}x{c.patch} patches ({c.whiten} whitening)",
        "hook_side": None,
        "world": "images",
        "logit_embedding": "none: image patches have no token embedding",
        "patch": c.patch,
    }


def top_labels(feature_rows: list[list], texts: dict[int, str]) -> None:
    """Replace each feature row's centre "token ids" (patch rows) with the names of their images."""
    for feature in feature_rows:
        feature[8] = json.dumps(list(dict.fromkeys(texts[t].split(" (")[0] for t in feature[8]))[:5])
