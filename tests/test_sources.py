"""Tests for sparsecode.sources: model hooks, array files, synthetic data, corpora, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparsecode.errors import ConfigError, DataError
from sparsecode.sources import (
    SOURCE_KINDS,
    ArraySource,
    ArraySourceConfig,
    ModelSource,
    ModelSourceConfig,
    SyntheticSource,
    SyntheticSourceConfig,
    find_module,
    hf,
    load_documents,
    open_source,
    parse_synthetic_spec,
    source_config_from_dict,
    split_documents,
)

TEXTS = [
    "The cat sat on the mat.",
    "Sparse autoencoders decompose activations into interpretable features.",
    "Python is a programming language that lets you work quickly.",
    "Tokens, tokens everywhere!",
]


def collect(batches, limit: int | None = None) -> dict[str, torch.Tensor]:
    """Concatenate the fields of a stream of batches (stopping after ``limit`` rows)."""
    parts: dict[str, list[torch.Tensor]] = {}
    n = 0
    for b in batches:
        for name, t in b.tensors().items():
            parts.setdefault(name, []).append(t)
        n += len(b)
        if limit is not None and n >= limit:
            break
    out = {k: torch.cat(v) for k, v in parts.items()}
    if limit is not None:
        out = {k: v[:limit] for k, v in out.items()}
    return out


@pytest.fixture
def texts_file(tmp_path):
    p = tmp_path / "texts.txt"
    p.write_text("\n\n".join(TEXTS) + "\n")
    return p


# --------------------------------------------------------------------------- model source


def test_minilm_output_hook_equals_hidden_states(minilm_dir, texts_file):
    from transformers import AutoModel, AutoTokenizer

    src = ModelSource(ModelSourceConfig(model=str(minilm_dir), hook="encoder.layer.3", corpus=[str(texts_file)]))
    got = collect(src.iter_batches("train"))
    assert src.d_in == 384 and got["acts"].dtype == torch.float32
    assert got["acts"].shape[0] == src.num_rows("train")

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states[4]  # (B, T, 384)
    special = torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
    keep = enc["attention_mask"].bool() & ~torch.isin(enc["input_ids"], special)
    torch.testing.assert_close(got["acts"], hidden[keep], atol=1e-5, rtol=1e-5)
    assert torch.equal(got["token_ids"], enc["input_ids"][keep])
    assert torch.equal(got["doc_ids"], torch.arange(len(TEXTS))[:, None].expand_as(keep)[keep])
    assert torch.equal(got["positions"], torch.arange(keep.shape[1])[None].expand_as(keep)[keep])
    # the public helpers used by the evaluation code agree with the stream
    enc2 = src.tokenize(src.chunks("train"))
    assert torch.equal(src.keep_mask(enc2["input_ids"], enc2["attention_mask"]), keep)
    assert not src.is_causal_lm and src.module is src.model.encoder.layer[3]


def test_minilm_input_hook_equals_attention_output(minilm_dir, texts_file):
    from transformers import AutoModel, AutoTokenizer

    cfg = ModelSourceConfig(
        model=str(minilm_dir), hook="encoder.layer.3.intermediate.dense", hook_side="input", corpus=[str(texts_file)]
    )
    got = collect(ModelSource(cfg).iter_batches())
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    for i, text in enumerate(TEXTS):  # one unpadded text at a time, so no attention mask is needed
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            h3 = model(input_ids=ids, output_hidden_states=True).hidden_states[3]
            attn = model.encoder.layer[3].attention(h3)[0][0]  # (T, 384)
        torch.testing.assert_close(got["acts"][got["doc_ids"] == i], attn[1:-1], atol=1e-5, rtol=1e-5)


def _model_cfg(model_dir, corpus, **kw) -> ModelSourceConfig:
    return ModelSourceConfig(model=str(model_dir), hook=kw.pop("hook", "encoder.layer.1"), corpus=[str(corpus)], **kw)


def test_model_resume_equals_full_pass(tiny_bert_dir, text_corpus, monkeypatch):
    # windows of 3 * 4 = 12 chunks (length-sorted inside), so the stream spans several windows
    monkeypatch.setattr(hf, "WINDOW_BATCHES", 4)
    src = ModelSource(_model_cfg(tiny_bert_dir, text_corpus, batch_size=3, max_length=12))
    full = collect(src.iter_batches("train"))
    n = src.num_rows("train")
    assert full["acts"].shape == (n, 32) and len(src.chunks("train")) > 24
    counts = torch.bincount(full["doc_ids"]).tolist()
    boundary = sum(counts[:12])  # first row of the second window
    for start in (0, 7, boundary - 1, boundary, boundary + 3, n - 1, n):
        part = collect(src.iter_batches("train", start_row=start)) if start < n else {}
        if start == n:
            assert list(src.iter_batches("train", start_row=n)) == []
            continue
        for key in ("acts", "token_ids", "doc_ids", "positions"):
            assert torch.equal(part[key], full[key][start:]), (start, key)
    # a fresh source (fresh model load) gives the same rows
    again = collect(ModelSource(src.config).iter_batches("train"))
    assert torch.equal(again["acts"], full["acts"])
    with pytest.raises(ConfigError, match="past the end"):
        next(src.iter_batches("train", start_row=n + 1))


def test_model_long_documents_are_chunked(tiny_bert_dir, tmp_path):
    (tmp_path / "long.txt").write_text(" ".join(f"word{i}" for i in range(300)))
    src = ModelSource(_model_cfg(tiny_bert_dir, tmp_path / "long.txt", max_length=16))
    chunks = src.chunks("train")
    cls, sep = src.tokenizer.cls_token_id, src.tokenizer.sep_token_id
    assert len(chunks) > 1 and all(len(c) <= 16 and c[0] == cls and c[-1] == sep for c in chunks)
    body = [t for c in chunks for t in c[1:-1]]
    assert body == src.tokenizer(" ".join(f"word{i}" for i in range(300)), add_special_tokens=False)["input_ids"]
    assert src.num_rows("train") == len(body) == len(collect(src.iter_batches())["acts"])


def test_model_splits_disjoint(tiny_bert_dir, text_corpus):
    src = ModelSource(_model_cfg(tiny_bert_dir, text_corpus))
    train, ev = src.documents("train"), src.documents("eval")
    docs = load_documents([str(text_corpus)])
    distinct = list(dict.fromkeys(docs))  # the fixture repeats its .txt paragraphs four times
    assert len(docs) == 42 and len(train) + len(ev) == len(distinct) == 33 and len(ev) == 1
    assert ev == [distinct[19]] and not set(train) & set(ev)
    assert src.num_rows("eval") == len(collect(src.iter_batches("eval"))["acts"]) > 0


def test_causal_lm_source(tiny_gpt2_dir, text_corpus):
    src = ModelSource(_model_cfg(tiny_gpt2_dir, text_corpus, hook="transformer.h.0", batch_size=4))
    assert src.is_causal_lm and src.d_in == 32
    full = collect(src.iter_batches())
    assert full["acts"].shape[0] == src.num_rows() and torch.isfinite(full["acts"]).all()
    assert torch.equal(collect(src.iter_batches(start_row=100))["acts"], full["acts"][100:])


def test_causal_lm_rows_leave_out_each_chunks_first_positions(tiny_gpt2_dir, tmp_path):
    # special tokens kept, so the chunks' [CLS] at position 0 only goes by the first-positions rule
    (tmp_path / "long.txt").write_text(" ".join(f"word{i}" for i in range(200)) + "\n\n" + "a short one")
    kw = {"hook": "transformer.h.1", "max_length": 16, "exclude_special_tokens": False}
    rows = {}
    for first in (None, 0, 3):
        src = ModelSource(_model_cfg(tiny_gpt2_dir, tmp_path / "long.txt", exclude_first_positions=first, **kw))
        rows[first] = got = collect(src.iter_batches())
        chunks = src.chunks()
        skip = 1 if first is None else first  # None: one position, as for every causal LM
        assert src.first_positions == skip
        assert got["positions"].min() == skip and src.num_rows() == sum(len(c) - skip for c in chunks)
        assert torch.equal(got["token_ids"], torch.tensor([t for c in chunks for t in c[skip:]]))
        assert src.row_counts().tolist() == [len(c) - skip for c in chunks]
        assert torch.equal(collect(src.iter_batches(start_row=5))["acts"], got["acts"][5:])
    # the same activations, only fewer rows: each chunk's first position is dropped, nothing else moves
    every = rows[0]
    assert torch.equal(rows[None]["acts"], every["acts"][every["positions"] >= 1])
    assert torch.equal(rows[3]["acts"], every["acts"][every["positions"] >= 3])
    with pytest.raises(ConfigError, match="exclude_first_positions 16 leaves no row"):
        _model_cfg(tiny_gpt2_dir, tmp_path / "long.txt", exclude_first_positions=16, max_length=16)


def test_encoder_rows_keep_the_first_positions_by_default(tiny_bert_dir, text_corpus):
    src = ModelSource(_model_cfg(tiny_bert_dir, text_corpus, exclude_special_tokens=False))
    assert src.first_positions == 0 and collect(src.iter_batches())["positions"].min() == 0


def test_forward_stops_at_the_hook(tiny_bert_dir, text_corpus):
    src = ModelSource(_model_cfg(tiny_bert_dir, text_corpus, hook="encoder.layer.0"))

    def later_layer_must_not_run(module, args):
        raise AssertionError("layer 1 ran although the hook is on layer 0")

    src.model.encoder.layer[1].register_forward_pre_hook(later_layer_must_not_run)
    assert len(collect(src.iter_batches())["acts"]) == src.num_rows()


def test_unknown_hook_lists_close_matches(tiny_bert_dir, text_corpus):
    src = ModelSource(_model_cfg(tiny_bert_dir, text_corpus, hook="encoder.layer.11"))
    msg = r"unknown hook 'encoder.layer.11' in BertModel; close matches: .*encoder\.layer\.1"
    with pytest.raises(DataError, match=msg):
        _ = src.d_in
    with pytest.raises(DataError, match="close matches"):
        find_module(src.model, "encoder.layr.0.output")


def test_missing_model_errors(tmp_path, text_corpus):
    with pytest.raises(DataError, match=r"model directory .*nope not found"):
        ModelSource(ModelSourceConfig(model=str(tmp_path / "nope"), hook="encoder.layer.0"))
    with pytest.raises(DataError, match="could not load model 'no-such-model-xyz'.*offline"):
        ModelSource(ModelSourceConfig(model="no-such-model-xyz", hook="encoder.layer.0"))
    with pytest.raises(DataError, match="could not load model"):
        ModelSource(ModelSourceConfig(model=str(text_corpus), hook="encoder.layer.0"))  # a dir with no model


def test_non_finite_activation_raises(tiny_bert_dir, text_corpus):
    src = ModelSource(_model_cfg(tiny_bert_dir, text_corpus, hook="encoder.layer.0"))
    src.model.embeddings.register_forward_hook(lambda m, a, out: out * float("nan"))
    with pytest.raises(DataError, match="non-finite activation in train chunk 0"):
        next(src.iter_batches())


def test_model_config_validation():
    with pytest.raises(ConfigError, match="source.hook"):
        ModelSourceConfig(hook="")
    with pytest.raises(ConfigError, match="source.hook_side"):
        ModelSourceConfig(hook="x", hook_side="middle")
    with pytest.raises(ConfigError, match="source.max_length"):
        ModelSourceConfig(hook="x", max_length=0)
    with pytest.raises(ConfigError, match="source.dtype"):
        ModelSourceConfig(hook="x", dtype="float64")
    with pytest.raises(ConfigError, match="source.corpus"):
        ModelSourceConfig(hook="x", corpus=[])


# --------------------------------------------------------------------------- corpora


def test_load_documents(tmp_path, text_corpus):
    docs = load_documents([str(text_corpus)])
    assert docs[0] == "The quick brown fox jumps over the lazy dog." and docs[12].startswith("Document number 0 ")
    assert load_documents([str(text_corpus / "b.jsonl")]) == docs[12:]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        load_documents([str(bad)])
    with pytest.raises(DataError, match="not found"):
        load_documents([str(tmp_path / "missing.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no documents found"):
        load_documents([str(tmp_path / "empty")])


def test_default_corpus_and_split():
    docs = load_documents(None)
    assert len(docs) > 1000 and all(len(d) >= 20 for d in docs) and docs == load_documents(None)
    ev = split_documents(docs, "eval")
    distinct = list(dict.fromkeys(docs))
    assert ev == distinct[19::20] and len(split_documents(docs, "train")) == len(distinct) - len(ev)


# --------------------------------------------------------------------------- array files


def _write_all_formats(tmp_path, data: np.ndarray) -> dict[str, ArraySourceConfig]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    np.save(tmp_path / "a.npy", data)
    save_file({"acts": data}, str(tmp_path / "a.safetensors"))
    flat = pa.array(data.reshape(-1))
    table = pa.table({"id": np.arange(len(data)), "acts": pa.FixedSizeListArray.from_arrays(flat, data.shape[1])})
    pq.write_table(table, tmp_path / "list.parquet", row_group_size=37)
    cols = pa.table({f"c{j}": data[:, j] for j in range(data.shape[1])})
    pq.write_table(cols, tmp_path / "cols.parquet", row_group_size=50)
    kw = {"chunk_rows": 16, "eval_fraction": 0.1}
    return {
        "npy": ArraySourceConfig(path=str(tmp_path / "a.npy"), **kw),
        "safetensors": ArraySourceConfig(path=str(tmp_path / "a.safetensors"), **kw),
        "parquet-list": ArraySourceConfig(path=str(tmp_path / "list.parquet"), **kw),
        "parquet-cols": ArraySourceConfig(path=str(tmp_path / "cols.parquet"), **kw),
    }


def test_array_formats_round_trip_and_resume(tmp_path):
    data = np.random.default_rng(0).standard_normal((200, 6)).astype(np.float32)
    for name, cfg in _write_all_formats(tmp_path, data).items():
        src = open_source(cfg)
        src.validate()
        assert src.d_in == 6 and src.num_rows("train") == 180 and src.num_rows("eval") == 20, name
        train, ev = collect(src.iter_batches("train"))["acts"], collect(src.iter_batches("eval"))["acts"]
        assert torch.equal(train, torch.from_numpy(data[:180])), name
        assert torch.equal(ev, torch.from_numpy(data[180:])), name  # held-out tail, disjoint from train
        for start in (1, 15, 16, 37, 179):
            part = collect(src.iter_batches("train", start_row=start))["acts"]
            assert torch.equal(part, train[start:]), (name, start)
        assert torch.equal(collect(src.iter_batches("eval", start_row=5))["acts"], ev[5:])


def test_array_nan_is_reported_with_row_and_column(tmp_path):
    data = np.zeros((300, 8), dtype=np.float32)
    data[123, 4] = np.nan
    np.save(tmp_path / "nan.npy", data)
    src = ArraySource(ArraySourceConfig(path=str(tmp_path / "nan.npy"), chunk_rows=50))
    with pytest.raises(DataError, match=r"nan.npy: row 123 column 4 is NaN"):
        src.validate()
    with pytest.raises(DataError, match=r"row 123 column 4 is NaN"):
        collect(src.iter_batches())
    assert len(collect(src.iter_batches(), limit=100)["acts"]) == 100  # rows before the bad chunk stream fine


@pytest.mark.parametrize("bad,word", [(np.inf, "inf"), (-np.inf, "-inf")])
def test_array_infinities_are_reported_and_huge_finite_values_pass(tmp_path, bad, word):
    data = np.full((300, 8), 3e38, dtype=np.float32)  # finite, but any sum of them overflows float32
    np.save(tmp_path / "huge.npy", data)
    src = ArraySource(ArraySourceConfig(path=str(tmp_path / "huge.npy"), chunk_rows=50))
    src.validate()
    assert len(collect(src.iter_batches())["acts"]) == src.num_rows("train") > 250
    data[:] = 1.0
    data[201, 7] = bad
    np.save(tmp_path / "inf.npy", data)
    src = ArraySource(ArraySourceConfig(path=str(tmp_path / "inf.npy"), chunk_rows=50))
    with pytest.raises(DataError, match=rf"inf.npy: row 201 column 7 is {word};"):
        src.validate()


def test_array_file_errors(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"cube.npy: expected a 2-D array .* got shape \(2, 3, 4\)"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "cube.npy")))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"shape \(0, 4\)"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "empty.npy")))
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "obj.npy")))
    with pytest.raises(DataError, match="file not found"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "missing.npy")))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported .*\.npy, \.safetensors, \.parquet"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "x.csv")))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="junk.safetensors"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "junk.safetensors")))

    from safetensors.numpy import save_file

    save_file({"a": np.zeros((4, 2), np.float32), "b": np.zeros((4, 2), np.float32)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ConfigError, match="set source.key to one of: a, b"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "two.safetensors")))
    assert ArraySource(ArraySourceConfig(path=str(tmp_path / "two.safetensors"), key="b")).d_in == 2
    with pytest.raises(ConfigError, match="eval_fraction"):
        ArraySourceConfig(path="x.npy", eval_fraction=1.0)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_rows_are_codes_times_features():
    src = SyntheticSource(SyntheticSourceConfig(n_features=64, dim=16, active=3, seed=1, chunk_rows=1000))
    assert src.num_rows() is None and src.d_in == 16
    feats = src.true_features
    assert feats.shape == (64, 16)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(64))
    b = next(src.iter_batches())
    assert b.codes is not None and b.codes.shape == (1000, 64)
    torch.testing.assert_close(b.acts, b.codes @ feats, atol=1e-6, rtol=0)
    nz = b.codes[b.codes != 0]
    assert nz.min() > 0 and nz.max() <= 1.0  # uniform magnitudes, U(0, 1)


@pytest.mark.parametrize("correlation", [0.0, 0.5])
def test_synthetic_active_count_and_correlation(correlation):
    cfg = SyntheticSourceConfig(
        n_features=32,
        dim=8,
        active=4.0,
        correlation=correlation,
        group_size=4,
        magnitude="constant",
        seed=3,
        chunk_rows=20000,
    )
    src = SyntheticSource(cfg)
    codes = collect(src.iter_batches(), limit=40000)["codes"]
    on = (codes != 0).float()
    assert abs(on.sum(1).mean().item() - 4.0) < 0.1
    corr = torch.corrcoef(on.T)  # (32, 32)
    groups = src._group_of
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(32, dtype=torch.bool)
    assert abs(corr[same].mean().item() - correlation) < 0.03
    assert abs(corr[~same & ~torch.eye(32, dtype=torch.bool)].mean().item()) < 0.03


def test_synthetic_determinism_resume_and_splits():
    cfg = SyntheticSourceConfig(n_features=40, dim=10, active=2, magnitude="exponential", noise=0.01, chunk_rows=100)
    a, b = SyntheticSource(cfg), SyntheticSource(source_config_from_dict(cfg.to_dict()))
    full = collect(a.iter_batches("train"), limit=450)
    assert torch.equal(full["acts"], collect(b.iter_batches("train"), limit=450)["acts"])
    for start in (1, 99, 100, 250):
        part = collect(a.iter_batches("train", start_row=start), limit=450 - start)["acts"]
        assert torch.equal(part, full["acts"][start:])
    ev = collect(a.iter_batches("eval"), limit=450)["acts"]
    assert not torch.allclose(ev, full["acts"])
    other = SyntheticSource(SyntheticSourceConfig(n_features=40, dim=10, active=2, seed=7))
    assert not torch.allclose(other.true_features, a.true_features)
    assert torch.equal(SyntheticSource(cfg).true_features, a.true_features)


def test_parse_synthetic_spec():
    cfg = parse_synthetic_spec("features=512,dim=64,active=5")
    assert (cfg.n_features, cfg.dim, cfg.active) == (512, 64, 5.0)
    cfg = parse_synthetic_spec("features=100, dim=8, active=2.5, magnitude=exponential, correlation=0.2, seed=9")
    assert (cfg.magnitude, cfg.correlation, cfg.seed, cfg.active) == ("exponential", 0.2, 9, 2.5)
    assert parse_synthetic_spec("") == SyntheticSourceConfig()
    for bad, needle in [
        ("foo=1", "foo"),
        ("dim=abc", "dim"),
        ("features=10,active=20", "active"),
        ("magnitude=weird", "magnitude"),
        ("dim", "key=value"),
        ("seed=1.5", "seed"),
        ("dim=4,dim=5", "twice"),
        ("correlation=2", "correlation"),
        ("noise=nan", "noise"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            parse_synthetic_spec(bad)


# --------------------------------------------------------------------------- configs


def test_config_dict_round_trip(tmp_path):
    configs = [
        ModelSourceConfig(hook="encoder.layer.3", corpus=["a.txt"], max_length=64),
        ArraySourceConfig(path="x.npy", key=None, eval_fraction=0.2),
        SyntheticSourceConfig(n_features=10, dim=3, active=1.5),
    ]
    for cfg in configs:
        d = json.loads(json.dumps(cfg.to_dict()))
        assert source_config_from_dict(d) == cfg
        assert SOURCE_KINDS[d["kind"]][0] is type(cfg)
    with pytest.raises(ConfigError, match="unknown kind 'bogus'"):
        source_config_from_dict({"kind": "bogus"})
    with pytest.raises(ConfigError, match="missing 'kind'"):
        source_config_from_dict({"path": "x.npy"})
    with pytest.raises(ConfigError, match="missing required field.*path"):
        source_config_from_dict({"kind": "arrays"})
    with pytest.raises(ConfigError, match="unknown field"):
        source_config_from_dict({"kind": "synthetic", "width": 3})
    assert isinstance(open_source(configs[2]), SyntheticSource)


def test_repeated_documents_never_straddle_the_split():
    docs = [f"doc {i}" for i in range(100)] + ["New in version 3.10."] * 30
    train_docs, eval_docs = split_documents(docs, "train"), split_documents(docs, "eval")
    assert not set(train_docs) & set(eval_docs)
    assert sorted(train_docs + eval_docs) == sorted(set(docs))


def test_capabilities_are_declared_and_kept(tmp_path, tiny_bert_dir, text_corpus):
    """Every source says what it can do (is_text_model / has_true_features / d_out / fingerprint), and what it
    says holds: the text source runs its model at the hook, the synthetic one generates its rows from its true
    features, the array one is a plain stream; the activation cache passes the declarations on."""
    from sparsecode.activations import CachedSource

    np.save(tmp_path / "a.npy", np.ones((10, 3), dtype=np.float32))
    arrays = open_source(ArraySourceConfig(path=str(tmp_path / "a.npy")))
    synthetic = open_source(SyntheticSourceConfig(n_features=8, dim=4, active=1.0, noise=0.0))
    text = open_source(ModelSourceConfig(model=str(tiny_bert_dir), hook="encoder.layer.0", corpus=[str(text_corpus)]))
    got = {s.config.kind: (s.is_text_model, s.has_true_features, s.d_out) for s in (arrays, synthetic, text)}
    assert got == {"arrays": (False, False, None), "synthetic": (False, True, None), "model": (True, False, None)}
    assert arrays.fingerprint() is None and synthetic.fingerprint() is None and "documents_sha256" in text.fingerprint()
    assert (arrays.config.has_device, synthetic.config.has_device, text.config.has_device) == (False, False, True)
    assert synthetic.config.known_d_in() == 4 and arrays.config.known_d_in() is None

    batch = next(synthetic.iter_batches())
    assert torch.allclose(batch.acts, batch.codes @ synthetic.true_features, atol=1e-6)  # (rows, 4)
    enc = text.tokenize(text.chunks("eval")[:2])
    hidden = text.model(**enc, output_hidden_states=True).hidden_states[1]  # (2, T, 32)
    assert torch.equal(text.activations(enc["input_ids"], enc["attention_mask"]), hidden)

    cached = CachedSource(text, tmp_path / "cache")
    assert (cached.is_text_model, cached.d_out, cached.fingerprint()) == (False, None, text.fingerprint())
