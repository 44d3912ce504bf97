"""Does a feature matter? Zero it over a corpus and measure how much worse the model predicts the next token.

For each chosen latent, over the kept tokens (non-pad, non-special) of up to ``max_tokens`` tokens of a split:
the model runs clean and with the latent zeroed at every kept position (the dictionary's error added back, so
nothing else changes), and at every scored position t (the model predicting token t+1) we take

- ΔCE_t = CE_ablated − CE_clean (nats), and KL_t = KL(p_clean ‖ p_ablated) of the next-token distributions;
- split by whether the latent was **active** at t (its own tokens) or not (every other scored token of the
  corpus, including later tokens of the same text, which the ablation reaches through attention).

A text in which the latent never fires is left exactly as it is by zeroing it (an exact no-op, see
:mod:`.edit`), so its tokens count as "other" tokens with ΔCE = KL = 0 without running the model again.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from .edit import intervene, zero_latent
from .lm import chunk_batches, next_token_losses
from .sites import site_of_run


@dataclasses.dataclass
class _Sums:
    ce_active: float = 0.0
    kl_active: float = 0.0
    n_active: int = 0
    ce_other: float = 0.0
    kl_other: float = 0.0
    n_other: int = 0

    def add(self, dce: torch.Tensor, kl: torch.Tensor, active: torch.Tensor) -> None:
        self.ce_active += float(dce[active].double().sum())
        self.kl_active += float(kl[active].double().sum())
        self.n_active += int(active.sum())
        self.ce_other += float(dce[~active].double().sum())
        self.kl_other += float(kl[~active].double().sum())
        self.n_other += int((~active).sum())


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def ablate_features(
    run: Any,
    features: list[int] | None = None,
    *,
    top: int = 10,
    corpus: list[str] | None = None,
    split: str = "eval",
    max_tokens: int = 8192,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """The ablation effect of ``features`` (or the ``top`` densest live ones) of a causal-LM run, over its own
    corpus's ``split`` or over ``corpus`` (files or folders, read as `sparsecode train --corpus` reads them)."""
    if corpus is not None:
        run.config.source = dataclasses.replace(run.config.source, corpus=list(corpus))
        run._source = None  # reopen on the new corpus
    source = run.source()
    if not source.is_causal_lm:
        raise DataError(f"{run.path}: ablation measures next-token loss; {source.config.model} is not a causal LM")
    site = site_of_run(run)
    for f in features or []:
        site.check_latent(f)
    if features is None and (not isinstance(top, int) or top < 1):
        raise ConfigError(f"top must be a positive number of features, got {top!r}")
    batches = chunk_batches(source, split, max_tokens, batch_size)
    clean_ce, n_scored = 0.0, 0
    latents_per_batch: list[torch.Tensor] = []
    with torch.inference_mode():
        for enc, keep in tqdm(batches, desc="ablate (clean)", disable=not progress, leave=False):
            with intervene(site, positions=keep, record=True) as trace:
                logits = run.model(**enc).logits
            ce, _, _ = next_token_losses(logits, enc)
            clean_ce += float(ce.sum())
            n_scored += int(ce.numel())
            latents_per_batch.append(trace.latents[0])
    kept = sum(int(k.sum()) for _, k in batches)
    fires = sum((lat > 0).sum(0) for lat in latents_per_batch)  # (n_latents,)
    if features is None:
        alive = int((fires > 0).sum())
        features = fires.argsort(descending=True)[: min(top, alive)].tolist()
    sums = {f: _Sums() for f in features}
    with torch.inference_mode():
        for (enc, keep), lat in tqdm(
            list(zip(batches, latents_per_batch)), desc="ablate", disable=not progress, leave=False
        ):
            clean_logits = run.model(**enc).logits
            ce_clean, valid, _ = next_token_losses(clean_logits, enc)
            active_all = torch.zeros((*keep.shape, lat.shape[1]), dtype=torch.bool)  # (B, T, n_latents)
            active_all[keep.cpu()] = lat > 0
            for f in features:
                active = active_all[..., f][:, :-1][valid.cpu()]  # (n_scored,)
                if not active.any():
                    sums[f].add(torch.zeros(len(active)), torch.zeros(len(active)), active)
                    continue
                with intervene(site, [zero_latent(f)], positions=keep):
                    ce_abl, _, kl = next_token_losses(run.model(**enc).logits, enc, clean_logits)
                sums[f].add((ce_abl - ce_clean).cpu(), kl.cpu(), active)
    rows = []
    for f in features:
        s = sums[f]
        rows.append(
            {
                "feature": int(f),
                "density": float(fires[f]) / kept if kept else 0.0,
                "active_tokens": s.n_active,
                "other_tokens": s.n_other,
                "ce_increase_active": _mean(s.ce_active, s.n_active),
                "ce_increase_other": _mean(s.ce_other, s.n_other),
                "kl_active": _mean(s.kl_active, s.n_active),
                "kl_other": _mean(s.kl_other, s.n_other),
                "ce_increase_all": _mean(s.ce_active + s.ce_other, s.n_active + s.n_other),
            }
        )
    return {
        "run": str(run.path),
        "site": site.name,
        "split": split if corpus is None else f"{split} split of {', '.join(corpus)}",
        "tokens": kept,
        "scored_tokens": n_scored,
        "ce_clean": clean_ce / n_scored if n_scored else math.nan,
        "features": rows,
    }


def format_ablation(result: dict[str, Any]) -> str:
    """The result as a table, one feature a line."""

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = [
        (
            f"ablation at {result['site']} over {result['scored_tokens']:,} scored tokens ({result['split']}); "
            f"clean CE {result['ce_clean']:.4f} nats"
        ),
        (
            f"{'feature':>8} {'density':>8} {'active':>7}  {'dCE active':>10} {'dCE other':>10}  "
            f"{'KL active':>10} {'KL other':>10}"
        ),
    ]
    for r in result["features"]:
        lines.append(
            f"{r['feature']:>8} {r['density']:>8.4f} {r['active_tokens']:>7}  {num(r['ce_increase_active']):>10} "
            f"{num(r['ce_increase_other']):>10}  {num(r['kl_active']):>10} {num(r['kl_other']):>10}"
        )
    return "\n".join(lines)
