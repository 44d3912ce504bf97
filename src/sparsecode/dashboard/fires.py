""" "What fires here?": run a pasted text through the run's model and SAE (the only part of the dashboard that
imports torch, on first use; loaded once and shared between requests)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

TOP_PER_TOKEN = 6
TOP_OVERALL = 24
STEER_TOKENS = 24
"""New tokens the feature page's steering box generates."""


class FiresModel:
    """The run's model source and SAE, loaded lazily. ``run(text)`` never raises for a missing model: it returns
    ``{"error": message}`` so the page can say what is wrong.

    Concurrent requests share the model without a lock: the source's capture hook acts only on the forward pass
    of the thread that installed it (:mod:`sparsecode.hooks`), so each request sees its own activations."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self._run: Any = None  # the loaded run, sharing the source above (for steering)
        self._error: str | None = None

    def _load(self) -> tuple[Any, Any] | None:
        with self._lock:
            if self._loaded is None and self._error is None:
                try:
                    from ..run import load_run
                    from ..sources import open_source

                    run = load_run(self.run_dir)
                    if run.config.source.kind != "model":
                        raise ValueError(f"the run was trained on {run.config.source.kind} data, not a text model")
                    run.config.source.device = "cpu"
                    source = open_source(run.config.source)
                    source.module  # noqa: B018 -- loads the weights now, so a broken model fails here
                    self._loaded = (source, run.sae.eval())
                    run._source = source
                    self._run = run
                except ImportError as e:
                    self._error = f"the model is not available: {e.name or e} is not installed"
                except Exception as e:  # noqa: BLE001 -- a missing or broken model: say so on the page, keep browsing
                    self._error = (
                        f"the model is not available: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                    )
            return self._loaded

    def run(self, text: str) -> dict[str, Any]:
        """Per token of ``text``: its display text and the features firing on it (strongest first); and the features
        with the largest summed activation over the text, with their activation on every token."""
        loaded = self._load()
        if loaded is None:
            return {"tokens": [], "top_features": [], "error": self._error}
        import torch

        from ..features.vocab import token_texts
        from ..sources.hf import special_affixes

        source, sae = loaded
        prefix, suffix = special_affixes(source.tokenizer)
        all_ids = source.tokenizer(text, add_special_tokens=False)["input_ids"]
        body = all_ids[: source.config.max_length - len(prefix) - len(suffix)]  # one chunk, as in training
        enc = source.tokenize([prefix + body + suffix])
        with torch.inference_mode():
            x = source.activations(enc["input_ids"], enc["attention_mask"]).float()[0]  # (T, d_in)
            latents = sae.encode(x)[len(prefix) : len(prefix) + len(body)]  # (n_tokens, n_latents)
        texts = token_texts(source.tokenizer, body)
        tokens = []
        for i, tid in enumerate(body):
            values, latent_ids = latents[i].topk(min(TOP_PER_TOKEN, latents.shape[1]))
            tokens.append(
                {
                    "id": tid,
                    "text": texts[tid],
                    "features": [
                        {"id": int(f), "act": round(float(v), 4)} for v, f in zip(values, latent_ids) if v > 0
                    ],
                }
            )
        total = latents.sum(0)  # (n_latents,)
        values, latent_ids = total.topk(min(TOP_OVERALL, total.shape[0]))
        top = [
            {
                "id": int(f),
                "total": round(float(v), 4),
                "tokens": int((latents[:, f] > 0).sum()),
                "acts": [round(a, 4) for a in latents[:, f].tolist()],
            }
            for v, f in zip(values, latent_ids)
            if v > 0
        ]
        return {"tokens": tokens, "top_features": top, "error": None, "truncated": len(body) < len(all_ids)}

    def steer(self, feature: int, prompt: str, strength: float, max_new_tokens: int = STEER_TOKENS) -> dict[str, Any]:
        """Baseline vs steered continuation of ``prompt`` (encoders: the sentence embedding's shift), as
        ``sparsecode steer`` gives it; ``{"error": message}`` for a missing model or bad input. Greedy, so the same
        request always gets the same answer; concurrent requests each hook only their own forward passes."""
        if self._load() is None:
            return {"error": self._error}
        from ..errors import SparsecodeError
        from ..interventions.steer import steer_embedding, steer_text

        try:
            if self._loaded[0].is_causal_lm:
                return steer_text(self._run, feature, strength, prompt, max_new_tokens=max_new_tokens)
            return steer_embedding(self._run, feature, strength, prompt)
        except SparsecodeError as e:
            return {"error": str(e)}
