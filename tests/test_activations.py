"""The activations stage: the shuffled, resumable, sharded store and the on-disk activation cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sparsecode.activations import ActivationStore, CachedSource
from sparsecode.errors import ConfigError
from sparsecode.sources import ArraySourceConfig, open_source


def _array_source(tmp_path, n=1000, d=4):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    np.save(tmp_path / "rows.npy", x)
    return open_source(ArraySourceConfig(path=str(tmp_path / "rows.npy"), eval_fraction=0.2, chunk_rows=37))


def test_store_emits_each_row_once_per_epoch_shuffled(tmp_path):
    source = _array_source(tmp_path)
    n = source.num_rows("train")  # 800
    store = ActivationStore(source, batch_size=50, buffer_rows=200, seed=0)
    rows = torch.cat([next(store) for _ in range(n // 50)])
    assert sorted(rows[:, 0].tolist()) == sorted(r[0] for r in np.load(tmp_path / "rows.npy")[:n].tolist())
    assert not torch.equal(rows[:, 0], torch.sort(rows[:, 0]).values)  # shuffled
    # shuffling is local: a batch only holds rows of its own fill (bounded memory)
    assert rows[:200, 0].max() < rows[200:, 0].min()


def test_store_resumes_from_its_batch_count(tmp_path):
    source = _array_source(tmp_path)
    a = ActivationStore(source, batch_size=50, buffer_rows=150, seed=3)
    reference = [next(a) for _ in range(40)]  # crosses epochs (800 rows = 16 batches) and fills
    b = ActivationStore(source, batch_size=50, buffer_rows=150, seed=3, batches_emitted=23)
    for i in range(23, 40):
        assert torch.equal(next(b), reference[i])


def test_sharded_stores_split_every_batch_and_read_only_their_rows(tmp_path):
    source = _array_source(tmp_path)  # row i holds 4i .. 4i+3, so column 0 / 4 is the row number
    read: list[range] = []
    iter_batches = source.iter_batches

    def counting(split, start_row=0):
        for block in iter_batches(split, start_row):
            first = int(block.acts[0, 0]) // 4
            read.append(range(first, first + len(block)))
            yield block

    source.iter_batches = counting
    whole = ActivationStore(source, batch_size=60, buffer_rows=240, seed=1, shards=3)
    reference = [next(whole) for _ in range(20)]  # crosses fills and the 800-row epoch
    # one store per shard, or two shards in one store: together they yield exactly the global batches
    parts = [
        ActivationStore(source, batch_size=60, buffer_rows=240, seed=1, shards=3, own=own)
        for own in (range(1), range(1, 3))
    ]
    for i in range(20):
        assert torch.equal(torch.cat([next(p) for p in parts]), reference[i])
    # shard 0 alone reads only the first third of each 240-row fill
    read.clear()
    alone = ActivationStore(source, batch_size=60, buffer_rows=240, seed=1, shards=3, own=range(1))
    rows = torch.cat([next(alone) for _ in range(8)])  # two fills
    assert rows.shape == (8 * 20, 4)
    assert sorted((rows[:, 0] // 4).long().tolist()) == list(range(80)) + list(range(240, 320))
    assert all(r.start % 240 < 80 for r in read)
    assert sum(len(r) for r in read) < 2 * 80 + 2 * 37  # at most a chunk past each shard's end
    # one shard is exactly the unsharded store
    one = ActivationStore(source, batch_size=60, buffer_rows=240, seed=1)
    assert torch.equal(next(one), next(ActivationStore(source, batch_size=60, buffer_rows=240, seed=1, shards=1)))
    with pytest.raises(ConfigError, match="divide the batch size"):
        ActivationStore(source, batch_size=60, buffer_rows=240, shards=7)


def test_cache_reuses_a_complete_pass_and_never_keeps_a_partial_one(tmp_path):
    source = _array_source(tmp_path)
    calls = []
    original = source.iter_batches

    def counting(split="train", start_row=0):
        calls.append((split, start_row))
        return original(split, start_row)

    source.iter_batches = counting
    cached = CachedSource(source, tmp_path / "cache", shard_rows=100)
    first = list(cached.iter_batches("train"))
    partial = cached.iter_batches("eval")
    next(partial)
    partial.close()  # an interrupted pass
    assert not cached.is_cached("eval") and cached.is_cached("train")
    calls.clear()
    again = torch.cat([b.acts for b in cached.iter_batches("train")])
    assert calls == []  # served from disk
    assert torch.equal(again, torch.cat([b.acts for b in first]))
    tail = torch.cat([b.acts for b in cached.iter_batches("train", start_row=333)])
    assert torch.equal(tail, again[333:])
    # a second wrapper (another run) with the same source config finds the same cache
    assert CachedSource(source, tmp_path / "cache").is_cached("train")


def test_cache_key_follows_the_corpus_text_and_the_model_files(tmp_path, tiny_bert_dir, text_corpus):
    from sparsecode.activations import cache_key
    from sparsecode.sources import ModelSourceConfig

    config = ModelSourceConfig(model=str(tiny_bert_dir), hook="encoder.layer.0", corpus=[str(text_corpus)])
    key = cache_key(open_source(config))
    assert cache_key(open_source(config)) == key  # stable
    with open(text_corpus / "a.txt", "a") as f:
        f.write("\n\nA paragraph added after the first run.\n")
    assert cache_key(open_source(config)) != key  # edited corpus: the old activations are not served
    key2 = cache_key(open_source(config))
    (tiny_bert_dir / "config.json").touch()
    os.utime(tiny_bert_dir / "config.json", ns=(1, 1))
    assert cache_key(open_source(config)) != key2  # replaced model files
