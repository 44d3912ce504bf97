"""Steering: push one feature and show what the model does differently.

The feature's latent gets ``strength`` × its *typical activation* (its mean activation over the tokens it fires
on, from RUN/features.sqlite when built, else measured over the run's held-out text) added at every position of
the prompt and of the generated text — equivalently, that multiple of its decoder direction is added to the
hooked activations (the dictionary's error is kept, so nothing else changes). With ``clamp`` the latent is set to
that value instead.

- causal LMs: the baseline and the steered continuation of a prompt, greedy or sampled with a seed;
- encoder models (which cannot generate): how the prompt's sentence embedding (mean-pooled last hidden state)
  moves, and which vocabulary tokens it moves towards.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import torch

from ..device import torch_threads
from ..errors import ConfigError
from .edit import add_latent, intervene, set_latent
from .lm import check_prompt, chunk_batches, encode_prompt
from .sites import Site, site_of_run


def typical_activation(run: Any, latent: int, max_tokens: int = 8192) -> float:
    """Mean activation of ``latent`` over the tokens where it fires (features database, else measured)."""
    site = site_of_run(run)
    site.check_latent(latent)
    db = run.path / "features.sqlite"
    if db.is_file():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT mean_act FROM features WHERE id = ?", (latent,)).fetchone()
        except sqlite3.DatabaseError:
            row = None
        finally:
            con.close()
        if row is not None and row[0]:
            return float(row[0])
        if row is not None:
            raise ConfigError(_never_fired(latent, "in RUN/features.sqlite"))
    total, count = 0.0, 0
    with torch.inference_mode():
        for enc, keep in chunk_batches(run.source(), "eval", max_tokens, 8):
            with intervene(site, positions=keep, record=True) as trace:
                run.model(**enc)
            values = trace.latents[0][:, latent]
            total += float(values.sum())
            count += int((values > 0).sum())
    if count == 0:
        raise ConfigError(_never_fired(latent, f"on {max_tokens:,} held-out tokens"))
    return total / count


DECODE_THREADS = 1
"""Torch intra-op threads while generating. A decoding step handles one new token: ~200 small matrix products
(SmolLM2), each a parallel region ending in a barrier, so on a shared machine a descheduled second thread stalls
every one of them (bench/steer.py: 32 tokens took 4.7x longer with 2 threads than with 1 at load ~10), while a
step's time is mostly reading the weights from memory, which a second core speeds up little."""


def _never_fired(latent: int, where: str) -> str:
    return f"feature {latent} never fired {where}, so it has no typical activation; pick a live feature"


def _steered_edit(latent: int, value: float, clamp: bool):
    return set_latent(latent, value) if clamp else add_latent(latent, value)


def _prompt_positions(source: Any, enc: dict[str, torch.Tensor]):
    """Positions to steer: the prompt's positions the dictionary was trained on (for causal LMs not the first,
    the attention sink), then every new token (one per forward pass)."""
    prompt_mask = source.keep_mask(enc["input_ids"], enc["attention_mask"])  # (1, T)
    width = enc["input_ids"].shape[1]
    return lambda h: prompt_mask if h.shape[1] == width else None


def steer_text(
    run: Any,
    latent: int,
    strength: float,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    sample: bool = False,
    seed: int = 0,
    temperature: float = 1.0,
    clamp: bool = False,
    typical: float | None = None,
    threads: int | None = DECODE_THREADS,
) -> dict[str, Any]:
    """Baseline and steered continuations of ``prompt`` (causal LMs), generated with ``threads`` torch threads
    (None: torch's setting)."""
    source = run.source()
    if not source.is_causal_lm:
        raise ConfigError(
            f"{source.config.model or 'the default MiniLM'} is an encoder-only model and cannot generate text; "
            "steer it without --output text to see how its sentence embedding moves"
        )
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    site = site_of_run(run)
    site.check_latent(latent)
    enc = encode_prompt(source, prompt)  # bad prompts are refused before anything is measured
    typical = typical_activation(run, latent) if typical is None else typical
    edit = _steered_edit(latent, strength * typical, clamp)
    tok = source.tokenizer
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id}
    kwargs.update({"do_sample": True, "temperature": temperature, "top_k": 0} if sample else {"do_sample": False})

    def generate() -> tuple[str, float]:
        if sample:
            torch.manual_seed(seed)
        started = time.perf_counter()
        with torch.inference_mode(), torch_threads(threads):
            out = run.model.generate(**enc, **kwargs)
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True), time.perf_counter() - started

    baseline, t_base = generate()
    with intervene(site, [edit], positions=_prompt_positions(source, enc)):
        steered, t_steer = generate()
    return {
        "feature": latent,
        "site": site.name,
        "strength": strength,
        "typical_activation": typical,
        "value": strength * typical,
        "clamp": clamp,
        "prompt": prompt,
        "sampling": {"seed": seed, "temperature": temperature} if sample else "greedy",
        "baseline": baseline,
        "steered": steered,
        "seconds": {"baseline": t_base, "steered": t_steer},
    }


def steer_embedding(
    run: Any,
    latent: int,
    strength: float,
    prompt: str,
    *,
    clamp: bool = False,
    typical: float | None = None,
    n: int = 8,
) -> dict[str, Any]:
    """How steering moves the prompt's sentence embedding (encoder models; works for causal LMs too)."""
    from ..features.vocab import excluded_token_ids, logit_embedding, token_texts

    source = run.source()
    site: Site = site_of_run(run)
    site.check_latent(latent)
    check_prompt(prompt)
    typical = typical_activation(run, latent) if typical is None else typical
    ids = source.tokenizer(prompt, add_special_tokens=True)["input_ids"][: source.config.max_length]
    enc = source.tokenize([ids])  # a whole sentence, special tokens included, as the encoder was trained
    edit = _steered_edit(latent, strength * typical, clamp)
    keep = source.keep_mask(enc["input_ids"], enc["attention_mask"])

    def pooled() -> torch.Tensor:
        with torch.inference_mode():
            out = run.model(**enc, output_hidden_states=True)
        h = out.hidden_states[-1][0].float()  # (T, d): the last hidden state (causal LMs: before the head)
        m = enc["attention_mask"][0].float()[:, None]
        return (h * m).sum(0) / m.sum()  # (d,)

    before = pooled()
    with intervene(site, [edit], positions=keep):
        after = pooled()
    result: dict[str, Any] = {
        "feature": latent,
        "site": site.name,
        "strength": strength,
        "typical_activation": typical,
        "value": strength * typical,
        "prompt": prompt,
        "cosine": float(torch.nn.functional.cosine_similarity(before, after, dim=0)),
        "norm_before": float(before.norm()),
        "norm_after": float(after.norm()),
    }
    emb, label = logit_embedding(run.model, before.shape[0])
    if emb is not None:
        exclude = torch.tensor(excluded_token_ids(source.tokenizer), dtype=torch.long)
        unit = torch.nn.functional.normalize(emb.float(), dim=1)  # (vocab, d)

        def nearest(v: torch.Tensor) -> list[str]:
            scores = unit @ torch.nn.functional.normalize(v, dim=0)
            scores[exclude] = -torch.inf
            ids = scores.topk(n).indices.tolist()
            names = token_texts(source.tokenizer, ids)
            return [names[i] for i in ids]

        result.update(
            tokens_via=label,
            nearest_before=nearest(before),
            nearest_after=nearest(after),
            shift_towards=nearest(after - before),
        )
    return result


def format_steering(r: dict[str, Any]) -> str:
    how = "clamped to" if r.get("clamp") else "+"
    head = (
        f"feature {r['feature']} at {r['site']}: {how} {r['strength']:g} x typical activation "
        f"{r['typical_activation']:.3g} = {r['value']:.3g}"
    )
    if "steered" in r:
        mode = "greedy" if r["sampling"] == "greedy" else f"sampled, seed {r['sampling']['seed']}"
        return "\n".join(
            [
                head,
                f"prompt:   {r['prompt']!r}",
                f"baseline: {r['baseline']!r}",
                f"steered:  {r['steered']!r}",
                f"({mode})",
            ]
        )
    lines = [
        head,
        f"prompt: {r['prompt']!r}",
        (
            f"sentence embedding: cosine(before, after) = {r['cosine']:.4f}; norm {r['norm_before']:.3g} -> "
            f"{r['norm_after']:.3g}"
        ),
    ]
    if "shift_towards" in r:
        lines += [
            f"nearest tokens before: {', '.join(map(repr, r['nearest_before']))}",
            f"nearest tokens after:  {', '.join(map(repr, r['nearest_after']))}",
            f"the shift points to:   {', '.join(map(repr, r['shift_towards']))}  ({r['tokens_via']})",
        ]
    return "\n".join(lines)
