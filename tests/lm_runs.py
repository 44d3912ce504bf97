"""Run folders on the tiny random GPT-2 (conftest ``tiny_gpt2_dir``) with dictionaries of known shape, for the
intervention tests: an SAE at any module, or a transcoder from a module's input to its output."""

from __future__ import annotations

from pathlib import Path

import torch

NEVER = 5
"""A latent whose encoder can never make it fire (zero column, very negative bias)."""


def corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"Line {i} says the cat sat on mat number {i * 3} while dogs bark." for i in range(24)]
    (folder / "c.txt").write_text("\n\n".join(lines) + "\n")
    return folder


def write_run(
    run_dir: Path,
    model_dir: Path,
    hook: str,
    *,
    side: str = "output",
    target_hook: str | None = None,
    target_side: str = "output",
    n_latents: int = 24,
    d_in: int = 32,
    d_out: int | None = None,
    arch: str = "relu",
    seed: int = 0,
) -> Path:
    """A run folder whose dictionary has random (seeded) weights scaled to fire on the tiny model's activations,
    and latent NEVER that cannot fire."""
    from sparsecode.run import RunConfig
    from sparsecode.sae import build_sae, sae_config_from_dict
    from sparsecode.sources import ModelSourceConfig

    cfg = {"arch": arch, "d_in": d_in, "n_latents": n_latents, "seed": seed}
    if arch == "transcoder":
        cfg.update(d_out=d_out or d_in, k=6)
    elif arch == "topk":
        cfg.update(k=6)
    sae = build_sae(sae_config_from_dict(cfg))
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, n_latents, generator=g))
        sae.b_enc.copy_(torch.randn(n_latents, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape[0], generator=g) * 0.1)
        sae.W_enc[:, NEVER], sae.b_enc[NEVER] = 0.0, -1e4
    source = ModelSourceConfig(
        model=str(model_dir),
        hook=hook,
        hook_side=side,
        target_hook=target_hook,
        target_hook_side=target_side,
        corpus=[str(corpus(run_dir.parent / f"{run_dir.name}-corpus"))],
        eval_every=2,
        max_length=24,
        batch_size=4,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    RunConfig(source=source, sae=sae.cfg).save(run_dir)
    sae.save(run_dir / "sae.safetensors")
    return run_dir
