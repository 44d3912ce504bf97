"""write a run's dictionary in the SAELens or sparsify layout
Write RUN's SAE as a SAELens folder (cfg.json + sae_weights.safetensors, loadable with SAE.load_from_disk) or a
sparsify save folder (HOOK/cfg.json + HOOK/sae.safetensors, loadable with SparseCoder.load_from_disk). A dictionary
the target library has no equivalent for is refused with the reason. See docs/interop.md.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsecode export runs/demo --format saelens --out exported/demo-saelens
  sparsecode export runs/demo --format sparsify --out exported/demo-sparsify
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder (trained or imported)")
    p.add_argument("--format", required=True, choices=("saelens", "sparsify"), help="layout to write")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create (must not exist)")


def run(args: argparse.Namespace) -> int:
    from ..interop.runs import export_run

    r = export_run(args.run, args.format, args.out)
    print(f"wrote {r['out']}: {r['arch']} as {r['format']}; hook {r['hook']}, model {r['model']}")
    return 0
