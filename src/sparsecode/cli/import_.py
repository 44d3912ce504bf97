"""make a run folder from a SAELens, sparsify, dictionary_learning or Gemma Scope checkpoint
Read a dictionary another library wrote (a folder, a file, or a hub id org/repo[/subfolder]; the format is
detected from its files) and write it as a sparsecode run folder, so that `eval`, `features` and `serve` work on
it unchanged. The hook point comes from the checkpoint (TransformerLens names are mapped to the model's modules
for GPT-2, Llama/SmolLM, Gemma, GPT-NeoX/Pythia and BERT) unless --hook says otherwise. An architecture sparsecode
has no equivalent for is refused, never approximated. See docs/interop.md.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsecode import path/to/saelens_folder --out runs/gpt2-l6
  sparsecode import path/to/sparsify_save/layers.6 --model HuggingFaceTB/SmolLM2-135M --out runs/smol-l6
  sparsecode import google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71 --out runs/gs20
  sparsecode import ae_folder --format dictionary_learning --hook blocks.3.hook_resid_post --model gpt2 --out runs/dl
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..interop import FORMATS

    p.add_argument("source", metavar="PATH_OR_HUB_ID", help="checkpoint folder or file, or org/repo[/subfolder]")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (must not exist)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="source format (auto: detect)")
    p.add_argument("--model", help="the model it reads (hub id or folder), when the checkpoint does not name it")
    p.add_argument(
        "--hook",
        help="where it plugs in: a TransformerLens name (blocks.6.hook_resid_post) or a module path "
        "(transformer.h.6, add :input for the module's input); default: what the checkpoint says",
    )
    p.add_argument(
        "--corpus", nargs="+", help="texts eval and features read (.txt/.jsonl files or folders); default: embedded"
    )


def run(args: argparse.Namespace) -> int:
    from ..interop.runs import import_run

    r = import_run(args.source, args.out, format=args.format, model=args.model, hook=args.hook, corpus=args.corpus)
    print(
        f"wrote {r['out']}: {r['arch']} ({r['n_latents']} latents, d_in {r['d_in']}) from {r['format']}; "
        f"model {r['model']}, hook {r['hook']}" + (f", target {r['target']}" if r["target"] else "")
    )
    for note in r["notes"]:
        print(f"  {note}")
    print(f"  next: sparsecode eval {r['out']}   |   sparsecode features {r['out']}")
    return 0
