"""A real-model interop check: a trained sparsecode run, exported to SAELens and sparsify, loaded by those libraries,
and their encode compared with sparsecode's on held-out activations of the run's own model; then the exported folders
saved again by the peer library itself (SAELens save_model, sparsify save_to_disk) and those folders imported back
as runs (for `sparsecode eval / features / serve`).

    make bench-setup
    .venv/bin/sparsecode train --hook encoder.layer.3 --arch topk --k 32 --latents 1536 --tokens 500k \
        --corpus pydoc --out runs/ic
    PYTHONPATH=src .venv-bench/bin/python bench/interop_real.py runs/ic --out runs/ic-interop

Prints, per peer: rows compared, max |latent difference|, rows whose active sets are identical, max |reconstruction
difference|; and the paths of the two imported runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its triton decoder needs a GPU; the eager one is exact

import torch


def held_out_rows(run_dir: Path, n: int) -> torch.Tensor:
    """The first ``n`` rows of the run source's eval split, (n, d_in)."""
    from sparsecode.run import load_run
    from sparsecode.sources import open_source

    source = open_source(load_run(run_dir).config.source)
    rows, total = [], 0
    for batch in source.iter_batches("eval"):
        rows.append(batch.acts)
        total += batch.acts.shape[0]
        if total >= n:
            break
    return torch.cat(rows)[:n].float()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the exports and the imported runs (new)")
    p.add_argument("--rows", type=int, default=4096)
    args = p.parse_args()
    import importlib.util

    missing = [name for name in ("sae_lens", "sparsify") if importlib.util.find_spec(name) is None]
    if missing:  # the product's venv never has the peers
        print(f"skipping: {', '.join(missing)} not installed here (run in .venv-bench: make bench-setup)")
        return 0

    from sae_lens import SAE
    from sparsify import SparseCoder

    from sparsecode.interop.runs import export_run, import_run
    from sparsecode.run import load_run

    ours = load_run(args.run).sae.eval()
    x = held_out_rows(args.run, args.rows)  # (rows, d_in)
    with torch.no_grad():
        lat = ours.encode(x)
        rec = ours.decode(lat)
    args.out.mkdir(parents=True, exist_ok=False)
    for fmt in ("saelens", "sparsify"):
        folder = args.out / f"export-{fmt}"
        info = export_run(args.run, fmt, folder)
        with torch.no_grad():
            if fmt == "saelens":
                peer = SAE.load_from_disk(str(folder))
                plat = peer.encode(x)
                prec = peer.decode(plat)
                hook_folder = args.out / "saelens-saved"
                peer.save_model(hook_folder)  # written by SAELens itself
            else:
                peer = SparseCoder.load_from_disk(folder / info["hook"])
                enc = peer.encode(x)
                plat = torch.zeros_like(lat).scatter_(-1, enc.top_indices, enc.top_acts)
                prec = peer.decode(enc.top_acts, enc.top_indices)
                hook_folder = args.out / "sparsify-saved" / info["hook"]
                peer.save_to_disk(hook_folder)  # written by sparsify itself
        same = ((plat != 0) == (lat != 0)).all(dim=1).float().mean().item()
        print(
            f"{fmt} ({type(peer).__name__}, hook {info['hook']}): {x.shape[0]} held-out rows, "
            f"max|dlatents| {float((plat - lat).abs().max()):.2e}, identical active sets on {same:.2%} of rows, "
            f"max|drecon| {float((prec - rec).abs().max()):.2e}"
        )
        r = import_run(str(hook_folder), args.out / f"run-{fmt}", model=info["model"])
        print(f"  saved by {fmt} itself, imported back: {r['out']} ({r['arch']}, model {r['model']}, hook {r['hook']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
