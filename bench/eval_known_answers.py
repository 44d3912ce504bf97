"""Print the evaluation metrics on data whose answer is known (the numbers the tests assert, shown in full):

    python bench/eval_known_answers.py

1. Synthetic source (32 features in 64 dims): a dictionary equal to the true features (encoder = its
   pseudo-inverse) vs a random dictionary: MMCS, recovery, feature F1, and the random-MMCS baseline.
2. Dark matter on x = sparse part + dense part, error = (linear map of x) + noise, with a planted
   linear share of the error variance: the share the analysis finds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from sparsecode.eval import evaluate_run
from sparsecode.eval.dark_matter import dark_matter
from sparsecode.run import RunConfig
from sparsecode.sae import ReLUConfig, build_sae
from sparsecode.sources import SyntheticSource, SyntheticSourceConfig


def _dictionary_runs() -> None:
    cfg = SyntheticSourceConfig(n_features=32, dim=64, active=3.0, seed=0)
    true = SyntheticSource(cfg).true_features  # (32, 64)
    good = build_sae(ReLUConfig(d_in=64, n_latents=48, b_dec_init="zeros"))
    with torch.no_grad():
        good.W_dec.zero_()
        good.W_dec[torch.randperm(48, generator=torch.Generator().manual_seed(0))[:32]] = true
        good.W_enc.copy_(torch.linalg.pinv(good.W_dec))
        good.b_enc.fill_(-1e-5)
        good.b_dec.zero_()
    random = build_sae(ReLUConfig(d_in=64, n_latents=48, seed=1))
    with tempfile.TemporaryDirectory() as tmp:
        for name, sae in (("true dictionary", good), ("random dictionary", random)):
            run = Path(tmp) / name.replace(" ", "-")
            RunConfig(source=cfg, sae=sae.cfg).save(run)
            sae.save(run / "sae.safetensors")
            gt = evaluate_run(run, max_rows=20000, progress=False, quick=True)["ground_truth"]
            print(
                f"{name:<18} MMCS {gt['mmcs']:.4f} (random baseline {gt['random_mmcs_baseline']:.4f})  "
                f"recovered {gt['recovery_fraction_0.9']:.3f}  precision {gt['precision']:.4f}  "
                f"recall {gt['recall']:.4f}  F1 {gt['f1']:.4f}"
            )


def _dark_matter() -> None:
    g = torch.Generator().manual_seed(1)
    n, d = 20000, 64
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = torch.randn(n, d, generator=g) * (torch.rand(n, d, generator=g) < 0.2) + torch.randn(n, d, generator=g)
        lin = x @ (torch.randn(d, d, generator=g) / d**0.5)
        noise = torch.randn(n, d, generator=g)
        lin = lin / lin.var(0).sum().sqrt() * share**0.5
        noise = noise / noise.var(0).sum().sqrt() * (1 - share) ** 0.5
        r = dark_matter(x, x - (lin + noise))
        print(f"dark matter: planted linear share {share:.2f} -> found {r['error_linear_r2']:.4f}")


if __name__ == "__main__":
    _dictionary_runs()
    _dark_matter()
