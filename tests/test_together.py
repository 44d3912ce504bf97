"""Several dictionaries from one forward pass: each run equals the run trained alone on the same rows."""

from __future__ import annotations

import json

import torch

from sparsecode.io import load_tensors
from sparsecode.run import RunConfig
from sparsecode.sae import TopKConfig
from sparsecode.sources import ModelSourceConfig
from sparsecode.train import TrainConfig, Trainer
from sparsecode.train.together import fit_together, open_sources
from sparsecode.train.trainer import open_training_source

# two hooks of different widths (32 and 128) on the tiny GPT-2; two dictionaries on the first
RUNS = (("transformer.h.0", 2), ("transformer.h.0", 4), ("transformer.h.1.mlp.c_fc", 2))
TRAIN = {"tokens": 64 * 14, "batch_size": 64, "buffer_rows": 64 * 3, "checkpoint_every": 5, "log_every": 2}


def _configs(model, corpus):
    return [(ModelSourceConfig(model=str(model), hook=hook, corpus=[str(corpus)], batch_size=4), k) for hook, k in RUNS]


def _run_config(source_config, source, k):
    sae = TopKConfig(d_in=source.d_in, n_latents=4 * source.d_in, k=k, seed=1)
    return RunConfig(source=source_config, sae=sae, train=TrainConfig(**TRAIN))


def _same_run(a, b):
    ta, tb = load_tensors(a / "sae.safetensors"), load_tensors(b / "sae.safetensors")
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    strip = lambda p: [
        {k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in (p / "metrics.jsonl").open()
    ]
    assert strip(a) == strip(b)
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())


def test_runs_trained_together_equal_runs_trained_alone(tmp_path, tiny_gpt2_dir, text_corpus):
    configs = _configs(tiny_gpt2_dir, text_corpus)
    cache = tmp_path / "cache"
    sources, finished = open_sources([c for c, _ in configs], cache)
    assert [s.d_in for s in sources] == [32, 32, 128]  # mixed widths in one pass
    assert 3 * 64 < sources[0].num_rows() < TRAIN["tokens"]  # several fills, more than one epoch
    trainers = [
        Trainer(_run_config(c, s, k), tmp_path / f"together{i}", s, progress=False)
        for i, ((c, k), s) in enumerate(zip(configs, sources))
    ]
    fit_together(trainers, finished=finished)
    for i, (c, k) in enumerate(configs):
        alone = open_training_source(c)  # no cache: the model runs for this hook alone
        Trainer(_run_config(c, alone, k), tmp_path / f"alone{i}", alone, progress=False).fit()
        _same_run(tmp_path / f"together{i}", tmp_path / f"alone{i}")
    # each hook's activations were cached under the key a single run uses
    assert open_training_source(configs[2][0], cache).is_cached("train")


def test_a_run_off_the_shared_stream_reads_its_own_pass(tmp_path, tiny_gpt2_dir, text_corpus):
    """A view that asks for rows the shared stream is not at (a resume elsewhere) gets them from a pass of its own."""
    configs = [c for c, _ in _configs(tiny_gpt2_dir, text_corpus)[1:]]
    sources, _ = open_sources(configs, None)
    alone = [open_training_source(c) for c in configs]
    first = next(iter(sources[0].iter_batches("train", 0)))
    off = next(iter(sources[1].iter_batches("train", 7)))  # the shared stream is at row 0
    assert torch.equal(first.acts, next(iter(alone[0].iter_batches("train", 0))).acts)
    assert torch.equal(off.acts, next(iter(alone[1].iter_batches("train", 7))).acts)


def _cli(tmp_path, model, corpus, *extra):
    from sparsecode.cli import main

    common = ["train", "--model", str(model), "--corpus", str(corpus), "--latents", "64", "--tokens", "256"]
    return main([*common, "--batch-size", "64", "--cache-dir", str(tmp_path / "cache"), "--quiet", *extra])


def test_cli_trains_the_product_of_hooks_and_ks_into_named_folders(tmp_path, tiny_gpt2_dir, text_corpus):
    out = tmp_path / "sweep"
    hooks = ["transformer.h.0", "transformer.h.1"]
    assert _cli(tmp_path, tiny_gpt2_dir, text_corpus, "--hook", *hooks, "--k", "2", "4", "--out", str(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["transformer.h.0-k2", "transformer.h.0-k4", "transformer.h.1-k2", "transformer.h.1-k4"]
    for name in names:  # each a complete single run, of its own hook and k
        config = RunConfig.load(out / name)
        assert (config.source.hook, config.sae.k) == (name.split("-k")[0], int(name.split("-k")[1]))
        assert (out / name / "sae.safetensors").is_file()
    from sparsecode.cli import main

    assert main(["train", "--resume", "--tokens", "384", "--out", str(out), "--quiet"]) == 0  # extends all four
    assert all(json.loads((out / n / "config.json").read_text())["train"]["tokens"] == 384 for n in names)


def test_sweep_entry_that_does_not_fit_its_hook_is_one_line(tmp_path, tiny_gpt2_dir, text_corpus, capsys):
    sweep = tmp_path / "sweep.json"
    runs = [
        {"hook": "transformer.h.0", "k": 2, "out": "a"},  # width 32
        {"hook": "transformer.h.1.mlp.c_fc", "k": 2, "d_in": 32, "out": "b"},  # width 128, not 32
    ]
    sweep.write_text(json.dumps({"runs": runs}))
    out = tmp_path / "runs"
    assert _cli(tmp_path, tiny_gpt2_dir, text_corpus, "--sweep", str(sweep), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "run 2 has d_in 32" in err and "width 128" in err
    assert not out.exists()  # nothing half-written
    runs[1].pop("d_in")  # mixed widths are fine
    sweep.write_text(json.dumps({"runs": runs}))
    assert _cli(tmp_path, tiny_gpt2_dir, text_corpus, "--sweep", str(sweep), "--out", str(out)) == 0
    assert RunConfig.load(out / "b").sae.d_in == 128 and RunConfig.load(out / "a").sae.d_in == 32


def test_model_dtype_flag_sets_the_source_precision(tiny_gpt2_dir):
    from sparsecode.cli import build_parser
    from sparsecode.cli.train import _source_config

    base = ["train", "--model", str(tiny_gpt2_dir), "--hook", "transformer.h.0", "--out", "r"]
    args = build_parser(only="train").parse_args([*base, "--model-dtype", "bfloat16", "--dtype", "float32"])
    config = _source_config(args)
    assert (config.dtype, args.dtype) == ("bfloat16", "float32")  # the model's precision, the SAE step's apart
    assert _source_config(build_parser(only="train").parse_args(base)).dtype == "float32"
