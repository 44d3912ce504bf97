"""Spliced fidelity: how much the model's own output changes when the hooked activations are
replaced by their reconstructions.

The model is run on the eval chunks normally ("clean") and then with the hooked module's output
(or first input, for ``hook_side="input"``) overwritten at the kept positions (the positions that
are activation rows: non-pad, non-special) by

- ``spliced``: ``reconstruct(acts)``;
- ``zero_ablation``: zeros;
- ``mean_ablation``: the mean activation over the kept positions of all evaluated chunks.

All other positions keep their exact clean values, and the substituted tensor has the hooked
tensor's dtype, so an identity ``reconstruct`` reproduces the clean run bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ..hooks import HookPoint, edit, intercept

Replace = Callable[[torch.Tensor], torch.Tensor]
"""Maps the kept rows (n, d) float32 to their replacement (n, d)."""

MODES = ("clean", "spliced", "zero_ablation", "mean_ablation")


def _run(
    source: Any,
    batch: dict[str, torch.Tensor],
    keep: torch.Tensor,
    replace: Replace | None,
    capture: list[torch.Tensor] | None = None,
) -> Any:
    """One forward pass; ``replace`` substitutes the kept rows (given as float32), ``capture`` collects them
    (float64 sum, count)."""

    def record(h: torch.Tensor) -> None:
        if capture is not None:
            rows = h[keep].to(torch.float64)  # (n, d)
            capture.append(rows.sum(dim=0).cpu())
            capture.append(torch.tensor(float(rows.shape[0]), dtype=torch.float64))

    point = HookPoint(source.module, source.config.hook_side)
    with ExitStack() as hooks:
        hooks.enter_context(intercept(point, record))  # registered first: sees the clean activations
        if replace is not None:
            hooks.enter_context(edit(point, lambda rows: replace(rows.to(torch.float32)), positions=keep))
        extra = {"use_cache": False} if source.is_causal_lm else {}
        return source.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)


def _sentence_embedding(out: Any, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, d) attention-mask-weighted mean of the final hidden states, as sentence-transformers pools."""
    h = getattr(out, "last_hidden_state", None)
    if h is None:
        raise DataError(f"spliced fidelity: {type(out).__name__} has no last_hidden_state to pool into an embedding")
    h = h.to(torch.float64)  # (B, T, d)
    m = attention_mask.to(torch.float64).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # (B, d)


def _next_token_ce(out: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[float, int]:
    """(Σ cross-entropy, count) of predicting token t+1 from position t, over pairs where both are non-pad."""
    targets = input_ids[:, 1:]  # (B, T-1)
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)
    logits = out.logits[:, :-1][valid].float()  # (n_valid, V): only the scored positions, never (B, T, V) in float64
    ce = torch.nn.functional.cross_entropy(logits, targets[valid], reduction="none")  # (n_valid,)
    return float(ce.double().sum()), int(valid.sum())


def _next_token_kl(clean: Any, other: Any, attention_mask: torch.Tensor) -> tuple[float, int]:
    """(Σ KL(p_clean ‖ p_other), count) over positions t whose next token t+1 is scored (as in the CE)."""
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)
    p_logits, q_logits = clean.logits[:, :-1][valid], other.logits[:, :-1][valid]  # (n_valid, V)
    total = 0.0
    for i in range(0, p_logits.shape[0], 256):  # row blocks: a few (256, V) float32 temporaries at a time
        log_p = torch.log_softmax(p_logits[i : i + 256].float(), dim=-1)
        log_q = torch.log_softmax(q_logits[i : i + 256].float(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum(-1).double().sum())
    return total, int(valid.sum())


MIN_ABLATION_GAP = 0.01
"""Loss recovered is undefined (None) when an ablation raises the CE by less than this fraction of the clean CE:
the ratio would divide by a difference the size of its noise (a random model scored 1.019)."""


def loss_recovered(
    ce_ablated: float, ce_spliced: float, ce_clean: float, ablation: str
) -> tuple[float | None, str | None]:
    """(ce_ablated − ce_spliced) / (ce_ablated − ce_clean), or None with a warning when the ablation baseline is too
    close to clean for the ratio to mean anything; a value outside [0, 1] comes with a warning too."""
    gap = ce_ablated - ce_clean
    if gap <= MIN_ABLATION_GAP * abs(ce_clean):
        return None, (
            f"loss recovered vs {ablation.replace('_', '-')} is undefined: the ablation raises the CE by only "
            f"{gap:+.4g} nats over clean ({ce_clean:.4g}), too little for a ratio"
        )
    value = (ce_ablated - ce_spliced) / gap
    if not 0.0 <= value <= 1.0:
        side = "lower than the clean model's" if value > 1 else "higher than the ablation's"
        return value, (
            f"loss recovered vs {ablation.replace('_', '-')} is {value:.3f}, outside [0, 1]: the spliced CE is {side}"
        )
    return value, None


@torch.inference_mode()
def spliced_fidelity(
    source: Any,
    reconstruct: Replace,
    split: str = "eval",
    max_chunks: int | None = 64,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare the model's output with and without the hooked activations replaced by ``reconstruct``.

    ``source`` is a :class:`sparsecode.sources.hf.ModelSource`; ``reconstruct`` maps kept rows
    (n, d_in) float32 (on the model's device) to their reconstructions.

    Encoder models (``source.is_causal_lm`` false), with e the mask-weighted mean pool of the last
    hidden state of a chunk (its sentence embedding):

    - ``embedding_cosine`` = (1/C) Σ_chunks cos(e_clean, e_spliced), and likewise
      ``embedding_cosine_zero_ablation`` and ``embedding_cosine_mean_ablation``.

    Causal LMs, with CE = mean next-token cross-entropy over all non-pad (t, t+1) pairs:

    - ``ce_clean``, ``ce_spliced``, ``ce_zero_ablation``, ``ce_mean_ablation``;
    - ``ce_increase`` = ce_spliced − ce_clean;
    - ``kl_spliced`` = mean over the same positions of KL(p_clean ‖ p_spliced) of the next-token
      distributions, in nats; ``kl_zero_ablation`` and ``kl_mean_ablation`` likewise;
    - ``loss_recovered_zero_ablation`` = (ce_zero_ablation − ce_spliced) / (ce_zero_ablation − ce_clean),
      and ``loss_recovered_mean_ablation`` likewise: None, with a line in ``warnings``, when the ablation raises
      the CE by at most ``MIN_ABLATION_GAP`` of the clean CE; a value outside [0, 1] gets a warning line too.
    """
    chunks = source.chunks(split)
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    if not chunks:
        raise DataError(f"spliced fidelity: the {split} split has no chunks")
    groups = [chunks[i : i + batch_size] for i in range(0, len(chunks), batch_size)]
    model = source.model
    was_training = model.training
    model.eval()
    try:
        # Pass 1: clean outputs, and the mean kept activation over the whole split for mean-ablation.
        clean: list[Any] = []
        capture: list[torch.Tensor] = []
        for group in tqdm(groups, desc="splice (clean)", unit="batch", disable=not progress, leave=False):
            batch = source.tokenize(group)
            keep = source.keep_mask(batch["input_ids"], batch["attention_mask"])
            clean.append(_summarise(source, _run(source, batch, keep, None, capture), batch))
        n_kept = float(sum(capture[1::2]))
        if n_kept == 0:
            raise DataError(f"spliced fidelity: no kept token positions in the {split} split")
        mean_act = (sum(capture[0::2]) / n_kept).to(torch.float32)  # (d,)

        replacements: dict[str, Replace] = {
            "spliced": reconstruct,
            "zero_ablation": lambda a: torch.zeros_like(a),
            "mean_ablation": lambda a: mean_act.to(a.device).expand_as(a),
        }
        # Pass 2: each replacement on the same batches.
        per_mode: dict[str, list[Any]] = {name: [] for name in replacements}
        kl: dict[str, list[tuple[float, int]]] = {name: [] for name in replacements}
        for group in tqdm(groups, desc="splice", unit="batch", disable=not progress, leave=False):
            batch = source.tokenize(group)
            keep = source.keep_mask(batch["input_ids"], batch["attention_mask"])
            # causal LMs: the clean logits again, for the KL divergence (keeping every batch's would not fit)
            clean_out = _run(source, batch, keep, None) if source.is_causal_lm else None
            for name, replace in replacements.items():
                out = _run(source, batch, keep, replace)
                per_mode[name].append(_summarise(source, out, batch))
                if clean_out is not None:
                    kl[name].append(_next_token_kl(clean_out, out, batch["attention_mask"]))
    finally:
        model.train(was_training)

    result: dict[str, Any] = {"splice_chunks": len(chunks), "splice_tokens": int(n_kept)}
    if source.is_causal_lm:
        ce = {name: _mean_ce(v) for name, v in [("clean", clean), *per_mode.items()]}
        result.update({f"ce_{name}": value for name, value in ce.items()})
        result["ce_increase"] = ce["spliced"] - ce["clean"]
        for name, parts in kl.items():
            result["kl_spliced" if name == "spliced" else f"kl_{name}"] = _mean_ce(parts)
        warnings = []
        for abl in ("zero_ablation", "mean_ablation"):
            result[f"loss_recovered_{abl}"], warning = loss_recovered(ce[abl], ce["spliced"], ce["clean"], abl)
            warnings += [warning] if warning else []
        if warnings:
            result["warnings"] = warnings
    else:
        clean_emb = torch.cat(clean)  # (C, d)
        for name, embs in per_mode.items():
            cos = torch.nn.functional.cosine_similarity(clean_emb, torch.cat(embs), dim=1, eps=1e-12)  # (C,)
            key = "embedding_cosine" if name == "spliced" else f"embedding_cosine_{name}"
            result[key] = float(cos.mean())
    return result


def _summarise(source: Any, out: Any, batch: dict[str, torch.Tensor]) -> Any:
    """What each forward pass contributes: (Σ CE, count) for causal LMs, (B, d) embeddings otherwise."""
    if source.is_causal_lm:
        return _next_token_ce(out, batch["input_ids"], batch["attention_mask"])
    return _sentence_embedding(out, batch["attention_mask"]).cpu()


def _mean_ce(parts: list[tuple[float, int]]) -> float:
    total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    if count == 0:
        raise DataError("spliced fidelity: no next-token pairs to score (chunks shorter than 2 tokens)")
    return total / count
