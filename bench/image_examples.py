"""A picture of an image run's features: each row one feature's top examples as the dashboard shows them.

    python bench/image_examples.py RUN --out docs/worlds-vit-examples.png [--features 4] [--examples 8]

Reads RUN/features.sqlite (built by `sparsecode features RUN` on an image-patch or image-model run) and draws, for
the ``--features`` live features with the largest maximum activation (not picked by hand), their ``--examples``
top examples left to right (strongest first): for an image model the region around the token's box, box outlined;
for patches the patch. The feature id is written at the start of each row.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from pathlib import Path

CELL = 104
"""Pixels per example (pictures are shrunk to fit CELL - 8, never enlarged)."""
LABEL = 64
"""Width of the feature id column."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--features", type=int, default=4)
    p.add_argument("--examples", type=int, default=8)
    a = p.parse_args()

    from PIL import Image, ImageDraw

    from sparsecode.dashboard.db import FeatureDB
    from sparsecode.errors import SparsecodeError

    try:
        db = FeatureDB(a.run / "features.sqlite")
    except SparsecodeError as e:
        sys.exit(f"error: {e}")
    if not db.image_run:
        sys.exit(f"error: {a.run} is not an image run (its examples are text); nothing to draw")
    _, rows = db.list_features(sort="max_act", order="desc", filter="alive", limit=a.features)
    sheet = Image.new("RGB", (LABEL + a.examples * CELL, len(rows) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        feature = db.feature(row["id"])
        draw.text((6, r * CELL + CELL // 2 - 6), f"#{row['id']}", fill="black")
        for i, context in enumerate(feature["contexts"]["top"][: a.examples]):
            pic = Image.open(io.BytesIO(base64.b64decode(context["patch"].split(",", 1)[1]))).convert("RGB")
            pic.thumbnail((CELL - 8, CELL - 8))
            sheet.paste(pic, (LABEL + i * CELL + 4, r * CELL + 4))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(f"wrote {a.out}: features {', '.join(str(r['id']) for r in rows)} x {a.examples} top examples")


if __name__ == "__main__":
    main()
