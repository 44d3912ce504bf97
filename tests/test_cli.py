"""The command line: a full train → eval round on a tiny model, and bad input → one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli_toy import assert_one_line_error, run_cli, toy_train

from sparsecode.cli import main, parse_count


def test_train_then_eval_on_a_tiny_model(tmp_path, tiny_bert_dir, text_corpus):
    out = tmp_path / "run"
    r = run_cli(
        "train",
        "--model",
        str(tiny_bert_dir),
        "--hook",
        "encoder.layer.1",
        "--corpus",
        str(text_corpus),
        "--arch",
        "topk",
        "--k",
        "4",
        "--latents",
        "128",
        "--tokens",
        "20k",
        "--batch-size",
        "256",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "next: sparsecode eval" in r.stdout
    for name in ("config.json", "sae.safetensors", "metrics.jsonl", "training.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["kind"] == "model" and config["sae"]["n_latents"] == 128 and config["sae"]["d_in"] == 32

    r = run_cli("eval", str(out), "--quiet", "--splice-chunks", "8")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["fvu"] < 1 and 0 < result["l0"] <= 4
    assert -1 <= result["embedding_cosine"] <= 1
    assert (out / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FVU" in r.stdout

    # a second run over the same source reads the activation cache instead of re-running the model
    assert any((tmp_path / "cache").rglob("manifest.json"))


def test_synthetic_source_from_the_command_line(tmp_path):
    out = tmp_path / "toy"
    assert main(toy_train(out, "--arch", "relu", "--l1", "1")) == 0
    assert main(["eval", str(out), "--quiet", "--max-rows", "4096"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["mmcs"] <= 1 and "recovery_fraction_0.9" in result


def test_resume_from_the_command_line(tmp_path):
    out = tmp_path / "toy"
    args = toy_train(out)
    assert main(args) == 0
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 2  # already finished: says so


# -- bad input ------------------------------------------------------------------------------------
def test_missing_model_directory(tmp_path):
    r = run_cli(
        "train", "--model", str(tmp_path / "no-such-model"), "--hook", "encoder.layer.3", "--out", str(tmp_path / "run")
    )
    assert_one_line_error(r, "no-such-model")
    assert not (tmp_path / "run").exists()


def test_unknown_hook_lists_close_names(tmp_path, tiny_bert_dir, text_corpus):
    r = run_cli(
        "train",
        "--model",
        str(tiny_bert_dir),
        "--hook",
        "encoder.layer.7",
        "--corpus",
        str(text_corpus),
        "--out",
        str(tmp_path / "run"),
    )
    assert_one_line_error(r, "encoder.layer.7", "encoder.layer.1")
    assert not (tmp_path / "run").exists()


def test_nan_in_activations(tmp_path):
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    x[123, 4] = np.nan
    np.save(tmp_path / "acts.npy", x)
    r = run_cli("train", "--activations", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "acts.npy", "123")
    assert not (tmp_path / "run").exists()


def test_wrong_dimensions(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((4, 5, 6), dtype=np.float32))
    r = run_cli("train", "--activations", str(tmp_path / "cube.npy"), "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "cube.npy", "(4, 5, 6)")
    assert not (tmp_path / "run").exists()


def test_malformed_config_file(tmp_path):
    (tmp_path / "config.json").write_text('{"source": {"kind": "synthetic"}, "sae": ')
    r = run_cli("train", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "config.json", "line 1")
    assert not (tmp_path / "run").exists()


def test_contradictory_config(tmp_path):
    bad = {
        "source": {"kind": "synthetic", "n_features": 64, "dim": 16},
        "sae": {"arch": "topk", "d_in": 16, "n_latents": 32, "k": 64},
        "train": {"tokens": 10000},
    }
    (tmp_path / "config.json").write_text(json.dumps(bad))
    r = run_cli("train", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "sae.k", "64")
    assert not (tmp_path / "run").exists()
    r = run_cli(
        "train", "--synthetic", "features=64,dim=16", "--k", "100", "--latents", "32", "--out", str(tmp_path / "run")
    )
    assert_one_line_error(r, "sae.k")
    r = run_cli("train", "--synthetic", "features=64,dim=16", "--activations", "x.npy", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "exactly one source")
    assert not (tmp_path / "run").exists()


def test_dead_tokens_flag_sets_when_latents_count_as_dead(tmp_path):
    """With the default (1M tokens) nothing can count as dead in a 20k-token run; with --dead-tokens 256 (one
    batch) the latents a batch leaves silent do, and the setting is saved in config.json."""
    dead = {}
    for name, extra in (("default", []), ("short", ["--dead-tokens", "256"])):
        out = tmp_path / name
        assert main([*toy_train(out, latents=256), *extra]) == 0
        config = json.loads((out / "config.json").read_text())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        dead[name] = (config["train"]["dead_tokens"], max(r["dead_fraction"] for r in rows))
    assert dead["default"] == (1_000_000, 0.0)
    assert dead["short"][0] == 256 and dead["short"][1] > 0


def test_truncated_checkpoint(tmp_path):
    out = tmp_path / "toy"
    assert main(toy_train(out)) == 0
    sae_file = out / "sae.safetensors"
    sae_file.write_bytes(sae_file.read_bytes()[:1000])
    r = run_cli("eval", str(out))
    assert_one_line_error(r, "sae.safetensors", "truncated")
    assert not (out / "eval.json").exists()
    ckpt = out / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    sae_file.unlink()
    r = run_cli("train", "--resume", "--out", str(out))
    assert_one_line_error(r, "checkpoint.safetensors", "truncated")


def test_existing_run_is_not_overwritten_by_accident(tmp_path):
    out = tmp_path / "toy"
    args = toy_train(out)
    assert main(args) == 0
    before = (out / "sae.safetensors").read_bytes()
    r = run_cli(*args)
    assert_one_line_error(r, "--resume", "--overwrite")
    assert (out / "sae.safetensors").read_bytes() == before


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    r = run_cli("eval", str(tmp_path))
    assert_one_line_error(r, "config.json")
    r = run_cli("eval", str(tmp_path / "nowhere"))
    assert_one_line_error(r, "not found")


def test_help_mentions_every_source():
    r = run_cli("train", "--help")
    assert r.returncode == 0
    for flag in (
        "--model",
        "--hook",
        "--corpus",
        "--activations",
        "--synthetic",
        "--arch",
        "--k",
        "--l1",
        "--latents",
        "--tokens",
        "--out",
        "--resume",
    ):
        assert flag in r.stdout


@pytest.mark.parametrize(
    "text, value",
    [("2M", 2_000_000), ("500k", 500_000), ("1e6", 1_000_000), ("4096", 4096), ("2.01M", 2_010_000), ("4.03k", 4030)],
)
def test_parse_count(text, value):
    assert parse_count(text) == value


def test_ctrl_c_checkpoints_and_resume_finishes(tmp_path):
    """SIGINT mid-run: exit 130, a checkpoint and a hint; --resume then completes the run."""
    import signal
    import time

    out = tmp_path / "toy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sparsecode",
            "train",
            "--synthetic",
            "features=64,dim=16,active=3",
            "--k",
            "3",
            "--latents",
            "64",
            "--tokens",
            "50M",
            "--batch-size",
            "256",
            "--checkpoint-every",
            "1000000",
            "--out",
            str(out),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint.safetensors").is_file() and not (out / "sae.safetensors").exists()
    r = run_cli("eval", str(out))
    assert_one_line_error(r, "--resume --out " + str(out))


def test_train_then_eval_on_a_tiny_causal_lm(tmp_path, tiny_gpt2_dir, text_corpus):
    out = tmp_path / "gpt"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_gpt2_dir),
                "--hook",
                "transformer.h.0",
                "--corpus",
                str(text_corpus),
                "--k",
                "4",
                "--latents",
                "128",
                "--tokens",
                "20k",
                "--batch-size",
                "256",
                "--out",
                str(out),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["eval", str(out), "--quiet", "--splice-chunks", "8"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["ce_spliced"] >= 0 and result["ce_clean"] > 0
    assert result["ce_increase"] == pytest.approx(result["ce_spliced"] - result["ce_clean"])
    assert "loss_recovered_zero_ablation" in result


def test_failed_overwrite_restores_the_old_run(tmp_path):
    out = tmp_path / "run"
    args = toy_train(out)
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    np.save(tmp_path / "zeros.npy", np.zeros((5000, 16), dtype=np.float32))
    r = run_cli(
        "train",
        "--activations",
        str(tmp_path / "zeros.npy"),
        "--latents",
        "64",
        "--batch-size",
        "256",
        "--overwrite",
        "--out",
        str(out),
    )
    assert_one_line_error(r, "all zero")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if "replaced" in p.name] == []
    assert main([*args, "--overwrite", "--seed", "1"]) == 0  # a successful overwrite replaces it
    assert (out / "sae.safetensors").read_bytes() != before["sae.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if "replaced" in p.name] == []


@pytest.mark.parametrize("device, needle", [("foo", "unknown device"), ("cuda:0", "not available")])
def test_unusable_device_is_a_one_line_error(tmp_path, device, needle):
    if device.startswith("cuda") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_cli(
        "train",
        "--synthetic",
        "features=64,dim=16",
        "--latents",
        "64",
        "--device",
        device,
        "--out",
        str(tmp_path / "run"),
    )
    assert_one_line_error(r, needle)
    assert not (tmp_path / "run").exists()


def test_config_values_of_the_wrong_type(tmp_path):
    bad = {
        "source": {"kind": "synthetic", "n_features": 64, "dim": 16},
        "sae": {"arch": "topk", "d_in": 16, "n_latents": 64, "k": 3.0},
        "train": {"tokens": 10000},
    }
    (tmp_path / "c.json").write_text(json.dumps(bad))
    assert_one_line_error(
        run_cli("train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")),
        "sae.k must be a whole number",
    )
    bad["sae"]["k"] = 3
    bad["train"]["normalize_inputs"] = "no"
    (tmp_path / "c.json").write_text(json.dumps(bad))
    assert_one_line_error(
        run_cli("train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")),
        "train.normalize_inputs must be true or false",
    )
    assert not (tmp_path / "r").exists()


def test_help_lists_every_command(capsys):
    from sparsecode.cli import COMMANDS, command_module

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        summary = command_module(name).__doc__.splitlines()[0]
        assert name in out and summary.split()[0] in out, name


def test_train_flags_are_the_config_fields(capsys):
    """Every field of every architecture's config and of TrainConfig is a train flag (bar those the command fills
    itself), its help taken from the field's docstring; a flag sets its field; a dictionary flag is taken only by
    the architectures whose config has that field."""
    from dataclasses import fields

    from sparsecode.cli import build_parser
    from sparsecode.cli.train import SAE_SET_HERE, _sae_config
    from sparsecode.errors import ConfigError
    from sparsecode.sae import ARCHITECTURES
    from sparsecode.train import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    names = {f.name for cls in ARCHITECTURES.values() for f in fields(cls.config_class)} - set(SAE_SET_HERE)
    for name in names | {f.name for f in fields(TrainConfig)}:
        assert "--" + name.replace("_", "-") in help_text, name
    assert "Rows per optimizer step. [default 4096]" in help_text  # TrainConfig.batch_size's docstring + default
    assert "[relu, gated; default 5.0, 2.0 for gated]" in help_text  # --l1: who has it, and their defaults

    parser = build_parser()
    base = ["train", "--synthetic", "features=64,dim=16", "--out", "r"]
    args = parser.parse_args([*base, "--arch", "batchtopk", "--no-rank-relative", "--k-aux", "7", "--tokens", "2M"])
    cfg = _sae_config(args, d_in=16)
    assert (cfg.arch, cfg.rank_relative, cfg.k_aux, cfg.n_latents) == ("batchtopk", False, 7, 256)
    assert args.tokens == 2_000_000
    args = parser.parse_args([*base, "--arch", "topk", "--no-rank-relative"])
    with pytest.raises(ConfigError, match="--rank-relative applies to --arch batchtopk / matryoshka, not topk"):
        _sae_config(args, d_in=16)


def test_every_help_example_parses():
    """The examples under each command's --help are real command lines: a renamed or removed flag fails here
    (parsed as docs/tour.py parses the commands the docs show)."""
    import importlib.util
    from pathlib import Path

    from sparsecode.cli import COMMANDS, command_module

    spec = importlib.util.spec_from_file_location("tour", Path(__file__).parent.parent / "docs" / "tour.py")
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    for name in COMMANDS:
        examples = tour.shown_commands(f"```\n{getattr(command_module(name), 'EXAMPLES', None) or ''}```")
        assert any(c.split()[1] == name for c in examples), f"{name}: no example of the command itself"
        assert tour.unparsed(examples, f"sparsecode {name} --help") == []
