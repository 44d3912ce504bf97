"""Data-parallel training (torch.distributed, gloo): 2 processes reproduce 1 with the same global batch,
and a 2-process checkpoint resumes in 1 process."""

from __future__ import annotations

import json

import torch
from cli_toy import toy_train

from sparsecode.io import load_tensors, read_metadata
from sparsecode.run import RunConfig
from sparsecode.sae import ARCHITECTURES, TopKConfig
from sparsecode.sources import SyntheticSourceConfig
from sparsecode.train import TrainConfig
from sparsecode.train.distributed import launch
from sparsecode.train.trainer import fit_worker


def config(sae=None, **train_kw) -> RunConfig:
    # dead_tokens small so AuxK runs and the dead-latent counters must agree across processes
    kw = {
        "tokens": 64 * 24,
        "batch_size": 64,
        "buffer_rows": 64 * 4,
        "checkpoint_every": 10,
        "log_every": 4,
        "dead_tokens": 256,
        "warmup_steps": 2,
        "lr": 3e-3,
    }
    return RunConfig(
        SyntheticSourceConfig(n_features=96, dim=16, active=3, seed=5),
        sae or TopKConfig(d_in=16, n_latents=96, k=3, k_aux=8),
        TrainConfig(**{**kw, **train_kw}),
    )


def assert_close_weights(a: dict, b: dict, what: str = "") -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=2e-4, atol=2e-5, msg=f"{what} {name}")


def test_two_processes_equal_one_and_resume_in_one(tmp_path):
    # two processes read two data shards, one each; one process reading both sees the same global batches
    fit_worker(config(data_shards=2), tmp_path / "single")
    single = load_tensors(tmp_path / "single" / "sae.safetensors")

    launch(2, "cpu", fit_worker, config(), tmp_path / "ddp")
    assert RunConfig.load(tmp_path / "ddp").train.data_shards == 2  # None became the process count
    ddp = load_tensors(tmp_path / "ddp" / "sae.safetensors")
    assert_close_weights(single, ddp)
    # AuxK really ran (dead latents existed) and the logged metrics are the global ones
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert any("auxk_loss" in r for r in ref)
    assert [r["step"] for r in rows] == [r["step"] for r in ref]
    for r, q in zip(rows, ref):
        assert abs(r["fvu"] - q["fvu"]) <= 1e-4 * max(1.0, q["fvu"]), (r, q)

    # stop the 2-process run part-way (checkpoint at step 10), resume it with 1 process
    launch(2, "cpu", fit_worker, config(), tmp_path / "split", False, 14)
    assert read_metadata(tmp_path / "split" / "checkpoint.safetensors")["step"] == "10"
    assert not (tmp_path / "split" / "sae.safetensors").exists()
    fit_worker(RunConfig.load(tmp_path / "split"), tmp_path / "split", resume=True)
    assert_close_weights(single, load_tensors(tmp_path / "split" / "sae.safetensors"))


OTHER_ARCHS = {  # arch -> its sparsity settings; the penalty-trained ones steer to a target L0 (the controller's
    # L0 must be averaged over processes), BatchTopK ranks over the global batch and sets one threshold
    "batchtopk": {"k": 3, "k_aux": 8},
    # per row: the nested losses' global normalisation (batch ranking is batchtopk's above). With batch ranking too,
    # only one latent's encoder column (latent 48 here) differs, by ~0.03 x lr (9e-5), set in the first steps and
    # then constant, while everything else agrees to 1e-7: a latent within float rounding of the global batch's
    # threshold, ranked on opposite sides by the two runs' differently rounded sums, which Adam turns into a full step
    "matryoshka": {"k": 3, "k_aux": 8, "prefixes": [12, 48], "batch_topk": False},
    "multibudget": {"budgets": [2, 3, 6], "k_aux": 8},
    "transcoder": {"k": 3, "k_aux": 8},
    "relu": {"target_l0": 3.0},
    "gated": {"target_l0": 3.0},
    "jumprelu": {"target_l0": 3.0},
    "mp": {"mp_steps": 3},
}


def test_every_architecture_is_covered():
    assert set(OTHER_ARCHS) | {"topk"} == set(ARCHITECTURES)


def fit_each(runs: list[tuple[RunConfig, str]]) -> None:
    """One data-parallel process training several runs in turn (one launch instead of one per run)."""
    for run_config, run_dir in runs:
        fit_worker(run_config, run_dir)


def test_two_processes_equal_one_for_every_architecture(tmp_path):
    """Every dictionary's loss is normalised by the global batch's variance (and any batch-wide choice is made
    over the global batch), so 2 processes with half a batch each train the same weights as 1 process."""
    saes = {arch: ARCHITECTURES[arch].config_class(d_in=16, n_latents=96, **kw) for arch, kw in OTHER_ARCHS.items()}
    for arch, sae in saes.items():
        fit_worker(config(sae, data_shards=2, tokens=64 * 16), tmp_path / "single" / arch)
    launch(
        2, "cpu", fit_each, [(config(sae, tokens=64 * 16), str(tmp_path / "ddp" / arch)) for arch, sae in saes.items()]
    )
    for arch in saes:
        single, ddp = (tmp_path / kind / arch for kind in ("single", "ddp"))
        assert_close_weights(load_tensors(single / "sae.safetensors"), load_tensors(ddp / "sae.safetensors"), arch)
        rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
        ref = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [r["step"] for r in ref]
        for r, q in zip(rows, ref):
            for name in ("fvu", "l0"):
                assert abs(r[name] - q[name]) <= 1e-4 * max(1.0, q[name]), (arch, name, r, q)


def test_cli_nproc(tmp_path, capsys):
    from sparsecode.cli import main

    args = [*toy_train(None, tokens="8k", batch=255), "--nproc", "2"]
    assert main(args + ["--out", str(tmp_path / "odd")]) == 2
    assert "--nproc 2 must divide the batch size (255)" in capsys.readouterr().err
    assert not (tmp_path / "odd").exists()

    args[args.index("255")] = "256"
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    assert "trained" in capsys.readouterr().out
    assert (tmp_path / "run" / "sae.safetensors").is_file()
    assert read_metadata(tmp_path / "run" / "checkpoint.safetensors")["step"] == "32"
