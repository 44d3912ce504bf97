"""Text in and out of a run's model: prompts, single-token targets, corpus batches and next-token losses."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..sources.hf import special_affixes


def check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the prompt is empty; give some text, e.g. --prompt 'The weather today is'")


def encode_prompt(source: Any, prompt: str) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (1, T) of a prompt to continue: the tokenizer's leading special tokens
    (BOS / [CLS]) and the prompt's tokens, without trailing ones (the model continues the text)."""
    check_prompt(prompt)
    prefix, _ = special_affixes(source.tokenizer)
    ids = source.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n_pos = getattr(source.model_config, "max_position_embeddings", None) or getattr(
        source.model_config, "n_positions", None
    )
    if isinstance(n_pos, int) and len(prefix) + len(ids) > n_pos:
        raise ConfigError(f"the prompt has {len(ids)} tokens; the model takes at most {n_pos - len(prefix)}")
    return source.tokenize([prefix + ids])


def single_token(tokenizer: Any, text: str, what: str = "target") -> int:
    """The id of ``text`` as exactly one token (as it reads after other text: a leading space is part of it)."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"the {what} is empty; give one token, e.g. ' Paris'")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = ", ".join(repr(tokenizer.decode([i])) for i in ids)
        raise ConfigError(
            f"the {what} {text!r} is {len(ids)} tokens ({pieces}), not one; give a single token"
            + (f", e.g. {tokenizer.decode(ids[:1])!r}" if ids else "")
        )
    return int(ids[0])


def chunk_batches(source: Any, split: str, max_tokens: int, batch_size: int) -> list[tuple[dict, torch.Tensor]]:
    """The first chunks of ``split`` holding up to ``max_tokens`` kept tokens, as (encoding, keep mask) batches.
    The mask is the source's: for causal LMs it leaves out each chunk's first position (the attention sink, see
    ``ModelSourceConfig.exclude_first_positions``), where the dictionary was not trained."""
    if max_tokens < 1 or batch_size < 1:
        raise ConfigError(f"max_tokens and batch_size must be >= 1, got {max_tokens} and {batch_size}")
    chunks = source.chunks(split)
    picked, total = [], 0
    for c, n in zip(chunks, source.row_counts(split).tolist(), strict=True):
        if total >= max_tokens:
            break
        picked.append(c)
        total += n
    if total == 0:
        raise DataError(f"the {split} split of the corpus has no tokens; give another corpus or split")
    out = []
    for i in range(0, len(picked), batch_size):
        enc = source.tokenize(picked[i : i + batch_size])
        out.append((enc, source.keep_mask(enc["input_ids"], enc["attention_mask"])))  # mask (B, T)
    return out


def next_token_losses(
    logits: torch.Tensor, enc: dict[str, torch.Tensor], clean: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per scored position t (t and t+1 both real tokens), the cross-entropy of predicting token t+1 (n,), the
    (B, T-1) bool mask of scored positions, and with ``clean`` logits KL(p_clean ‖ p) (n,) (nats)."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    valid = mask[:, 1:].bool() & mask[:, :-1].bool()  # (B, T-1)
    rows = logits[:, :-1][valid].float()  # (n, V)
    ce = torch.nn.functional.cross_entropy(rows, ids[:, 1:][valid], reduction="none")  # (n,)
    if clean is None:
        return ce, valid, None
    log_q = torch.log_softmax(rows, -1)
    log_p = torch.log_softmax(clean[:, :-1][valid].float(), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (n,)
    return ce, valid, kl
