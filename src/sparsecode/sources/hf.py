"""Activations of a Hugging Face transformers model, captured at one module (the *hook point*).

Documents are tokenized once and cut into chunks of at most ``max_length`` tokens (special tokens
such as [CLS]/[SEP] or BOS are re-added around every chunk). Chunks are run through the model in
fixed forward batches of ``batch_size`` chunks; a forward hook grabs the hooked module's output
(or first input) and aborts the forward pass right there, so later layers cost nothing. Every
non-padding token (and, by default, non-special token) becomes one activation row, except, by default
for causal LMs, each chunk's first position: the *attention sink* (see ``exclude_first_positions``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..configs import check_choice, check_int
from ..device import check_device
from ..errors import ConfigError, DataError
from ..hooks import HookPoint, find_module, run_and_capture
from .base import ActivationBatch, SourceBase, SourceConfigBase, check_split
from .embedded import default_model_path, is_smollm2, othello_path, smollm2_path
from .text import DEFAULT_TEXT_COLUMN, corpus_identity, iter_documents, load_documents, split_documents
from .tokens import Chunks, TokenizedCorpus, open_tokenized

WINDOW_BATCHES = 16
"""Forward batches per length-sorting window (see ``ModelSource.iter_batches``)."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(kw_only=True)
class ModelSourceConfig(SourceConfigBase):
    """Activations of a transformers model at a hook point, over a text corpus."""

    kind: ClassVar[str] = "model"
    has_device: ClassVar[bool] = True

    model: str | None = None
    """Local model directory, hub name, "smollm2" (the embedded SmolLM2-135M-Instruct causal LM, converted once
    into the model cache) or "othello" (the shipped Othello GPT); None means the embedded all-MiniLM-L6-v2."""
    hook: str
    """Dotted module path inside the model whose activations are taken, e.g. ``encoder.layer.3``."""
    hook_side: str = "output"
    """"output": the module's output (first element of a tuple); "input": its first positional input."""
    corpus: list[str] | None = None
    """Corpus files (.txt, .jsonl, .json, .parquet, .arrow, .csv) or directories of them, Hugging Face hub dataset
    names ("org/name" or "org/name:config", streamed; needs the hub online), or an embedded corpus ("pydoc",
    "wikipedia", "shakespeare"); None means the embedded default (Wikipedia summaries and Shakespeare)."""
    text_column: str = DEFAULT_TEXT_COLUMN
    """The column (field) holding each record's text in .jsonl/.json/.parquet/.arrow/.csv files and hub datasets."""
    max_length: int = 128
    """Tokens per chunk, special tokens included; longer documents are cut into several chunks."""
    batch_size: int = 32
    """Chunks per forward pass."""
    exclude_special_tokens: bool = True
    """Drop rows of special tokens ([CLS], [SEP], BOS, ...; not [UNK]). Padding is always dropped."""
    exclude_first_positions: int | None = None
    """Leading positions of every chunk that are not rows; None means 1 for causal LMs and 0 for other models. A
    causal LM's first position is an *attention sink* (SmolLM2's residual norm there is ~100x the others' from
    layer 12 on; BOS plays that part where a tokenizer adds one): rows there would set an SAE's input scale and
    waste latents on one outlier. Evaluation, features and interventions leave these positions alone too."""
    eval_every: int = 20
    """Every ``eval_every``-th document is held out for the "eval" split."""
    target_hook: str | None = None
    """Transcoders: a second module whose activations are the paired targets (e.g. the MLP output of the same
    block); None for ordinary SAEs."""
    target_hook_side: str = "output"
    """"output" or "input" of ``target_hook``, as ``hook_side``."""
    device: str = "cpu"
    """Torch device to run the model on, e.g. "cpu" or "cuda:0"."""
    dtype: str = "float32"
    """Model weights dtype: float32, float16 or bfloat16 (rows are always returned as float32). bfloat16 ran the
    forward 2.1x faster on a CPU with AVX512-BF16 at an FVU of 1e-4 against float32 (docs/performance.md)."""

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        if isinstance(self.corpus, (str, os.PathLike)):
            self.corpus = [self.corpus]
        if isinstance(self.corpus, (list, tuple)):
            self.corpus = [os.fspath(c) if isinstance(c, os.PathLike) else c for c in self.corpus]
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError(
                f"source.model must be a model directory or hub name (or null for the default), got {self.model!r}"
            )
        if not isinstance(self.hook, str) or not self.hook.strip():
            raise ConfigError("source.hook is required: a dotted module path such as 'encoder.layer.3'")
        check_choice("source.hook_side", self.hook_side, ("output", "input"))
        if self.target_hook is not None and (not isinstance(self.target_hook, str) or not self.target_hook.strip()):
            raise ConfigError(f"source.target_hook must be a dotted module path or null, got {self.target_hook!r}")
        check_choice("source.target_hook_side", self.target_hook_side, ("output", "input"))
        if (self.target_hook, self.target_hook_side) == (self.hook, self.hook_side):
            raise ConfigError("source.target_hook is the same point as source.hook; a transcoder needs two points")
        if self.corpus is not None:
            ok = isinstance(self.corpus, list) and self.corpus and all(isinstance(p, str) and p for p in self.corpus)
            if not ok:
                raise ConfigError(
                    "source.corpus must be a non-empty list of paths (or null for the default corpus), "
                    f"got {self.corpus!r}"
                )
        if not isinstance(self.text_column, str) or not self.text_column:
            raise ConfigError(f"source.text_column must be a column name, got {self.text_column!r}")
        check_int("source.max_length", self.max_length, minimum=2)
        check_int("source.batch_size", self.batch_size, minimum=1)
        if not isinstance(self.exclude_special_tokens, bool):
            raise ConfigError(
                f"source.exclude_special_tokens must be true or false, got {self.exclude_special_tokens!r}"
            )
        if self.exclude_first_positions is not None:
            check_int("source.exclude_first_positions", self.exclude_first_positions, minimum=0)
            if self.exclude_first_positions >= self.max_length:
                raise ConfigError(
                    f"source.exclude_first_positions {self.exclude_first_positions} leaves no row in a chunk of "
                    f"max_length {self.max_length}; lower it"
                )
        check_int("source.eval_every", self.eval_every, minimum=2)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            msg = f"source.device {self.device!r} is not a torch device; use e.g. 'cpu' or 'cuda:0'"
            raise ConfigError(msg) from None
        check_choice("source.dtype", self.dtype, tuple(DTYPES))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["text_column"] == DEFAULT_TEXT_COLUMN:  # left out at its default: earlier runs keep their cache keys
            del out["text_column"]
        if out["exclude_first_positions"] is None:  # likewise; the source's fingerprint holds the resolved value
            del out["exclude_first_positions"]
        return out


# --------------------------------------------------------------------------- loading


def _offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


@contextmanager
def _quiet():
    """Silence transformers' logging and progress bars while loading (the caller shows progress)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _looks_like_path(s: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with separators is meant as a path.
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1


def resolve_model(name_or_path: str | None) -> str:
    """An existing local directory, an embedded model's folder ("smollm2", converted on first use; None for
    MiniLM), or a hub name; a missing path raises DataError."""
    if name_or_path is None:
        return default_model_path()
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return expanded
    if is_smollm2(name_or_path):
        return smollm2_path()
    if othello_path(name_or_path):
        return othello_path(name_or_path)
    if os.path.exists(expanded):
        raise DataError(f"model path {name_or_path} is a file; give the directory that holds config.json")
    if _looks_like_path(name_or_path):
        raise DataError(f"model directory {name_or_path} not found; give an existing directory or a hub model name")
    return name_or_path


def portable_model_name(model: str | None) -> str | None:
    """What a run's config.json records for ``model``: the embedded default's own folder becomes null, and a
    snapshot folder inside the hub client's cache (``.../models--org--name/snapshots/REV``) becomes its hub id
    ``org/name``, which that cache resolves on any machine that has it; anything else is kept as given."""
    if model is None or not os.path.isdir(os.path.expanduser(model)):
        return model
    path = os.path.realpath(os.path.expanduser(model))
    try:
        if path == os.path.realpath(default_model_path()):
            return None
    except DataError:  # the embedded package is not installed: then it is not that folder
        pass
    from huggingface_hub import constants

    parts = os.path.relpath(path, os.path.realpath(constants.HF_HUB_CACHE)).split(os.sep)
    if len(parts) == 3 and parts[0].startswith("models--") and parts[1] == "snapshots":
        return parts[0].removeprefix("models--").replace("--", "/")
    return model


def model_identity(name_or_path: str | None) -> dict[str, Any]:
    """The model folder, its files (name, size, mtime) and the library versions: what activations depend on beyond
    the model's name (keys the activation cache)."""
    import transformers

    where = resolve_model(name_or_path)
    files = []
    if os.path.isdir(where):
        where = os.path.abspath(where)
        for entry in sorted(os.scandir(where), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                files.append([entry.name, st.st_size, st.st_mtime_ns])
    return {
        "model": where,
        "model_files": files,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
    }


def _load_error(name: str, e: BaseException) -> DataError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if not os.path.isdir(name) and _offline():
        return DataError(
            f"could not load model '{name}': not found locally and the hub is offline (HF_HUB_OFFLINE); "
            "give a local model directory"
        )
    return DataError(f"could not load model '{name}': {first}")


def _load_config(path: str) -> Any:
    from transformers import AutoConfig

    try:
        with _quiet():
            return AutoConfig.from_pretrained(path, local_files_only=_offline())
    except Exception as e:  # noqa: BLE001 -- transformers raises OSError/ValueError/KeyError/... for bad models
        raise _load_error(path, e) from None


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        with _quiet():
            tok = AutoTokenizer.from_pretrained(path, local_files_only=_offline())
    except Exception as e:  # noqa: BLE001 -- as in _load_config
        raise _load_error(path, e) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def is_causal_lm_config(config: Any) -> bool:
    """True for decoder-only language models (loaded with AutoModelForCausalLM)."""
    archs = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def _dtype_kwarg() -> str:
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # renamed in v5


def _load_weights(path: str, config: Any, device: str, dtype: str) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    dev = check_device(device)
    cls = AutoModelForCausalLM if is_causal_lm_config(config) else AutoModel
    try:
        with _quiet():
            model = cls.from_pretrained(path, **{_dtype_kwarg(): DTYPES[dtype]}, local_files_only=_offline())
    except Exception as e:  # noqa: BLE001 -- as in _load_config
        raise _load_error(path, e) from None
    return model.to(dev).eval().requires_grad_(False)


def load_model(name_or_path: str | None, device: str = "cpu", dtype: str = "float32") -> tuple[nn.Module, Any]:
    """(model, tokenizer) in eval mode without gradients; any failure raises a one-line DataError."""
    check_choice("source.dtype", dtype, tuple(DTYPES))
    path = resolve_model(name_or_path)
    config = _load_config(path)
    return _load_weights(path, config, device, dtype), _load_tokenizer(path)


# --------------------------------------------------------------------------- tokenization


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single sequence."""
    probe = "hello world"
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return list(full[:i]), list(full[i + len(body) :])
    return [], []


def chunk_documents(tokenizer: Any, docs: list[str], max_length: int, per_document: bool = False) -> list:
    """Token ids of each chunk: every document is cut into pieces of at most ``max_length`` tokens
    (special tokens included), in document order. Documents without tokens give no chunk. With
    ``per_document`` the chunks come grouped: one list of chunks per document."""
    prefix, suffix = special_affixes(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        n_special = len(prefix) + len(suffix)
        raise ConfigError(
            f"source.max_length {max_length} leaves no room for text next to {n_special} special tokens; increase it"
        )
    if not docs:
        return []
    ids_per_doc = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    grouped = [[prefix + list(ids[s : s + body]) + suffix for s in range(0, len(ids), body)] for ids in ids_per_doc]
    return grouped if per_document else [c for chunks in grouped for c in chunks]


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class Tap:
    """Where one dictionary's rows come from in a forward pass: a hook point and, for transcoders, a target point."""

    hook: str
    hook_side: str = "output"
    target_hook: str | None = None
    target_hook_side: str = "output"

    @classmethod
    def of(cls, config: ModelSourceConfig) -> Tap:
        return cls(config.hook, config.hook_side, config.target_hook, config.target_hook_side)

    def points(self) -> list[tuple[str, str]]:
        """(module path, side) of the input point, then of the target point if any."""
        own = [(self.hook, self.hook_side)]
        return own if self.target_hook is None else [*own, (self.target_hook, self.target_hook_side)]


class ModelSource(SourceBase):
    """Rows = activations at ``config.hook`` for every kept token of the corpus split.

    The tokenizer and model config are loaded on construction (cheap); the weights on first use.
    """

    is_text_model: ClassVar[bool] = True

    def __init__(self, config: ModelSourceConfig, taps: Sequence[Tap] | None = None):
        self.config = config
        self.taps = list(taps) if taps else [Tap.of(config)]
        """The hook points whose activations make a row; several taps give wide rows, their activations side by side
        (one forward feeding several dictionaries, see ``activations.shared``); by default the config's own."""
        check_device(config.device)
        self.model_path = resolve_model(config.model)
        self.model_config = _load_config(self.model_path)
        self.tokenizer = _load_tokenizer(self.model_path)
        self.is_causal_lm: bool = is_causal_lm_config(self.model_config)
        first = config.exclude_first_positions
        self.first_positions: int = (1 if self.is_causal_lm else 0) if first is None else first
        """Leading positions of every chunk that are never rows (``exclude_first_positions`` resolved)."""
        mc = self.model_config
        n_pos = getattr(mc, "max_position_embeddings", None) or getattr(mc, "n_positions", None)
        if isinstance(n_pos, int) and config.max_length > n_pos:
            raise ConfigError(f"source.max_length {config.max_length} exceeds the model's {n_pos} positions; lower it")
        # special tokens are dropped as rows, except the unknown token: it stands for real text
        special = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}
        self.special_ids = torch.tensor(sorted(special), dtype=torch.long)
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else 0
        self._tokens: TokenizedCorpus | None = None
        self._chunks: dict[str, Chunks] = {}
        self._counts: dict[str, np.ndarray] = {}
        self._model: nn.Module | None = None
        self._module: nn.Module | None = None
        self._tap_modules: dict[str, nn.Module] = {}
        self._widths: list[tuple[int, int | None]] | None = None

    # -- lazily loaded model ----------------------------------------------------

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = _load_weights(self.model_path, self.model_config, self.config.device, self.config.dtype)
        return self._model

    @property
    def module(self) -> nn.Module:
        """The hooked submodule."""
        if self._module is None:
            self._module = find_module(self.model, self.config.hook)
        return self._module

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    @property
    def target_module(self) -> nn.Module | None:
        """The module at ``config.target_hook`` (transcoder targets), or None."""
        return None if self.config.target_hook is None else find_module(self.model, self.config.target_hook)

    def tap_widths(self) -> list[tuple[int, int | None]]:
        """(d_in, d_out or None) of each tap, from a one-token forward pass."""
        if self._widths is None:
            prefix, suffix = special_affixes(self.tokenizer)
            probe = prefix + self.tokenizer("hello", add_special_tokens=False)["input_ids"] + suffix
            enc = self.tokenize([probe])
            self._widths = [
                (int(acts.shape[-1]), None if targets is None else int(targets.shape[-1]))
                for acts, targets in self.tap_activations(enc["input_ids"], enc["attention_mask"])
            ]
        return self._widths

    @property
    def d_in(self) -> int:
        return sum(d for d, _ in self.tap_widths())

    @property
    def d_out(self) -> int | None:
        """Width of the paired targets at ``config.target_hook``; None without a target hook."""
        widths = [d for _, d in self.tap_widths() if d is not None]
        return sum(widths) if widths else None

    def fingerprint(self) -> dict[str, Any]:
        """What the activations depend on beyond the config strings: the documents' text, the model's
        files (name, size, mtime) and the library versions. Keys the on-disk activation cache."""
        out = {"documents_sha256": self.tokenized.documents_sha256, **self._model_identity()}
        if self.first_positions:  # rows without each chunk's first positions (causal LMs' default) are other rows
            out["first_positions"] = self.first_positions
        return out

    def _model_identity(self) -> dict[str, Any]:
        return model_identity(self.config.model)

    # -- corpus -----------------------------------------------------------------

    def documents(self, split: str = "train") -> list[str]:
        """The documents of ``split`` (every ``eval_every``-th one is "eval"), all in memory: for small corpora."""
        check_split(split)
        docs = load_documents(self.config.corpus, self.config.text_column)
        return split_documents(docs, split, self.config.eval_every)

    @property
    def tokenized(self) -> TokenizedCorpus:
        """The corpus tokenized into chunks on disk (built by one streaming pass on first use, then reused)."""
        if self._tokens is None:
            c = self.config
            identity = {
                "corpus": corpus_identity(c.corpus),
                "text_column": c.text_column,
                "max_length": c.max_length,
                "eval_every": c.eval_every,
                "tokenizer": self._model_identity(),
            }
            self._tokens = open_tokenized(
                identity,
                iter_documents(c.corpus, c.text_column),
                lambda docs: chunk_documents(self.tokenizer, docs, c.max_length, per_document=True),
                set(self.special_ids.tolist()),
                c.eval_every,
            )
        return self._tokens

    def chunks(self, split: str = "train") -> Chunks:
        """Token ids of every chunk of ``split``, special tokens included, read from disk on access."""
        check_split(split)
        if split not in self._chunks:
            self._chunks[split] = self.tokenized.chunks(split)
        return self._chunks[split]

    def row_counts(self, split: str = "train") -> np.ndarray:
        """(n_chunks,) rows each chunk of ``split`` gives (the positions ``keep_mask`` keeps), from the stored
        tokenization alone: its non-special (or all) tokens, less those among its first ``first_positions``."""
        if split not in self._counts:
            chunks = self.chunks(split)
            exclude = self.config.exclude_special_tokens
            counts = self.tokenized.kept_counts(split) if exclude else chunks.lengths
            if self.first_positions:
                heads = chunks.heads(self.first_positions)  # (n_chunks, first_positions), -1 past a chunk's end
                leading = heads >= 0
                if exclude:
                    leading &= ~np.isin(heads, self.special_ids.numpy())
                counts = counts - leading.sum(axis=1)
            self._counts[split] = counts
        return self._counts[split]

    def num_rows(self, split: str = "train") -> int:
        """Kept tokens in ``split`` (from tokenization alone; no forward pass)."""
        return int(self.row_counts(split).sum())

    def validate(self) -> None:
        """Both splits have tokens: a corpus too small to hold a document out would train, then fail to evaluate."""
        for split in ("train", "eval"):
            if self.num_rows(split) == 0:
                n_docs = self.tokenized.n_documents
                raise DataError(
                    f"the corpus has {n_docs} distinct document(s), {self.num_rows('train')} token(s) to train on and "
                    f"none in the {split} split (every {self.config.eval_every}th document is held out for eval); "
                    f"give a corpus of at least {self.config.eval_every} documents (paragraphs or .jsonl lines)"
                )

    # -- forward ----------------------------------------------------------------

    def tokenize(self, chunks: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` (B, T) on the model's device."""
        width = max((len(c) for c in chunks), default=0)
        input_ids = torch.full((len(chunks), width), self.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(chunks), width), dtype=torch.long)  # (B, T)
        for i, c in enumerate(chunks):
            input_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            attention_mask[i, : len(c)] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}

    def keep_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: the positions that become rows (not padding; not special if excluded; not among each
        chunk's first ``first_positions``). Chunks are right-padded, so a chunk's first position is column 0."""
        keep = attention_mask.bool()
        if self.config.exclude_special_tokens:
            keep &= ~torch.isin(input_ids, self.special_ids.to(input_ids.device))
        keep[:, : self.first_positions] = False
        return keep

    def activations(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d) activations at the hook, in the model's dtype and device."""
        return self.activations_and_targets(input_ids, attention_mask)[0]

    def activations_and_targets(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, d_in) activations at the hook and (B, T, d_out) at the target hook (None without one), from
        one forward pass that stops as soon as both are captured. With several taps, theirs side by side."""
        per_tap = self.tap_activations(input_ids, attention_mask)
        acts = [a for a, _ in per_tap]
        targets = [t for _, t in per_tap if t is not None]
        return (
            acts[0] if len(acts) == 1 else torch.cat(acts, dim=-1),
            None if not targets else targets[0] if len(targets) == 1 else torch.cat(targets, dim=-1),
        )

    def tap_activations(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each tap's (B, T, d_in) activations and (B, T, d_out) targets (None without a target hook), from one
        forward pass that stops once the last of their points has run."""
        points: dict[str, HookPoint] = {}
        for tap in self.taps:
            for path, side in tap.points():
                points.setdefault(f"{path!r} ({side})", HookPoint(self._find(path), side))
        extra = {"use_cache": False} if self.is_causal_lm else {}
        with torch.inference_mode():  # copies when several points: a later layer may edit its input in place
            captured = run_and_capture(
                self.model, points, input_ids=input_ids, attention_mask=attention_mask, clone=len(points) > 1, **extra
            )
        for name, x in captured.items():
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[:2]) != tuple(input_ids.shape):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(
                    f"hook {name} gave {shape}, expected a (batch, seq, d) tensor with (batch, seq) = "
                    f"{tuple(input_ids.shape)}; hook another module"
                )
        out = []
        for tap in self.taps:
            got = [captured[f"{path!r} ({side})"] for path, side in tap.points()]
            out.append((got[0], got[1] if len(got) > 1 else None))
        return out

    def _find(self, path: str) -> nn.Module:
        if path == self.config.hook:
            return self.module
        if path not in self._tap_modules:
            self._tap_modules[path] = find_module(self.model, path)
        return self._tap_modules[path]

    def _forward_chunks(self, split: str, chunks: list[list[int]], indices: list[int]) -> list[ActivationBatch]:
        """One forward pass over ``chunks[i] for i in indices``; the kept rows of each, as batches."""
        enc = self.tokenize([chunks[i] for i in indices])
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T)
        keep = self.keep_mask(ids, mask).cpu()  # (B, T)
        acts, targets = self.activations_and_targets(ids, mask)
        acts = acts.to("cpu", torch.float32)  # (B, T, d_in)
        targets = None if targets is None else targets.to("cpu", torch.float32)  # (B, T, d_out)
        ids = ids.cpu()
        positions = torch.arange(ids.shape[1])  # (T,)
        out = []
        for j, i in enumerate(indices):
            rows = acts[j][keep[j]]  # (n_i, d_in)
            target_rows = None if targets is None else targets[j][keep[j]]  # (n_i, d_out)
            bad = ~torch.isfinite(rows).all(dim=1)
            if target_rows is not None:
                bad |= ~torch.isfinite(target_rows).all(dim=1)
            if bad.any():
                pos = int(positions[keep[j]][bad][0])
                raise DataError(
                    f"model {self.config.model or '(default)'} hook {self.config.hook}: non-finite "
                    f"activation in {split} chunk {i} at token position {pos}; try dtype='float32'"
                )
            n = rows.shape[0]
            out.append(
                ActivationBatch(
                    acts=rows,
                    token_ids=ids[j][keep[j]],
                    targets=target_rows,
                    doc_ids=torch.full((n,), i, dtype=torch.long),
                    positions=positions[keep[j]],
                )
            )
        return out

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        """One pass over ``split`` in chunk order, starting exactly at ``start_row``.

        To waste little compute on padding, chunks are processed in windows of
        ``batch_size * WINDOW_BATCHES`` consecutive chunks: within a window, forward batches are
        formed after sorting the chunks by length; rows still come out in chunk order, one batch
        per ``batch_size`` chunks. Window and forward-batch composition do not depend on
        ``start_row``, so a resumed stream is bitwise identical to a full one; forward batches
        holding only chunks before ``start_row`` are skipped without running the model.
        """
        check_split(split)
        check_int("start_row", start_row, minimum=0)
        chunks, counts = self.chunks(split), self.row_counts(split)
        total = int(counts.sum())
        if start_row > total:
            raise ConfigError(f"start_row {start_row} is past the end of the {split} split ({total} rows)")
        if start_row == total:
            return
        bs = self.config.batch_size
        window = bs * WINDOW_BATCHES
        ends = np.cumsum(counts, dtype=np.int64)  # (n_chunks,) rows up to and including each chunk
        first = int(np.searchsorted(ends, start_row, side="right"))  # chunk holding start_row
        skip = start_row - (int(ends[first - 1]) if first > 0 else 0)  # its rows before start_row
        lengths = chunks.lengths
        for w in range((first // window) * window, len(chunks), window):
            members = range(w, min(w + window, len(chunks)))
            by_length = sorted(members, key=lambda i: int(lengths[i]))  # stable: ties keep chunk order
            rows: dict[int, ActivationBatch] = {}
            for k in range(0, len(by_length), bs):
                group = by_length[k : k + bs]
                if max(group) >= first:
                    rows.update(zip(group, self._forward_chunks(split, chunks, group)))
            for b in range(max(w, first), members.stop, bs):
                parts = [rows[i] for i in range(b, min(b + bs, members.stop))]
                if b == first and skip:
                    parts[0] = parts[0].slice(skip)
                names = ("acts", "token_ids", "doc_ids", "positions") + (
                    ("targets",) if parts[0].targets is not None else ()
                )
                batch = ActivationBatch(**{name: torch.cat([getattr(p, name) for p in parts]) for name in names})
                if len(batch):
                    yield batch
