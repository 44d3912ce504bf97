"""Known-answer tests for sparsecode.eval: metrics, ground-truth recovery, spliced fidelity, plots, report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecode.errors import DataError
from sparsecode.eval import (
    ReconstructionStats,
    evaluate_reconstruction,
    format_report,
    mmcs,
    plot_density_histogram,
    random_mmcs_baseline,
    recovery_fraction,
    spliced_fidelity,
)
from sparsecode.eval.splice import MIN_ABLATION_GAP

# -- reconstruction metrics ------------------------------------------------------------------------


def _stats(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    latents: torch.Tensor | None = None,
    batch: int | None = None,
    dense_threshold: float = 0.1,
) -> dict:
    latents = torch.zeros(x.shape[0], 3) if latents is None else latents
    s = ReconstructionStats(latents.shape[1], dense_threshold=dense_threshold)
    step = batch or x.shape[0]
    for i in range(0, x.shape[0], step):
        s.update(x[i : i + step], latents[i : i + step], x_hat[i : i + step])
    return s.result()


def test_fvu_perfect_and_mean_prediction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g) * 3 + 100  # large offset: variance must still be computed accurately
    perfect = _stats(x, x.clone())
    assert perfect["fvu"] == 0.0 and perfect["explained_variance"] == 1.0 and perfect["mse"] == 0.0
    assert perfect["cosine"] == pytest.approx(1.0, abs=1e-12) and perfect["l2_ratio"] == pytest.approx(1.0, abs=1e-12)

    mean_pred = x.double().mean(0).expand_as(x)
    one_shot = _stats(x, mean_pred)
    assert one_shot["fvu"] == pytest.approx(1.0, abs=1e-9)
    assert one_shot["explained_variance"] == pytest.approx(0.0, abs=1e-9)


def test_streaming_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(301, 16, generator=g) + 5
    x_hat = x + 0.3 * torch.randn(301, 16, generator=g)
    lat = torch.relu(torch.randn(301, 10, generator=g))
    one = _stats(x, x_hat, lat)
    for batch in (1, 7, 64):
        streamed = _stats(x, x_hat, lat, batch=batch)
        for key in ("fvu", "mse", "cosine", "l2_ratio", "l0", "dead_fraction", "dense_fraction"):
            assert streamed[key] == pytest.approx(one[key], rel=1e-10, abs=1e-12), key
    # and against a direct formula
    xd, hd = x.double(), x_hat.double()
    fvu = ((xd - hd) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert one["fvu"] == pytest.approx(float(fvu), rel=1e-10)
    assert one["mse"] == pytest.approx(float(((xd - hd) ** 2).mean()), rel=1e-10)


def test_sparsity_on_hand_built_latents():
    # 10 rows, 5 latents: latent 0 fires on every row, 1 on one row, 2 on two rows, 3 and 4 never.
    lat = torch.zeros(10, 5)
    lat[:, 0] = 1.0
    lat[3, 1] = 0.5
    lat[[0, 9], 2] = 2.0
    lat[5, 3] = -1.0  # negative values do not count as firing
    x = torch.randn(10, 4)
    s = ReconstructionStats(5, dense_threshold=0.15)
    s.update(x, lat, x)
    r = s.result()
    assert r["l0"] == pytest.approx((10 + 1 + 2) / 10)
    assert r["n_dead"] == 2 and r["dead_fraction"] == pytest.approx(2 / 5)
    assert r["n_dense"] == 2 and r["dense_fraction"] == pytest.approx(2 / 5)  # densities 1.0 and 0.2 > 0.15
    assert torch.allclose(s.density(), torch.tensor([1.0, 0.1, 0.2, 0.0, 0.0], dtype=torch.float64))


def test_shape_mismatch_is_a_data_error():
    s = ReconstructionStats(3)
    with pytest.raises(DataError):
        s.update(torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(DataError):
        s.result()  # no rows yet


class _IdentityDict(nn.Module):
    """Stand-in SAE whose dictionary is the identity: latents = relu(x), plus relu(-x) on a second block."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.W_dec = nn.Parameter(torch.cat([torch.eye(d), -torch.eye(d)]))  # (2d, d)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=1)  # (n, 2d)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec  # (n, d)

    def reconstruct(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return self.decode(f)


def test_evaluate_reconstruction_stand_in_and_max_rows():
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(50, 6, generator=g) for _ in range(4)]
    r, density = evaluate_reconstruction(_IdentityDict(6), batches, max_rows=120, progress=False)
    assert r["n_rows"] == 120
    assert r["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert r["l0"] == pytest.approx(6.0)  # exactly one of relu(x), relu(-x) is non-zero per dimension
    assert density.shape == (12,) and r["dead_fraction"] == 0.0
    assert float(density.sum()) == pytest.approx(6.0)


def test_evaluate_reconstruction_real_sae():
    from sparsecode.sae import ReLUConfig, build_sae

    sae = build_sae(ReLUConfig(d_in=8, n_latents=32))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 8, generator=g)
    r, density = evaluate_reconstruction(sae, [x[:60], x[60:]], progress=False)
    with torch.no_grad():
        x_hat = sae(x).double()
        lat = sae.encode(x)
    xd = x.double()
    expected = ((xd - x_hat) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert r["fvu"] == pytest.approx(float(expected), rel=1e-6)
    assert r["l0"] == pytest.approx(float((lat > 0).sum(1).double().mean()))
    assert torch.allclose(density, (lat > 0).double().mean(0))


# -- ground truth ----------------------------------------------------------------------------------


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    m = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return m / m.norm(dim=1, keepdim=True)


def test_exact_recovery_with_permutation_and_extras():
    true = _unit(40, 16, 0)
    learned = torch.cat([true[torch.randperm(40)] * 3.0, _unit(25, 16, 1)])  # scaled: norms must not matter
    assert mmcs(learned, true) == pytest.approx(1.0, abs=1e-12)
    assert recovery_fraction(learned, true, threshold=0.9) == 1.0
    assert mmcs(learned, true, chunk_size=7) == pytest.approx(1.0, abs=1e-12)  # chunking changes nothing


def test_random_dictionary_near_analytical_baseline():
    d, m = 64, 128
    true = _unit(512, d, 2)
    learned = _unit(m, d, 3)
    baseline = random_mmcs_baseline(d, m)
    assert 0.25 < baseline < 0.5
    assert mmcs(learned, true) == pytest.approx(baseline, abs=0.02)
    assert recovery_fraction(learned, true) == 0.0


def test_random_baseline_closed_form_d3():
    # In R^3 the cosine is uniform on [-1, 1]; E[max of m uniforms] = -1 + 2m/(m+1).
    assert random_mmcs_baseline(3, 10) == pytest.approx(-1 + 20 / 11, abs=1e-6)


def test_half_recovered():
    true = _unit(30, 32, 4)
    assert recovery_fraction(true[:15], true) == pytest.approx(0.5)
    assert recovery_fraction(-true, true) == 0.0  # anti-aligned directions do not count


# -- spliced fidelity ------------------------------------------------------------------------------


def _model_source(model_dir, corpus, hook: str, hook_side: str = "output"):
    from sparsecode.sources.hf import ModelSource, ModelSourceConfig

    return ModelSource(
        ModelSourceConfig(model=str(model_dir), hook=hook, hook_side=hook_side, corpus=[str(corpus)], eval_every=2)
    )


@pytest.mark.parametrize("hook_side", ["output", "input"])
def test_splice_identity_encoder(tiny_bert_dir, text_corpus, hook_side):
    src = _model_source(tiny_bert_dir, text_corpus, "encoder.layer.0", hook_side)
    assert not src.is_causal_lm
    r = spliced_fidelity(src, lambda a: a, max_chunks=8, batch_size=3, progress=False)
    assert abs(r["embedding_cosine"] - 1.0) <= 1e-6
    assert r["embedding_cosine_zero_ablation"] < 0.999
    assert r["splice_chunks"] > 0 and r["splice_tokens"] > 0
    bad = spliced_fidelity(src, torch.zeros_like, max_chunks=8, batch_size=3, progress=False)
    assert bad["embedding_cosine"] < 0.999
    assert bad["embedding_cosine"] == pytest.approx(bad["embedding_cosine_zero_ablation"], abs=1e-9)


def test_splice_identity_causal_lm(tiny_gpt2_dir, text_corpus):
    src = _model_source(tiny_gpt2_dir, text_corpus, "transformer.h.0")
    assert src.is_causal_lm
    r = spliced_fidelity(src, lambda a: a, max_chunks=8, batch_size=3, progress=False)
    assert r["ce_increase"] == 0.0
    assert r["ce_spliced"] == r["ce_clean"]
    assert r["ce_zero_ablation"] != r["ce_clean"]
    for ablation in ("zero_ablation", "mean_ablation"):
        _assert_loss_recovered(r, ablation, 1.0)
    bad = spliced_fidelity(src, torch.zeros_like, max_chunks=8, batch_size=3, progress=False)
    assert bad["ce_increase"] != 0.0
    assert bad["ce_spliced"] == pytest.approx(bad["ce_zero_ablation"], rel=1e-12)
    _assert_loss_recovered(bad, "zero_ablation", 0.0)


def _assert_loss_recovered(r: dict, ablation: str, expected: float) -> None:
    """The ratio is ``expected`` where the ablation moves the CE by more than MIN_ABLATION_GAP of clean, and
    undefined (None, with a warning) where it barely moves it, as a tiny random model's layer 0 may."""
    if r[f"ce_{ablation}"] - r["ce_clean"] > MIN_ABLATION_GAP * abs(r["ce_clean"]):
        assert r[f"loss_recovered_{ablation}"] == pytest.approx(expected, abs=1e-9)
    else:
        assert r[f"loss_recovered_{ablation}"] is None
        assert any("undefined" in w for w in r["warnings"])


# -- plots -----------------------------------------------------------------------------------------


def test_density_plot_is_a_png(tmp_path):
    density = torch.tensor([0.0, 0.0, 1e-4, 1e-3, 0.01, 0.5, 1.0])
    out = plot_density_histogram(density, tmp_path / "density.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["density.png"]  # no temp file left behind
    plot_density_histogram(torch.zeros(4), tmp_path / "all_dead.png")  # every latent dead: still a valid plot
    assert (tmp_path / "all_dead.png").read_bytes()[:4] == b"\x89PNG"


# -- report ----------------------------------------------------------------------------------------


def test_format_report_mentions_the_numbers():
    r = {
        "run": "runs/x",
        "arch": "topk",
        "d_in": 8,
        "n_latents": 32,
        "n_rows": 100,
        "fvu": 0.125,
        "explained_variance": 0.875,
        "cosine": 0.9,
        "mse": 0.01,
        "l0": 4.0,
        "dead_fraction": 0.25,
        "dense_fraction": 0.0,
        "dense_threshold": 0.1,
        "mmcs": 0.95,
        "recovery_fraction_0.9": 0.5,
        "ce_clean": 2.0,
        "ce_spliced": 2.5,
        "ce_increase": 0.5,
        "ce_zero_ablation": 7.0,
        "loss_recovered_zero_ablation": 0.9,
        "loss_recovered_mean_ablation": None,
        "files": {"eval_json": "runs/x/eval.json", "density_png": "runs/x/density.png"},
    }
    text = format_report(r)
    for needle in (
        "FVU 0.1250",
        "0.8750",
        "L0 4.0",
        "dead 25.0%",
        "MMCS 0.9500",
        "50.0%",
        "+0.5000",
        "0.900",
        "n/a",
        "runs/x/eval.json",
        "runs/x/density.png",
    ):
        assert needle in text, needle


def test_evaluate_run_missing_files_writes_nothing(tmp_path):
    from sparsecode.eval import evaluate_run

    with pytest.raises(DataError, match="config.json"):
        evaluate_run(tmp_path, progress=False)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="sae.safetensors"):
        evaluate_run(tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def _write_run(run_dir, source_cfg, sae):
    from sparsecode.run import RunConfig

    RunConfig(source=source_cfg, sae=sae.cfg).save(run_dir)
    sae.save(run_dir / "sae.safetensors")


def test_evaluate_run_synthetic_ground_truth(tmp_path):
    import json

    from sparsecode.eval import evaluate_run
    from sparsecode.sae import TopKConfig, build_sae
    from sparsecode.sources import SyntheticSource, SyntheticSourceConfig

    src_cfg = SyntheticSourceConfig(n_features=24, dim=16, active=2.0, seed=1, chunk_rows=500)
    true = SyntheticSource(src_cfg).true_features  # (24, 16)
    sae = build_sae(TopKConfig(d_in=16, n_latents=40, k=4, b_dec_init="zeros"))
    with torch.no_grad():  # a dictionary that contains every true feature (shuffled) plus random extras
        sae.W_dec[:24] = true[torch.randperm(24)]
        sae.W_enc.copy_(sae.W_dec.T)
    _write_run(tmp_path, src_cfg, sae)

    r = evaluate_run(tmp_path, max_rows=1200, progress=False)
    assert r["n_rows"] == 1200 and r["arch"] == "topk" and r["n_latents"] == 40 and r["d_in"] == 16
    assert r["mmcs"] == pytest.approx(1.0, abs=1e-6) and r["recovery_fraction_0.9"] == 1.0
    assert 0.0 <= r["fvu"] < 1.0 and r["l0"] <= 4.0
    assert "embedding_cosine" not in r and "ce_clean" not in r
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["fvu"] == r["fvu"] and saved["run"] == str(tmp_path)
    assert (tmp_path / "density.png").read_bytes()[:4] == b"\x89PNG"
    assert "MMCS 1.0000" in format_report(r)


def test_evaluate_run_model_source_splices(tmp_path, tiny_bert_dir, text_corpus):
    from sparsecode.eval import evaluate_run
    from sparsecode.sae import TopKConfig, build_sae
    from sparsecode.sources.hf import ModelSourceConfig

    src_cfg = ModelSourceConfig(
        model=str(tiny_bert_dir), hook="encoder.layer.0", corpus=[str(text_corpus)], eval_every=2
    )
    _write_run(tmp_path, src_cfg, build_sae(TopKConfig(d_in=32, n_latents=64, k=8)))
    r = evaluate_run(tmp_path, max_rows=None, splice_chunks=4, progress=False)
    assert r["splice_chunks"] == 4
    assert -1.0 <= r["embedding_cosine"] <= 1.0 + 1e-9
    assert r["l0"] <= 8.0 and r["n_rows"] > 0
    assert "spliced embedding cosine" in format_report(r)
