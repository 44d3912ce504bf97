"""The full evaluation report, `eval --quick`, `compare` and `neurons`: known answers end to end, and
bad input → one line."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cli_toy import assert_one_line_error, run_cli, toy_train

from sparsecode.cli import main
from sparsecode.eval import evaluate_run, format_report


def _write_run(run_dir, source_cfg, sae):
    from sparsecode.run import RunConfig

    RunConfig(source=source_cfg, sae=sae.cfg).save(run_dir)
    sae.save(run_dir / "sae.safetensors")


def _synthetic(seed: int = 3):
    from sparsecode.sources import SyntheticSource, SyntheticSourceConfig

    cfg = SyntheticSourceConfig(n_features=16, dim=32, active=3.0, seed=seed, chunk_rows=1000)
    return cfg, SyntheticSource(cfg).true_features  # (16, 32)


def _assert_self_contained_html(path) -> str:
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]
    return page


def test_true_dictionary_scores_one_and_random_scores_baseline(tmp_path):
    """A ReLU SAE whose decoder is the true feature matrix and whose encoder is its pseudo-inverse gives
    back the true codes (fewer features than dimensions): MMCS 1, feature F1 1, FVU 0. A random
    dictionary lands at the random-MMCS baseline."""
    from sparsecode.sae import ReLUConfig, build_sae

    cfg, true = _synthetic()
    sae = build_sae(ReLUConfig(d_in=32, n_latents=24, b_dec_init="zeros"))
    with torch.no_grad():
        perm = torch.randperm(24)[:16]
        sae.W_dec.zero_()
        sae.W_dec[perm] = true
        sae.W_enc.copy_(torch.linalg.pinv(sae.W_dec))  # (32, 24)
        sae.b_enc.fill_(-1e-5)  # silences float rounding (~1e-7) on inactive features
        sae.b_dec.zero_()
    good = tmp_path / "good"
    _write_run(good, cfg, sae)
    r = evaluate_run(good, max_rows=3000, progress=False)
    gt = r["ground_truth"]
    assert r["mmcs"] == pytest.approx(1.0, abs=1e-6) and gt["recovery_fraction_0.9"] == 1.0
    assert (
        gt["f1"] == pytest.approx(1.0, abs=1e-3)
        and gt["precision"] == 1.0
        and gt["recall"] == pytest.approx(1.0, abs=1e-3)
    )
    assert r["fvu"] < 1e-6
    assert "dark_matter" in r and "probing" not in r and "neurons" not in r  # no model: no probing
    assert sum(r["l0_histogram"]) == 3000 and r["l0_histogram"][0] < 3000
    page = _assert_self_contained_html(good / "report.html")
    assert "Ground truth" in page and "Dark matter" in page
    assert json.loads((good / "eval.json").read_text())["ground_truth"]["f1"] == pytest.approx(1.0)
    assert "F1 1.0000" in format_report(r) or "F1 0.999" in format_report(r)

    rand = tmp_path / "random"
    _write_run(rand, cfg, build_sae(ReLUConfig(d_in=32, n_latents=24, seed=5)))
    r = evaluate_run(rand, max_rows=3000, progress=False, quick=True)
    gt = r["ground_truth"]
    assert gt["mmcs"] == pytest.approx(gt["random_mmcs_baseline"], abs=0.08)
    assert gt["recovery_fraction_0.9"] == 0.0 and gt["f1"] < 0.6
    assert "dark_matter" not in r and r["quick"] is True


def test_full_report_on_a_tiny_model(tmp_path, tiny_bert_dir, text_corpus):
    from sparsecode.sae import TopKConfig, build_sae
    from sparsecode.sources.hf import ModelSourceConfig

    src_cfg = ModelSourceConfig(
        model=str(tiny_bert_dir), hook="encoder.layer.1", corpus=[str(text_corpus)], eval_every=2
    )
    _write_run(tmp_path, src_cfg, build_sae(TopKConfig(d_in=32, n_latents=64, k=8)))
    r = evaluate_run(tmp_path, max_rows=None, splice_chunks=4, probe_tokens=1500, neuron_chunks=8, progress=False)
    pr = r["probing"]
    assert pr["representations"] == ["sae", "neurons", "residual"]
    assert pr["concepts"] and all(len(v["f1"]) == 5 for v in pr["mean"].values())
    assert "is_capitalised" in pr["skipped"]  # MiniLM's tokenizer lowercases everything
    assert [lay["module"] for lay in r["neurons"]["layers"]] == [
        "encoder.layer.0.intermediate",
        "encoder.layer.1.intermediate",
    ]
    assert "absorption_rate" in r["absorption"] and "error_linear_r2" in r["dark_matter"]
    assert set(r["timings"]) == {"core", "splice", "dark_matter", "probing", "absorption", "neurons"}
    page = _assert_self_contained_html(tmp_path / "report.html")
    for title in ("Sparse probing", "Spliced fidelity", "MLP neuron sparsity", "Dark matter"):
        assert title in page, title
    text = format_report(r)
    assert "sparse probing" in text and "MLP neurons on" in text


def _train_toy(out, k: int) -> None:
    assert main(toy_train(out, "--k", str(k))) == 0


def test_quick_eval_and_compare_three_runs(tmp_path, capsys):
    runs = [tmp_path / f"k{k}" for k in (2, 4, 8)]
    for run, k in zip(runs, (2, 4, 8)):
        _train_toy(run, k)
    r = run_cli("compare", *map(str, runs), "--out", str(tmp_path / "cmp"))
    assert_one_line_error(r, "eval.json", "sparsecode eval")
    for run in runs:
        assert main(["eval", str(run), "--quick", "--quiet", "--max-rows", "4096"]) == 0
        saved = json.loads((run / "eval.json").read_text())
        assert saved["quick"] is True and "dark_matter" not in saved and "fvu" in saved
    capsys.readouterr()
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [row["l0"] for row in cmp["runs"]] == pytest.approx([2, 4, 8], abs=0.01)
    assert cmp["fidelity_key"] == "mmcs"
    for name in ("pareto.png", "fidelity.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:4] == b"\x89PNG"
    _assert_self_contained_html(tmp_path / "cmp" / "compare.html")
    assert all(str(run) in out for run in runs)
    assert_one_line_error(run_cli("compare", str(runs[0])), "at least two runs")


def test_pareto_front():
    import numpy as np

    from sparsecode.eval.compare import pareto_front

    l0 = np.array([8.0, 16.0, 32.0, 20.0, 16.0])
    fvu = np.array([0.3, 0.2, 0.1, 0.25, 0.2])
    assert pareto_front(l0, fvu).tolist() == [True, True, True, False, True]  # ties stay on the front


def test_neurons_command(tmp_path, tiny_bert_dir, text_corpus):
    out = tmp_path / "n.png"
    r = run_cli(
        "neurons",
        "--model",
        str(tiny_bert_dir),
        "--corpus",
        str(text_corpus),
        "--chunks",
        "4",
        "--out",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "encoder.layer.1.intermediate" in r.stdout and out.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(out.with_suffix(".json").read_text())
    assert len(saved["layers"]) == 2 and 0 < saved["layers"][0]["fraction_active"] < 1
    assert_one_line_error(run_cli("neurons", "--model", str(tmp_path / "nope"), "--out", str(out)), "nope")


def test_run_whose_source_cannot_be_rebuilt(tmp_path, tiny_bert_dir, text_corpus):
    from sparsecode.sae import TopKConfig, build_sae
    from sparsecode.sources.hf import ModelSourceConfig

    src_cfg = ModelSourceConfig(model=str(tmp_path / "moved-away"), hook="encoder.layer.1", corpus=[str(text_corpus)])
    _write_run(tmp_path, src_cfg, build_sae(TopKConfig(d_in=32, n_latents=64, k=8)))
    r = run_cli("eval", str(tmp_path))
    assert_one_line_error(r, "moved-away")
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "report.html").exists()
