"""A run folder: what was trained on what, and the files every stage reads and writes.

RUN/config.json        RunConfig: source, sae, train (+ the input scale found at the start)
RUN/sae.safetensors    the trained SAE, acting on raw activations (written at the end)
RUN/checkpoint.safetensors   resumable training state (weights, optimizer, data position)
RUN/metrics.jsonl      one JSON line per logged step
RUN/training.png       loss / L0 / FVU curves
RUN/eval.json, RUN/density.png, RUN/report.html   written by `sparsecode eval`
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, DataError, Interrupted
from .io import read_json, sweep_temporaries, write_json
from .layout import CHECKPOINT_FILE, CONFIG_FILE, SAE_FILE
from .sae import SAEConfig, SparseAutoencoder, load_sae, sae_config_from_dict
from .sources import open_source, source_config_from_dict
from .train.config import TrainConfig


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    source: Any
    """The source config dataclass (model / arrays / synthetic)."""
    sae: SAEConfig
    """The dictionary's config (its ``arch`` picks the architecture)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""
    input_scale: float | None = None
    """Factor applied to raw inputs during training (E‖scale·x‖² = d_in); set when training starts."""
    target_scale: float | None = None
    """Likewise for paired targets (transcoders: E‖scale·y‖² = d_out); None when the source has no targets."""

    def __post_init__(self) -> None:
        d_src = self.source.known_d_in()  # synthetic sources know their width up front
        if d_src is not None and d_src != self.sae.d_in:
            raise ConfigError(f"sae.d_in ({self.sae.d_in}) does not match the synthetic source's dim ({d_src})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "sparsecode-run",
            "version": 1,
            "source": _portable(self.source.to_dict()),
            "sae": self.sae.to_dict(),
            "train": self.train.to_dict(),
            "input_scale": self.input_scale,
            **({"target_scale": self.target_scale} if self.target_scale is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> RunConfig:
        for key in ("source", "sae", "train"):
            if not isinstance(d.get(key), dict):
                raise ConfigError(f"{where}: missing or malformed section '{key}' (expected a JSON object)")
        try:
            return cls(
                source=source_config_from_dict(d["source"]),
                sae=sae_config_from_dict(d["sae"]),
                train=TrainConfig.from_dict(d["train"]),
                input_scale=d.get("input_scale"),
                target_scale=d.get("target_scale"),
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def save(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / CONFIG_FILE, self.to_dict())

    @classmethod
    def load(cls, run_dir: str | Path) -> RunConfig:
        path = Path(run_dir) / CONFIG_FILE
        return cls.from_dict(read_json(path), where=str(path))


@dataclass
class TokenLatents:
    """One text, encoded: its tokens and the dictionary's latents on each (special tokens left out, as in
    training)."""

    token_ids: list[int]
    """Token id of each kept token."""
    tokens: list[str]
    """Display text of each kept token (with the leading space a word-initial token stands for)."""
    latents: torch.Tensor
    """(n_tokens, n_latents) float32 latent activations, on the CPU."""


def _portable(source: dict[str, Any]) -> dict[str, Any]:
    """The source as config.json records it: a model named by hub id or embedded name where it is one, not by the
    folder it was loaded from on this machine (see ``sources.hf.portable_model_name``)."""
    if source.get("kind") == "model":
        from .sources.hf import portable_model_name

        source = {**source, "model": portable_model_name(source.get("model"))}
    return source


@dataclass
class Run:
    """A finished run, loaded: its folder, config and SAE (on the CPU, acting on raw activations, in eval mode and
    without gradients). Runs on a text model also give that model (loaded on first use) and encode text."""

    path: Path
    config: RunConfig
    sae: SparseAutoencoder
    _source: Any = field(default=None, init=False, repr=False, compare=False)

    def source(self) -> Any:
        """The run's model source (:class:`sparsecode.sources.ModelSource`), opened once; DataError for runs on
        other data."""
        if self.config.source.kind != "model":
            raise DataError(f"{self.path}: this run was trained on {self.config.source.kind} data, not on a text model")
        if self._source is None:
            self._source = open_source(self.config.source)
        return self._source

    @property
    def model(self) -> nn.Module:
        """The run's transformers model (eval mode, no gradients), loaded on first use."""
        return self.source().model

    @property
    def tokenizer(self) -> Any:
        return self.source().tokenizer

    def encode_text(self, texts: str | list[str]) -> list[TokenLatents]:
        """Per text: its tokens and their latents, read at the run's hook exactly as in training (each text is one
        chunk, cut at ``source.max_length`` tokens; special tokens are added around it, then left out)."""
        from .features.vocab import token_texts
        from .sources.hf import special_affixes

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise DataError("encode_text needs one or more non-empty texts")
        source = self.source()
        prefix, suffix = special_affixes(source.tokenizer)
        body = source.config.max_length - len(prefix) - len(suffix)
        ids = source.tokenizer(texts, add_special_tokens=False)["input_ids"]
        enc = source.tokenize([prefix + list(i[:body]) + suffix for i in ids])
        keep = source.keep_mask(enc["input_ids"], enc["attention_mask"]).cpu()  # (B, T)
        sae = self.sae.to(source.device)
        with torch.inference_mode():
            x = source.activations(enc["input_ids"], enc["attention_mask"]).float()  # (B, T, d_in)
            latents = sae.encode(x.flatten(0, 1)).reshape(*x.shape[:2], -1).cpu()  # (B, T, n_latents)
        out = []
        for b in range(len(texts)):
            kept = enc["input_ids"][b].cpu()[keep[b]].tolist()
            names = token_texts(source.tokenizer, kept)
            out.append(TokenLatents(token_ids=kept, tokens=[names[t] for t in kept], latents=latents[b][keep[b]]))
        return out


def load_run(run_dir: str | Path) -> Run:
    """Open a finished run folder, with one-line errors for anything missing or broken."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run folder {run_dir} not found")
    if not (run_dir / CONFIG_FILE).is_file():
        raise DataError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
    sweep_temporaries(run_dir)  # leftovers of writes cut short by a kill
    if not (run_dir / SAE_FILE).is_file():
        hint = (
            f" (training did not finish; continue it with `sparsecode train --resume --out {run_dir}`)"
            if (run_dir / CHECKPOINT_FILE).is_file()
            else ""
        )
        raise DataError(f"{run_dir / SAE_FILE} is missing{hint}")
    config = RunConfig.load(run_dir)
    sae = load_sae(run_dir / SAE_FILE)
    if sae.cfg.to_dict() != config.sae.to_dict():
        raise DataError(f"{run_dir / SAE_FILE}: its SAE config does not match {run_dir / CONFIG_FILE}")
    # for use, not training: eval mode and no gradients, so torch.inference_mode and plain forwards just work
    return Run(path=run_dir, config=config, sae=sae.eval().requires_grad_(False))


@contextmanager
def run_folder(out: Path, *, replace: bool) -> Iterator[None]:
    """Guard a training run writing into ``out``: whatever happens, no half-run is left behind.

    With ``replace`` (``--overwrite`` of an existing run) the old run is moved aside and deleted only once the
    new one has finished; if the new one fails, the old run comes back untouched. A new run folder survives a
    failure only if it can be continued (it has a checkpoint) and, when it replaces an old run, only if the
    user stopped it on purpose (Ctrl-C).
    """
    replaced = _move_aside(out) if replace and out.exists() else None
    existed = out.exists()
    try:
        yield
    except BaseException as e:
        resumable = (out / CHECKPOINT_FILE).exists() and (isinstance(e, Interrupted) or replaced is None)
        if not existed and not resumable:
            shutil.rmtree(out, ignore_errors=True)
        if replaced is not None:
            if out.exists():  # the new run stays, resumable: the replacement the user asked for
                shutil.rmtree(replaced, ignore_errors=True)
            else:
                os.replace(replaced, out)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def _move_aside(out: Path) -> Path:
    aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    try:
        os.replace(out, aside)
    except OSError as e:
        raise ConfigError(f"--overwrite: cannot move the old run {out} aside: {e.strerror or e}") from None
    return aside
