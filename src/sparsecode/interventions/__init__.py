"""Use a trained dictionary's features on its model: splice it in, edit latents, steer, ablate, attribute.

Python API (see docs/interventions.md)::

    from sparsecode import load_run
    from sparsecode.interventions import intervene, zero_latent

    run = load_run("runs/smollm2")
    enc = run.tokenizer("The capital of France is", return_tensors="pt")
    with intervene(run, [zero_latent(1234)]):      # the SAE's error is added back: only latent 1234 changes
        logits = run.model(**enc).logits
"""

from .ablate import ablate_features, format_ablation
from .attribute import Attribution, Edge, Node, attribute
from .edit import (
    LatentEdit,
    Trace,
    add_latent,
    apply_edits,
    intervene,
    scale_latent,
    set_latent,
    splice,
    zero_latent,
)
from .sites import Site, as_site, site_of_run

__all__ = [
    "Attribution",
    "Edge",
    "LatentEdit",
    "Node",
    "Site",
    "Trace",
    "ablate_features",
    "add_latent",
    "apply_edits",
    "as_site",
    "attribute",
    "format_ablation",
    "intervene",
    "scale_latent",
    "set_latent",
    "site_of_run",
    "splice",
    "zero_latent",
]
