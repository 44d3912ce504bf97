"""`sparsecode features`: the streamed database equals a brute-force reference, planted features come out as
planted, and an interrupted build leaves no half-written database."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import torch
from planted_run import APPLES, DEAD, DENSE, N_LATENTS, SCRIPT, SCRIPT_TOKEN

from sparsecode.errors import ConfigError, DataError
from sparsecode.features import FeaturesConfig, build_features
from sparsecode.features.collect import FeatureAccumulator, hist_edges

SETTINGS = {"top_n": 5, "n_samples": 12, "context_left": 4, "context_right": 3}  # as the planted_features fixture


def _db(run):
    con = sqlite3.connect(run / "features.sqlite")
    con.row_factory = sqlite3.Row
    return con


def _reference(run, split="eval"):
    """Every latent activation of every kept token, by brute force: {chunk: (token ids, keep, latents (T, m))}."""
    from sparsecode.run import load_run
    from sparsecode.sources import open_source

    r = load_run(run)
    source = open_source(r.config.source)
    out = {}
    for i, chunk in enumerate(source.chunks(split)):
        enc = source.tokenize([chunk])
        keep = source.keep_mask(enc["input_ids"], enc["attention_mask"])[0]
        with torch.no_grad():
            lat = r.sae.encode(source.activations(enc["input_ids"], enc["attention_mask"])[0])  # (T, m)
        out[i] = (chunk, keep, lat * keep[:, None])
    return out


def test_database_matches_a_brute_force_reference(planted_features):
    ref = _reference(planted_features)
    con = _db(planted_features)
    n_tokens = sum(int(k.sum()) for _, k, _ in ref.values())
    meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
    assert meta["n_tokens"] == n_tokens and meta["n_latents"] == N_LATENTS and meta["split"] == "eval"
    all_lat = torch.cat([lat[keep] for _, keep, lat in ref.values()])  # (n_tokens, m)

    for f in range(N_LATENTS):
        row = con.execute("SELECT * FROM features WHERE id = ?", (f,)).fetchone()
        acts = all_lat[:, f]
        firing = acts[acts > 0]
        assert row["fire_count"] == firing.numel()
        assert row["density"] == pytest.approx(firing.numel() / n_tokens)
        assert row["max_act"] == pytest.approx(float(acts.max()), rel=1e-5)
        if firing.numel():
            assert row["mean_act"] == pytest.approx(float(firing.mean()), rel=1e-3)
            hist = json.loads(row["histogram"])
            assert sum(c for _, _, c in hist) == firing.numel()
            assert hist[0][0] <= float(firing.min()) and float(firing.max()) <= hist[-1][1]

        # top contexts: distinct chunks with the largest per-chunk maxima (equal ones in any order), centred on it
        per_chunk = sorted((float(lat[:, f].max()) for _, _, lat in ref.values() if lat[:, f].max() > 0), reverse=True)
        top = con.execute("SELECT * FROM contexts WHERE feature = ? AND kind = 'top' ORDER BY rank", (f,)).fetchall()
        assert [c["activation"] for c in top] == pytest.approx(per_chunk[: SETTINGS["top_n"]], rel=1e-5)
        assert len({c["chunk"] for c in top}) == len(top)
        for c in top:
            tokens, keep, lat = ref[c["chunk"]]
            assert float(lat[c["position"], f]) == pytest.approx(c["activation"], rel=1e-5)
            assert float(lat[:, f].max()) == pytest.approx(c["activation"], rel=1e-5)
            shown = [p for p in range(c["position"] - 4, c["position"] + 4) if 0 <= p < len(tokens) and keep[p]]
            assert json.loads(c["token_ids"]) == [tokens[p] for p in shown]
            assert shown[c["center"]] == c["position"]
            assert json.loads(c["acts"]) == pytest.approx([float(lat[p, f]) for p in shown], abs=1e-4)


def test_quantiles_and_sampled_contexts(planted_features):
    ref = _reference(planted_features)
    con = _db(planted_features)
    levels = json.loads(con.execute("SELECT value FROM meta WHERE key = 'quantile_levels'").fetchone()[0])
    for f in range(4, N_LATENTS):  # random directions: hundreds of distinct activations
        firing = torch.cat([lat[keep][:, f] for _, keep, lat in ref.values()])
        firing = firing[firing > 0].double()
        assert firing.numel() > 50
        stored = json.loads(con.execute("SELECT quantiles FROM features WHERE id = ?", (f,)).fetchone()[0])
        for q, value in zip(levels, stored):  # histogram bins are 6% wide: within one bin of the exact rank range
            lo = torch.quantile(firing, max(q - 0.02, 0.0)) / 1.06
            hi = torch.quantile(firing, min(q + 0.02, 1.0)) * 1.06
            assert lo <= value <= hi, (f, q, value, float(lo), float(hi))
        samples = con.execute("SELECT * FROM contexts WHERE feature = ? AND kind = 'quantile'", (f,)).fetchall()
        bands = [s["band"] for s in samples]  # a random sample: not every band need be hit
        assert len(set(bands)) >= 2 and all(bands.count(b) <= 2 for b in bands)
        q = dict(zip(levels, stored))
        bounds = {"0-25%": (0, q[0.25]), "25-50%": (q[0.25], q[0.5]), "50-75%": (q[0.5], q[0.75])}
        top = {
            tuple(r)
            for r in con.execute("SELECT chunk, position FROM contexts WHERE feature = ? AND kind = 'top'", (f,))
        }
        for s in samples:
            assert (s["chunk"], s["position"]) not in top  # not shown twice
            lo, hi = bounds[s["band"]]
            assert lo <= s["activation"] < hi
            lat = ref[s["chunk"]][2]
            assert float(lat[s["position"], f]) == pytest.approx(s["activation"], rel=1e-5)


def test_planted_features(planted_features):
    con = _db(planted_features)
    text = dict(con.execute("SELECT id, text FROM tokens").fetchall())
    for latent, word in ((SCRIPT, " " + SCRIPT_TOKEN), (APPLES, " apples")):
        row = con.execute("SELECT * FROM features WHERE id = ?", (latent,)).fetchone()
        assert row["max_act"] == pytest.approx(1.0, abs=1e-4) and row["fire_count"] > 0
        centres = [
            text[json.loads(ids)[c]]
            for ids, c in con.execute("SELECT token_ids, center FROM contexts WHERE feature = ?", (latent,))
        ]
        assert centres and set(centres) == {word}
        assert json.loads(row["top_tokens"]) == [word]
        promoted = json.loads(row["promoted"])
        assert text[promoted[0][0]] == word  # its decoder row is that token's embedding direction
    dead = con.execute("SELECT * FROM features WHERE id = ?", (DEAD,)).fetchone()
    assert dead["fire_count"] == 0 and dead["max_act"] == 0 and json.loads(dead["histogram"]) == []
    assert con.execute("SELECT COUNT(*) FROM contexts WHERE feature = ?", (DEAD,)).fetchone()[0] == 0
    dense = con.execute("SELECT * FROM features WHERE id = ?", (DENSE,)).fetchone()
    assert dense["density"] == 1.0 and dense["max_act"] == pytest.approx(0.5)
    assert json.loads(con.execute("SELECT value FROM meta WHERE key = 'logit_embedding'").fetchone()[0]).startswith(
        "input word embeddings"
    )


def test_accumulator_is_independent_of_batching():
    """Streaming in 1 batch or many gives the same statistics and top examples."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(12, 10, 6, generator=g)  # (chunks, T, m); negative values do not count as firing
    keep = torch.rand(12, 10, generator=g) > 0.2
    results = []
    for step in (12, 5, 1):
        acc = FeatureAccumulator(6, top_n=4, n_samples=3, context_left=2, context_right=1)
        for s in range(0, 12, step):
            acc.update(latents[s : s + step], keep[s : s + step], torch.arange(s, min(s + step, 12)))
        results.append(acc)
    for other in results[1:]:
        assert torch.equal(other.fire_count, results[0].fire_count) and torch.equal(other.hist, results[0].hist)
        assert torch.equal(other.top.chunks, results[0].top.chunks)
        assert torch.equal(other.top.values, results[0].top.values)
        assert torch.allclose(other.top.windows, results[0].top.windows, equal_nan=True)
    masked = latents * keep[:, :, None]
    assert torch.equal(results[0].fire_count, (masked > 0).sum((0, 1)))
    assert torch.allclose(results[0].max_act, masked.amax((0, 1)))
    assert torch.allclose(results[0].min_act, masked.where(masked > 0, torch.inf).amin((0, 1)))
    assert torch.allclose(results[0].act_sum, masked.clamp(min=0).sum((0, 1)).double())
    assert hist_edges()[0] < 1e-5 and results[0].quantiles((0.5,)).shape == (6, 1)


def test_max_tokens_and_train_split(planted_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    r = build_features(run, FeaturesConfig(split="train", max_tokens=40, **SETTINGS), progress=False)
    assert r["split"] == "train" and 40 <= r["n_tokens"] < 40 + 24
    con = _db(run)
    assert json.loads(con.execute("SELECT value FROM meta WHERE key = 'split'").fetchone()[0]) == "train"


def test_interrupted_build_leaves_the_old_database(planted_features, tmp_path, monkeypatch):
    from sparsecode.features import database

    run = tmp_path / "run"
    shutil.copytree(planted_features, run)
    before = (run / "features.sqlite").read_bytes()
    real_executemany = sqlite3.Connection.executemany

    class Boom(KeyboardInterrupt):
        pass

    def interrupted(con, sql, rows):
        if "INSERT INTO contexts" in sql:
            raise Boom
        return real_executemany(con, sql, rows)

    monkeypatch.setattr(database.sqlite3, "connect", _wrapping_connect(interrupted))
    with pytest.raises(Boom):
        build_features(run, FeaturesConfig(**SETTINGS), progress=False)
    assert (run / "features.sqlite").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in planted_features.iterdir())

    (run / "features.sqlite").unlink()
    with pytest.raises(Boom):
        build_features(run, FeaturesConfig(**SETTINGS), progress=False)
    assert not (run / "features.sqlite").exists()


def _wrapping_connect(executemany):
    real_connect = sqlite3.connect

    class Connection(sqlite3.Connection):
        def executemany(self, sql, rows):
            return executemany(self, sql, rows)

    return lambda *a, **kw: real_connect(*a, factory=Connection, **kw)


def test_causal_lm_uses_the_output_embedding(tmp_path, tiny_gpt2_dir, text_corpus):
    from sparsecode.run import RunConfig
    from sparsecode.sae import TopKConfig, build_sae
    from sparsecode.sources import ModelSourceConfig

    sae = build_sae(TopKConfig(d_in=32, n_latents=16, k=3))
    RunConfig(
        source=ModelSourceConfig(
            model=str(tiny_gpt2_dir), hook="transformer.h.0", corpus=[str(text_corpus)], eval_every=2
        ),
        sae=sae.cfg,
    ).save(tmp_path)
    sae.save(tmp_path / "sae.safetensors")
    r = build_features(tmp_path, FeaturesConfig(**SETTINGS), progress=False)
    assert r["logit_embedding"] == "output embedding (LM head)"
    from transformers import AutoModelForCausalLM

    head = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir)).get_output_embeddings().weight.detach()
    expected = (sae.W_dec.detach()[7] @ head.T).topk(3).indices.tolist()
    promoted = json.loads(_db(tmp_path).execute("SELECT promoted FROM features WHERE id = 7").fetchone()[0])
    assert [p[0] for p in promoted[:3]] == expected


def test_bad_input(tmp_path, planted_run):
    with pytest.raises(ConfigError, match="split"):
        FeaturesConfig(split="test")
    with pytest.raises(ConfigError, match="n_samples"):
        FeaturesConfig(n_samples=2, quantile_examples=2)
    with pytest.raises(DataError, match="not found"):
        build_features(tmp_path / "nope", progress=False)
    from sparsecode.run import RunConfig
    from sparsecode.sae import TopKConfig, build_sae
    from sparsecode.sources import SyntheticSourceConfig

    sae = build_sae(TopKConfig(d_in=8, n_latents=16, k=2))
    RunConfig(source=SyntheticSourceConfig(n_features=16, dim=8, active=2), sae=sae.cfg).save(tmp_path)
    sae.save(tmp_path / "sae.safetensors")
    with pytest.raises(DataError, match="text model"):
        build_features(tmp_path, progress=False)


def test_command_line(planted_run, tmp_path, capsys):
    from sparsecode.cli import build_parser, main

    assert build_parser().parse_args(["serve", "RUN"]).host == "127.0.0.1"  # this machine only, unless told

    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    assert main(["serve", str(run)]) == 2  # no database yet: one line saying how to build it
    assert "sparsecode features" in capsys.readouterr().err
    assert main(["features", str(run), "--top", "3", "--max-tokens", "100", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'features.sqlite'}: {N_LATENTS} latents" in out and "1 dead" in out
    assert f"browse: sparsecode serve {run}" in out
    assert _db(run).execute("SELECT MAX(rank) FROM contexts WHERE kind = 'top'").fetchone()[0] == 2
    assert main(["features", str(tmp_path / "missing"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not found" in err and len(err.splitlines()) == 1


def test_random_contexts_list_exactly_the_latents_firing_in_them(planted_features):
    """The negatives of `sparsecode explain`: each random window's token ids and firing latents match a brute-force
    pass (a latent missing from a window's list fires on none of its tokens)."""
    ref = _reference(planted_features)
    rows = _db(planted_features).execute("SELECT * FROM random_contexts ORDER BY rank").fetchall()
    assert len(rows) > 10 and len({(r["chunk"], r["position"]) for r in rows}) == len(rows)
    for r in rows:
        chunk, keep, lat = ref[r["chunk"]]
        shown = [
            i
            for i in range(r["position"] - SETTINGS["context_left"], r["position"] + SETTINGS["context_right"] + 1)
            if 0 <= i < len(keep) and keep[i]
        ]
        assert keep[r["position"]] and shown[r["center"]] == r["position"]
        assert json.loads(r["token_ids"]) == [chunk[i] for i in shown]
        assert json.loads(r["active"]) == (lat[shown] > 0).any(0).nonzero()[:, 0].tolist()
