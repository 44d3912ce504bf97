"""Token ids as people read them, and the tokens a feature's decoder direction promotes or suppresses."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

_PLACEHOLDER = re.compile(r"^(\[unused\d+\]|<unused\d+>|<extra_id_\d+>)$")


def token_texts(tokenizer: Any, ids: list[int]) -> dict[int, str]:
    """Display text of each token id, with the leading space a word-initial token stands for.

    WordPiece marks word continuations with "##" (shown without a space; other pieces get one); byte-level
    BPE and SentencePiece pieces are turned back into text by the tokenizer itself.
    """
    wordpiece = type(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)).__name__ == "WordPiece"
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = {}
    for i, piece in zip(ids, pieces):
        piece = "" if piece is None else str(piece)
        if wordpiece:
            out[i] = piece[2:] if piece.startswith("##") else " " + piece
        else:
            out[i] = tokenizer.convert_tokens_to_string([piece])
    return out


def logit_embedding(model: nn.Module, d_in: int) -> tuple[torch.Tensor, str] | tuple[None, str]:
    """(vocab, d) token embedding to read decoder directions through, and a label saying which one was used.

    Causal LMs: the output embedding (LM head). Encoders loaded without a head (e.g. MiniLM as AutoModel):
    the input word embeddings, which BERT-style models tie to their masked-LM head. Returns (None, reason)
    when neither fits the hooked width.
    """
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        weight, label = out.weight, "output embedding (LM head)"
    else:
        inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if inp is None or getattr(inp, "weight", None) is None:
            return None, "the model has no token embedding"
        weight, label = inp.weight, "input word embeddings (tied; the model has no LM head)"
    if weight.shape[1] != d_in:
        return None, f"the hooked width {d_in} differs from the embedding width {weight.shape[1]}"
    return weight.detach(), label


@torch.inference_mode()
def promoted_tokens(
    directions: torch.Tensor, embedding: torch.Tensor, n: int, exclude: list[int], block: int = 512
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each direction (m, d): the ``n`` tokens whose embedding (vocab, d) has the largest and the smallest
    dot product with it. Returns top ids, top scores, bottom ids, bottom scores, each (m, n); ``exclude``d
    token ids never appear. Works through the directions in blocks so memory stays at block × vocab."""
    embedding = embedding.to(directions.device, torch.float32)
    penalty = torch.zeros(embedding.shape[0], device=directions.device)  # (vocab,)
    if exclude:
        penalty[torch.tensor(sorted(set(exclude)), device=directions.device)] = torch.inf
    n = min(n, embedding.shape[0] - len(set(exclude)))
    parts: list[tuple[torch.Tensor, ...]] = []
    for s in range(0, directions.shape[0], block):
        scores = directions[s : s + block].float() @ embedding.T  # (block, vocab)
        top = (scores - penalty).topk(n, dim=1)
        bottom = (scores + penalty).topk(n, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(4))  # type: ignore[return-value]


def excluded_token_ids(tokenizer: Any) -> list[int]:
    """Special and placeholder tokens ([unused7], <extra_id_0>, ...): their embeddings are untrained noise."""
    vocab = tokenizer.get_vocab()
    return sorted(set(tokenizer.all_special_ids) | {i for t, i in vocab.items() if _PLACEHOLDER.match(t)})
