"""A ViT with random weights for the image-model demo in docs/worlds.md, and the image-model source's throughput.

    python bench/vision_model.py --out models/vit-tiny-random [--layers 12 --hidden 192 --heads 3 --image 224
        --patch 16 --seed 0] [--hook layers.5 --views 64 --threads 1]

No pretrained image model ships in a package (the hub is unreachable here), so the demo builds one from a
transformers config: ViT-Tiny's shape (12 blocks, width 192, 3 heads, 16 x 16 patches of a 224 x 224 input) with
seeded random weights, saved with its image processor as an ordinary model folder that `sparsecode train --model`
loads by path. Then it times one pass of ``--views`` views of scikit-image's photographs through the image-model
source up to ``--hook`` (views per second, rows per second). With a pretrained model (``--model
google/vit-base-patch16-224`` when the hub is reachable, or its downloaded folder) the same commands apply.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def build(out: Path, layers: int, hidden: int, heads: int, image: int, patch: int, seed: int) -> None:
    """Save a seeded random-init ViT and its image processor to ``out``."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image,
        patch_size=patch,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
    )
    ViTModel(config).save_pretrained(out)
    ViTImageProcessor(size={"height": image, "width": image}).save_pretrained(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hook", default="layers.5", help="module timed (its output)")
    p.add_argument("--views", type=int, default=64, help="views timed (0: only build the model)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    import torch

    from sparsecode.sources import VisionSource, VisionSourceConfig

    torch.set_num_threads(a.threads)
    build(a.out, a.layers, a.hidden, a.heads, a.image, a.patch, a.seed)
    print(
        f"wrote {a.out}: ViT {a.layers} x {a.hidden}, {a.patch}px patches of {a.image}x{a.image}, random (seed {a.seed})"
    )
    if a.views < 2:
        return
    source = VisionSource(VisionSourceConfig(model=str(a.out), hook=a.hook, views=a.views, eval_fraction=0.5))
    start, rows = time.perf_counter(), 0
    for split in ("train", "eval"):
        for batch in source.iter_batches(split):
            rows += len(batch)
    seconds = time.perf_counter() - start
    print(
        f"{a.views} views to {a.hook} ({source.per_view} rows each, d = {source.d_in}), {a.threads} thread(s): "
        f"{seconds:.2f} s, {a.views / seconds:.1f} views/s, {rows / seconds:.0f} rows/s"
    )


if __name__ == "__main__":
    main()
