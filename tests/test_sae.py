"""SAE interface: exact save/load, folding the input scale, geometric median, sparse paths vs dense."""

from __future__ import annotations

import pytest
import torch

from sparsecode.errors import ConfigError, DataError
from sparsecode.sae import ReLUConfig, TopKConfig, build_sae, geometric_median, load_sae, sae_config_from_dict

CONFIGS = [TopKConfig(d_in=16, n_latents=64, k=4, seed=3), ReLUConfig(d_in=16, n_latents=64, l1=2.0, seed=3)]


def perturbed(cfg):
    """An SAE whose every parameter differs from its init (so a round trip can't pass by accident)."""
    sae = build_sae(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return sae


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.arch)
def test_save_load_round_trip_is_exact(tmp_path, cfg):
    sae = perturbed(cfg)
    sae.save(tmp_path / "sae.safetensors")
    loaded = load_sae(tmp_path / "sae.safetensors")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    x = torch.randn(50, 16)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded(x), sae(x))
    for (name, a), (_, b) in zip(sae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
        assert a.stride() == b.stride(), name  # a loaded SAE keeps the weights' layout (W_enc latent-major)


def test_topk_keeps_exactly_k_and_sparse_decode_matches_dense():
    sae = perturbed(TopKConfig(d_in=16, n_latents=64, k=4))
    x = torch.randn(30, 16)
    f = sae.encode(x)
    assert ((f > 0).sum(-1) <= 4).all() and (f >= 0).all()
    # the k kept values are the k largest pre-activations
    pre = sae.pre_acts(x)
    kth = pre.topk(4, dim=-1).values[:, -1:]
    assert ((f > 0) <= (pre >= kth)).all()
    values, indices = sae.select(pre)
    assert torch.allclose(sae.decode_sparse(values, indices), sae.decode(f), atol=1e-5)


def test_topk_training_output_gradients_match_dense_reference():
    """The embedding_bag decoder inside the TopK loss gives the same loss and gradients as dense matmuls."""
    sae = perturbed(TopKConfig(d_in=16, n_latents=64, k=4, auxk_alpha=0.0))
    x = torch.randn(40, 16)
    out = sae.training_output(x, dead_mask=None, progress=0.5)
    out.loss.backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    x_hat = sae.decode(sae.encode(x))
    ref = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    ref.backward()
    assert torch.allclose(out.loss, ref, atol=1e-6)
    for n, p in sae.named_parameters():
        assert torch.allclose(fast[n], p.grad, atol=1e-5), n


def test_auxk_loss_only_uses_dead_latents_and_reaches_them():
    sae = perturbed(TopKConfig(d_in=16, n_latents=64, k=4))
    x = torch.randn(40, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    out = sae.training_output(x, dead_mask=dead, progress=0.5)
    assert "auxk_loss" in out.metrics and out.metrics["auxk_loss"] > 0
    out.loss.backward()
    # encoder columns of dead latents get gradient through AuxK even when they never win the top k
    assert sae.W_enc.grad[:, :10].abs().sum() > 0


def test_relu_loss_weights_l1_by_decoder_norms():
    sae = perturbed(ReLUConfig(d_in=16, n_latents=64, l1=2.0, l1_warmup=0.0, unit_norm_decoder=False))
    x = torch.randn(20, 16)
    out = sae.training_output(x, dead_mask=None, progress=1.0)
    f = sae.encode(x)
    # the April-2024 loss, sum over rows of squared error + l1 * decoder-norm-weighted activations, divided by the
    # batch's total variance (one FVU for every architecture)
    penalised = (sae.decode(f) - x).pow(2).sum() + 2.0 * (f * sae.W_dec.norm(dim=1)).sum()
    expected = penalised / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.arch)
def test_folding_the_input_scale_gives_the_same_sae_on_raw_inputs(cfg):
    sae = perturbed(cfg)
    sae.normalize_decoder_()
    x_raw = torch.randn(25, 16) * 7.0
    scale = 0.3
    x_hat_trained = sae(x_raw * scale)
    latents_trained = sae.encode(x_raw * scale)
    W_dec = sae.W_dec.detach().clone()
    sae.fold_input_scale_(scale)
    assert torch.allclose(sae(x_raw), x_hat_trained / scale, atol=1e-4)
    assert torch.allclose(sae.encode(x_raw), latents_trained / scale, atol=1e-5)
    assert torch.equal(sae.W_dec, W_dec)  # directions (unit or free rows) untouched by the fold


def test_relu_ends_training_with_unit_rows_and_the_same_reconstruction():
    sae = perturbed(ReLUConfig(d_in=16, n_latents=64, unit_norm_decoder=False))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.05, 3.0, 64)[:, None])  # free rows of very different norms
    x = torch.randn(40, 16)
    norms = sae.W_dec.norm(dim=1).detach().clone()
    x_hat, latents = sae(x).detach(), sae.encode(x).detach()
    assert (latents > 0).sum() > 100  # enough active latents for the comparison to mean something
    sae.finish_training_()
    torch.testing.assert_close(sae(x), x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x), latents * norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_decoder_normalisation_and_parallel_gradient_removal():
    sae = perturbed(TopKConfig(d_in=16, n_latents=64, k=4))
    sae.normalize_decoder_()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_grad_()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(64), atol=1e-5)


def test_encoder_initialised_as_decoder_transpose():
    sae = build_sae(TopKConfig(d_in=16, n_latents=64, k=4))
    assert torch.equal(sae.W_enc, sae.W_dec.T)


def test_geometric_median_known_answers():
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert torch.allclose(geometric_median(square), torch.tensor([1.0, 1.0]), atol=1e-4)
    # robust to an outlier, unlike the mean: median of collinear points 0,1,2,3,1000 is 2
    line = torch.tensor([[0.0], [1.0], [2.0], [3.0], [1000.0]])
    assert abs(geometric_median(line).item() - 2.0) < 1e-2
    assert line.mean().item() > 200


def test_b_dec_initialised_from_data():
    sae = build_sae(TopKConfig(d_in=2, n_latents=8, k=2, b_dec_init="mean"))
    sae.initialize_from_data(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))
    assert torch.equal(sae.b_dec.data, torch.tensor([2.0, 4.0]))


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"arch": "topk", "d_in": 8, "n_latents": 16, "k": 17}, "sae.k"),
        ({"arch": "topk", "d_in": 8, "n_latents": 0}, "sae.n_latents"),
        ({"arch": "relu", "d_in": 8, "n_latents": 16, "l1": -1}, "sae.l1"),
        ({"arch": "relu", "d_in": 8, "n_latents": 16, "k": 3}, "unknown field"),
        ({"arch": "nope", "d_in": 8, "n_latents": 16}, "sae.arch"),
    ],
)
def test_contradictory_sae_configs_are_rejected(bad, field):
    with pytest.raises(ConfigError, match=field):
        sae_config_from_dict(bad)


def test_truncated_or_foreign_sae_file_gives_clear_error(tmp_path):
    sae = perturbed(CONFIGS[0])
    path = tmp_path / "sae.safetensors"
    sae.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_sae(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="not a sparsecode SAE"):
        load_sae(tmp_path / "other.safetensors")
