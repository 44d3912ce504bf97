"""Every bench/ script runs end to end on tiny arguments, so none silently rots (the numbers are not checked:
timings belong to the scripts, not to tests). Peer libraries (sparsify, SAELens) are not installed here, so
this also checks that their parts skip cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SHAPE = ["--latents", "128", "--d-in", "16", "--k", "4", "--repeats", "1", "--threads", "1"]
HELPERS = {"timing.py"}  # imported by the scripts, not run


def _smoke_args(
    script: str, data: Path, run: Path, features: Path, lm_run: Path, tmp: Path, image_run: Path | None = None
) -> list[str]:
    """Tiny arguments for each script (a new script needs a line here: the test below fails without one)."""
    acts = str(data / "minilm-l3-train.npy")
    lm = [] if lm_run is None else ["--model", *_lm_source(lm_run)]
    return {
        "attention_sink.py": [],  # on the embedded SmolLM2 (the smollm2_models fixture converts it once)
        "against.py": ["HEAD", "--rounds", "1", "--d-in", "64", "--latents", "1024", "--k", "8", "--batch", "512"],
        "architectures.py": ["--quick", "--skip-minilm", "--out", str(tmp), "--runs", str(tmp / "runs")],
        "env_defaults.py": [
            "THP_MEM_ALLOC_ENABLE",
            "0",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--step-args",
            "--d-in 16 --latents 128 --k 4 --batch 64",
        ],
        "eval_known_answers.py": [],
        "explain_speed.py": [str(features), "--features", "1", "--explain-examples", "2", "--test-examples", "2"],
        "interop_fixtures.py": ["--check"],  # the peers are not installed here: it must say so and stop
        "interop_real.py": [str(run), "--out", str(tmp / "interop")],  # likewise
        "eval_report.py": [str(run), "--repeats", "1", "--quick", "--threads", "1"],
        "fault_injection.py": ["--trials", "1", "--workdir", str(tmp / "faults")],
        "fvu_pass.py": ["--rows", "64", *SHAPE],
        "loop_parts.py": [acts, "--tokens", "512", "--threads", "1", "--latents", "128", "--k", "4", "--batch", "64"],
        "lr_sweep.py": [
            *("--data", str(data), "--tokens", "512", "--factors", "1", "--latents", "128", "--k", "4", "--batch", "64")
        ],
        "othello_trials.py": ["--stop", "2", "--steps", "4", "--log-every", "1"]
        + ["--variants", '{"tiny": {"n_layer": 1, "n_embd": 16, "n_head": 2, "batch_games": 2, "eval_games": 4}}'],
        "one_pass.py": [*lm, "--hooks", "transformer.h.0", "transformer.h.1", "--tokens", "256", "--batch-size", "64"]
        + ["--latents", "64", "--k", "4"],
        "bf16_forward.py": [*lm, "--hook", "transformer.h.1", "--rows", "64", "--repeats", "1", "--ce-chunks", "2"],
        "size_sweep.py": ["--quick", "--batch", "64", "--repeats", "1", "--out", str(tmp)],  # sparsify: not here
        "optimizer.py": ["--latents", "128", "--d-in", "16", "--repeats", "1", "--threads", "1"],
        "recovery.py": ["topk", '{"k": 3}', "--tokens", "2048"],
        "screen.py": [acts, "--rows", "64", "--train-steps", "1", *SHAPE],
        "serve_load.py": ["--run", str(features), "--requests", "8", "--concurrency", "2", "--warmup", "1"],
        "serve_latency.py": ["--run", str(features), "--requests", "4", "--concurrency", "2", "--warmup", "1"],
        "speed.py": [
            *("--data", str(data), "--out", str(tmp), "--tokens", "1024", "--repeats", "1", "--batch", "64"),
            *("--latents", "128", "--k", "4", "--threads", "1", "--no-memory"),
        ],
        "steer.py": [str(lm_run), "--tokens", "2", "--repeats", "1", "--threads", "1"],
        "corpus_memory.py": ["--small", "2k", "--large", "4k", "--hidden", "16", "--data", str(tmp)],
        "store_fill.py": [acts, "--fills", "1", "--chunk-rows", "64", "--buffer-rows", "256", "--batch", "64"],
        "topk.py": ["--rows", "64", *SHAPE, "--steps", "1"],
        "image_examples.py": [str(image_run), "--out", str(tmp / "examples.png"), "--features", "2"],
        "vision_model.py": ["--out", str(tmp / "vit"), "--layers", "2", "--hidden", "16", "--heads", "2"]
        + ["--image", "32", "--patch", "8", "--hook", "layers.1", "--views", "4"],
        "train_step.py": ["--d-in", "16", "--latents", "128", "--k", "4", "--batch", "64", "--steps", "1"],
    }.get(script)


def _lm_source(run: Path) -> list[str]:
    """The tiny GPT-2 and corpus ``run`` was trained on: --model's value, then --corpus and its value."""
    import json

    source = json.loads((run / "config.json").read_text())["source"]
    return [source["model"], "--corpus", *source["corpus"]]


LM_SCRIPTS = {"steer.py", "one_pass.py", "bf16_forward.py"}
"""Scripts run on the tiny GPT-2 (``lm_run``'s model and corpus)."""

SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Stand-ins for the MiniLM activations `make bench` exports (same file names, 16 dims)."""
    folder = tmp_path_factory.mktemp("bench-data")
    rng = np.random.default_rng(0)
    for name, rows in (("minilm-l3-train.npy", 4096), ("minilm-l3-heldout.npy", 512)):
        np.save(folder / name, rng.standard_normal((rows, 16)).astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tiny_gpt2_dir) -> Path:
    """A tiny TopK run on the tests' tiny GPT-2 (a causal LM, as bench/steer.py needs)."""
    from sparsecode.cli import main

    root = tmp_path_factory.mktemp("bench-lm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"The weather today is mild, day {i}, and the sky is clear." for i in range(200)))
    args = ["train", "--model", str(tiny_gpt2_dir), "--hook", "transformer.h.0", "--corpus", str(corpus)]
    args += ["--k", "4", "--latents", "64", "--tokens", "2k", "--batch-size", "256", "--no-cache", "--quiet"]
    assert main([*args, "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A tiny image-patch run with its feature database (bench/image_examples.py draws its examples)."""
    from sparsecode.cli import main

    run = tmp_path_factory.mktemp("bench-images") / "run"
    args = ["train", "--images", "noise", "--patch", "5", "--n-patches", "3000", "--latents", "16", "--k", "3"]
    assert main([*args, "--tokens", "4096", "--batch-size", "1024", "--quiet", "--out", str(run)]) == 0
    assert main(["features", str(run), "--quiet", "--top", "4"]) == 0
    return run


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_runs_on_tiny_arguments(script, data, planted_run, planted_features, request, tmp_path):
    lm_run = request.getfixturevalue("lm_run") if script in LM_SCRIPTS else None
    if script in ("attention_sink.py", "explain_speed.py"):
        request.getfixturevalue("smollm2_models")  # sets $SPARSECODE_MODELS, which the script inherits
    image_run = request.getfixturevalue("image_run") if script == "image_examples.py" else None
    args = _smoke_args(script, data, planted_run, planted_features, lm_run, tmp_path, image_run)
    assert args is not None, f"bench/{script} has no smoke arguments in tests/test_bench.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(BENCH)])}
    r = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, f"bench/{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    if script == "speed.py":  # its results went to --out, not over the committed ones
        assert (tmp_path / "speed.md").is_file() and "sparsify" not in (tmp_path / "speed.md").read_text()
