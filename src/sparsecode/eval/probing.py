"""Sparse probing (after Gurnee et al. 2023, "Finding Neurons in a Haystack") on token-level concepts
that need no labelled data: each concept is a yes/no property of the token's own string.

For every concept and every k, a k-sparse probe picks the k coordinates of a representation with the
largest standardised class-mean difference on the training tokens and fits a logistic regression on
them; it is scored on held-out tokens. Comparing SAE latents with the model's MLP neurons and the
hooked activation's own coordinates ("residual") at equal k shows whether the SAE has put a concept
into a few coordinates.
"""

from __future__ import annotations

import keyword
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ..hooks import HookPoint, run_and_capture
from .logistic import binary_scores, fit_logistic, rank_by_mean_difference
from .neurons import neuron_module_for_hook

PROBE_KS = (1, 2, 4, 8, 16)
LETTERS = string.ascii_lowercase


@dataclass
class TokenRows:
    """Held-out tokens with their representations, aligned row by row."""

    token_ids: torch.Tensor
    """(n,) int64 token ids."""
    doc_ids: torch.Tensor
    """(n,) int64 chunk index of each token in the eval split."""
    reps: dict[str, torch.Tensor]
    """Representation name ("sae", "neurons", "residual") → (n, width) float32."""
    tokens: list[str]
    """The tokenizer's string for each row's token."""


# -- concepts -----------------------------------------------------------------------------------------


def _word_parts(token: str, style: str) -> tuple[bool, str]:
    """(starts a word, text without the tokenizer's word markers) for one token string."""
    if style == "wordpiece":
        return (False, token[2:]) if token.startswith("##") else (True, token)
    marker = "Ġ" if style == "bpe" else "▁"
    if style in ("bpe", "sentencepiece"):
        return (token.startswith(marker), token.lstrip(marker))
    return (True, token)


def tokenizer_style(tokens: list[str]) -> str:
    """'wordpiece' (## marks continuations), 'bpe' (Ġ marks word starts), 'sentencepiece' (▁) or 'plain'."""
    if any(t.startswith("##") for t in tokens):
        return "wordpiece"
    if any(t.startswith("Ġ") for t in tokens):
        return "bpe"
    if any(t.startswith("▁") for t in tokens):
        return "sentencepiece"
    return "plain"


def token_concepts(tokens: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Binary concepts of each token string, and each token's first letter.

    Concepts (all (n,) bool), with "text" the token without word markers (##, Ġ, ▁):

    - ``is_digit``: text is one or more decimal digits;
    - ``is_punctuation``: text is non-empty and all ASCII punctuation;
    - ``is_capitalised``: text starts with an upper-case letter;
    - ``starts_word``: the token begins a word (WordPiece: no ##; BPE: Ġ; SentencePiece: ▁);
    - ``is_python_keyword``: a word-start token whose text is a Python keyword;
    - ``first_letter_x`` for x in a..z: a word-start token whose text starts with letter x (either case).

    The second return value is (n,) int64: index 0..25 of the first letter of word-start alphabetic
    tokens, −1 for every other token.
    """
    style = tokenizer_style(tokens)
    parts = [_word_parts(t, style) for t in tokens]
    punct = set(string.punctuation)
    keywords = set(keyword.kwlist)

    def mask(pred) -> torch.Tensor:
        return torch.tensor([bool(pred(s, t)) for s, t in parts], dtype=torch.bool)

    concepts = {
        "is_digit": mask(lambda s, t: t.isascii() and t.isdigit()),
        "is_punctuation": mask(lambda s, t: bool(t) and all(c in punct for c in t)),
        "is_capitalised": mask(lambda s, t: t[:1].isupper()),
        "starts_word": mask(lambda s, t: s),
        "is_python_keyword": mask(lambda s, t: s and t in keywords),
    }
    letter = torch.tensor(
        [LETTERS.index(t[0].lower()) if s and t[:1].isascii() and t[:1].isalpha() else -1 for s, t in parts],
        dtype=torch.long,
    )
    for i, x in enumerate(LETTERS):
        concepts[f"first_letter_{x}"] = letter == i
    return concepts, letter


def split_train_test(doc_ids: torch.Tensor) -> torch.Tensor:
    """(n,) bool: True for training rows = tokens of even-numbered chunks, so test tokens come from other texts."""
    if doc_ids.unique().numel() < 2:
        return torch.arange(doc_ids.numel()) % 2 == 0
    return doc_ids % 2 == 0


# -- collecting held-out rows from a model source -------------------------------------------------------


@torch.inference_mode()
def collect_token_rows(
    source: Any, sae: torch.nn.Module, max_tokens: int = 8192, device: str = "cpu", progress: bool = True
) -> TokenRows:
    """Run the model over text chunks until ``max_tokens`` kept tokens, capturing at once the hooked
    activation ("residual"), the MLP hidden activations of the same layer ("neurons", when the layer's
    MLP is recognised) and the SAE's latents ("sae").

    Chunks come from the eval split first and, when it holds fewer than ``max_tokens`` tokens, then from
    the train split (a probe needs positives; its own train/test split is by chunk either way).
    ``doc_ids`` number eval chunks 0.. and train chunks after them."""
    model = source.model
    neuron_name = neuron_module_for_hook(model, source.config.hook)
    points = {"residual": HookPoint(source.module, source.config.hook_side)}
    if neuron_name:
        points["neurons"] = HookPoint.at(model, neuron_name)
    parts: dict[str, list[torch.Tensor]] = {"residual": [], "neurons": [], "token_ids": [], "doc_ids": []}
    n_rows, bs = 0, source.config.batch_size
    extra = {"use_cache": False} if source.is_causal_lm else {}
    bar = tqdm(total=max_tokens, desc="probe rows", unit="tok", disable=not progress, leave=False)
    try:
        for start, group in _chunk_groups(source, bs):
            if n_rows >= max_tokens:
                break
            batch = source.tokenize(group)
            keep = source.keep_mask(batch["input_ids"], batch["attention_mask"])  # (B, T)
            grabbed = run_and_capture(
                model, points, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra
            )
            for name, h in grabbed.items():
                parts[name].append(h[keep].to("cpu", torch.float32))
            parts["token_ids"].append(batch["input_ids"][keep].cpu())
            doc = torch.arange(start, start + keep.shape[0])[:, None].expand_as(keep)  # (B, T)
            parts["doc_ids"].append(doc[keep.cpu()])
            n_rows += int(keep.sum())
            bar.update(int(keep.sum()))
    finally:
        bar.close()
    if n_rows == 0:
        raise DataError("probing: the eval split has no kept tokens")
    cut = slice(0, max_tokens)
    residual = torch.cat(parts["residual"])[cut]  # (n, d_in)
    reps = {"sae": _encode(sae, residual, device)}
    if "neurons" in points:
        reps["neurons"] = torch.cat(parts["neurons"])[cut]
    reps["residual"] = residual
    token_ids = torch.cat(parts["token_ids"])[cut]
    tokens = source.tokenizer.convert_ids_to_tokens(token_ids.tolist())
    return TokenRows(token_ids=token_ids, doc_ids=torch.cat(parts["doc_ids"])[cut], reps=reps, tokens=tokens)


def _chunk_groups(source: Any, batch_size: int) -> Iterator[tuple[int, list[list[int]]]]:
    """(number of the first chunk, up to ``batch_size`` chunks): eval chunks, then train chunks (tokenized
    only if reached), numbered on after the eval ones."""
    offset = 0
    for split in ("eval", "train"):
        chunks = source.chunks(split)
        for start in range(0, len(chunks), batch_size):
            yield offset + start, chunks[start : start + batch_size]
        offset += len(chunks)


def _encode(sae: torch.nn.Module, x: torch.Tensor, device: str, batch: int = 4096) -> torch.Tensor:
    return torch.cat(
        [sae.encode(x[i : i + batch].to(device)).to("cpu", torch.float32) for i in range(0, x.shape[0], batch)]
    )  # (n, n_latents)


# -- probing ------------------------------------------------------------------------------------------


def balanced_weights(
    labels: torch.Tensor, train: torch.Tensor, min_positives: int, max_per_class: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced train and test row weights for each concept.

    ``labels`` (C, n) bool, ``train`` (n,) bool. Within each side (train / test), every positive (up to
    ``max_per_class``, seeded sample) and as many seeded random negatives get weight 1, the rest 0.
    Returns (train weights (C, n), test weights (C, n), usable (C,) bool: at least ``min_positives``
    positives and negatives on both sides).
    """
    g = torch.Generator().manual_seed(seed)
    n_c, n = labels.shape
    w_train = torch.zeros(n_c, n)
    w_test = torch.zeros(n_c, n)
    usable = torch.zeros(n_c, dtype=torch.bool)
    for c in range(n_c):
        ok = True
        for side, w in ((train, w_train), (~train, w_test)):
            pos = torch.nonzero(labels[c] & side).flatten()
            neg = torch.nonzero(~labels[c] & side).flatten()
            m = min(pos.numel(), neg.numel(), max_per_class)
            ok &= m >= min_positives
            w[c, pos[torch.randperm(pos.numel(), generator=g)[:m]]] = 1
            w[c, neg[torch.randperm(neg.numel(), generator=g)[:m]]] = 1
        usable[c] = ok
    return w_train, w_test, usable


def k_sparse_probe(
    x: torch.Tensor, labels: torch.Tensor, w_train: torch.Tensor, w_test: torch.Tensor, ks: tuple[int, ...] = PROBE_KS
) -> dict[str, Any]:
    """k-sparse probes of ``labels`` (C, n) on features ``x`` (n, d), for every k in ``ks``.

    Coordinates are ranked per concept by :func:`rank_by_mean_difference` on the training rows; the
    probe for k is a logistic regression (:func:`fit_logistic`) on the top k, scored on the test rows.
    Returns {"top": (C, max k) ranked coordinates, k: {"accuracy": (C,), "f1": (C,), ...}}.
    """
    ks = tuple(k for k in ks if k <= x.shape[1])
    top = rank_by_mean_difference(x, labels, w_train).topk(max(ks), dim=1).indices  # (C, max k)
    out: dict[Any, Any] = {"top": top}
    for k in ks:
        xk = x.T[top[:, :k]].transpose(1, 2)  # (C, n, k)
        fit = fit_logistic(xk, labels, w_train)
        out[k] = binary_scores(fit.decision(xk) > 0, labels, w_test)
    return out


def sparse_probing(
    rows: TokenRows,
    ks: tuple[int, ...] = PROBE_KS,
    min_positives: int = 10,
    max_per_class: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """k-sparse probes of every token concept (:func:`token_concepts`) on every representation in ``rows``.

    Train/test split by chunk (:func:`split_train_test`), classes balanced on each side
    (:func:`balanced_weights`), so accuracy 0.5 is chance. A concept with fewer than ``min_positives``
    positive tokens on either side is skipped and listed in ``skipped`` with its counts.

    Returns {"ks", "representations", "concepts": {name: {"n_train", "n_test", rep: {"accuracy": [per k],
    "f1": [per k]}, "sae_top_latents": [...]}}, "mean": {rep: {"accuracy": [...], "f1": [...]}}, "skipped": {...}}.
    """
    concepts, _ = token_concepts(rows.tokens)
    names = list(concepts)
    labels = torch.stack([concepts[n] for n in names])  # (C, n)
    train = split_train_test(rows.doc_ids)
    w_train, w_test, usable = balanced_weights(labels, train, min_positives, max_per_class, seed)
    skipped = {
        n: f"{int((labels[i] & train).sum())} train / {int((labels[i] & ~train).sum())} test positives "
        f"(need {min_positives})"
        for i, n in enumerate(names)
        if not usable[i]
    }
    keep = torch.nonzero(usable).flatten()
    result: dict[str, Any] = {
        "ks": [k for k in ks],
        "representations": list(rows.reps),
        "n_tokens": len(rows.tokens),
        "concepts": {},
        "mean": {},
        "skipped": skipped,
    }
    if keep.numel() == 0:
        return result
    labels, w_train, w_test = labels[keep], w_train[keep], w_test[keep]
    kept_names = [names[i] for i in keep.tolist()]
    for i, n in enumerate(kept_names):
        result["concepts"][n] = {"n_train": int(w_train[i].sum()), "n_test": int(w_test[i].sum())}
    for rep, x in tqdm(rows.reps.items(), desc="probing", unit="rep", disable=not progress, leave=False):
        probe = k_sparse_probe(x, labels, w_train, w_test, ks)
        used = [k for k in ks if k in probe]
        for i, n in enumerate(kept_names):
            result["concepts"][n][rep] = {m: [float(probe[k][m][i]) for k in used] for m in ("accuracy", "f1")}
            if rep == "sae":
                result["concepts"][n]["sae_top_latents"] = probe["top"][i, :4].tolist()
        result["mean"][rep] = {m: [float(probe[k][m].mean()) for k in used] for m in ("accuracy", "f1")}
    return result


def check_rows(rows: TokenRows) -> None:
    """Every representation has one row per token."""
    for name, x in rows.reps.items():
        if x.ndim != 2 or x.shape[0] != len(rows.tokens):
            raise DataError(
                f"probing: representation {name!r} has shape {tuple(x.shape)} for {len(rows.tokens)} tokens"
            )
