"""The trainer: planted-feature recovery, exact resume, the optimizer, the run folder, the schedule."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from sparsecode.errors import ConfigError
from sparsecode.eval import mmcs, recovery_fraction
from sparsecode.io import load_tensors
from sparsecode.run import RunConfig, load_run
from sparsecode.sae import BatchTopKConfig, JumpReLUConfig, ReLUConfig, TopKConfig, build_sae
from sparsecode.sources import ArraySourceConfig, SyntheticSourceConfig, open_source
from sparsecode.train import TrainConfig, Trainer
from sparsecode.train.optim import Adam


def train(tmp_path, name, source_config, sae_config, stop_at_step=None, resume=False, **train_kw):
    source = open_source(source_config)
    run_dir = tmp_path / name
    config = RunConfig.load(run_dir) if resume else RunConfig(source_config, sae_config, TrainConfig(**train_kw))
    return Trainer(config, run_dir, source, progress=False).fit(resume=resume, stop_at_step=stop_at_step), source


# -- planted features ------------------------------------------------------------------------------
@pytest.mark.slow
def test_topk_recovers_planted_features(tmp_path):
    """512 features in 64 dims, 5 active on average: TopK (k=5) finds ≥ 90% of them at cosine ≥ 0.9."""
    src_cfg = SyntheticSourceConfig(n_features=512, dim=64, active=5, seed=0)
    sae, source = train(
        tmp_path,
        "topk",
        src_cfg,
        TopKConfig(d_in=64, n_latents=512, k=5),
        tokens=1_000_000,
        batch_size=256,
        lr=4e-3,
        dead_tokens=50_000,
        buffer_rows=65536,
    )
    rec = recovery_fraction(sae.W_dec.detach(), source.true_features, threshold=0.9)
    assert rec >= 0.9, rec
    assert mmcs(sae.W_dec.detach(), source.true_features) > 0.95


@pytest.mark.slow
def test_relu_recovers_most_planted_features(tmp_path):
    src_cfg = SyntheticSourceConfig(n_features=512, dim=64, active=5, seed=1)
    sae, source = train(
        tmp_path,
        "relu",
        src_cfg,
        ReLUConfig(d_in=64, n_latents=512, l1=RELU_L1),
        tokens=1_000_000,
        batch_size=256,
        lr=4e-3,
        buffer_rows=65536,
    )
    rec = recovery_fraction(sae.W_dec.detach(), source.true_features, threshold=0.9)
    assert rec >= 0.6, rec
    # trained with free rows, saved with unit rows (the norms moved into the latents)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(512))


RELU_L1 = 5.0


# -- exact resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sae_config",
    [
        TopKConfig(d_in=16, n_latents=64, k=3),
        ReLUConfig(d_in=16, n_latents=64, l1=1.0),
        BatchTopKConfig(d_in=16, n_latents=64, k=3),  # a running-threshold buffer
        JumpReLUConfig(d_in=16, n_latents=64, target_l0=3.0),  # L0 controller
        ReLUConfig(d_in=16, n_latents=64, target_l0=3.0),
    ],
    ids=["topk", "relu", "batchtopk", "jumprelu", "relu-target-l0"],
)
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, sae_config):
    src_cfg = SyntheticSourceConfig(n_features=64, dim=16, active=3, seed=2)
    # small buffer so the interruption falls mid-way through a later shuffle fill; dead_tokens small so
    # the dead-latent counters (AuxK) matter and must be restored too
    kw = {
        "tokens": 64 * 200,
        "batch_size": 64,
        "buffer_rows": 64 * 7,
        "checkpoint_every": 30,
        "log_every": 10,
        "dead_tokens": 640,
        "warmup_steps": 10,
    }
    full, _ = train(tmp_path, "full", src_cfg, sae_config, **kw)
    train(tmp_path, "split", src_cfg, sae_config, stop_at_step=97, **kw)  # last checkpoint at step 90
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write('{"step": 98, "tok')  # a line cut short by a hard kill
    ckpt = load_tensors(tmp_path / "split" / "checkpoint.safetensors")
    assert not torch.equal(ckpt["sae.W_dec"], full.W_dec.detach())  # really stopped part-way
    resumed, _ = train(tmp_path, "split", src_cfg, sae_config, resume=True)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    split_lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in lines]
    assert strip(full_lines) == strip(split_lines)


def test_jumprelu_thresholds_train_at_their_own_learning_rate(tmp_path):
    """One Adam step moves every weight with a gradient by its group's learning rate: the log-thresholds by
    ``threshold_lr_scale`` times the encoder's."""
    cfg = JumpReLUConfig(
        d_in=16, n_latents=64, threshold_lr_scale=3.0, bandwidth=100.0, threshold_init=0.01, l0_warmup=0.0
    )
    src = SyntheticSourceConfig(n_features=64, dim=16, active=3, seed=2)
    kw = {"tokens": 64, "batch_size": 64, "buffer_rows": 64, "lr": 1e-2, "warmup_steps": 0, "decay_fraction": 0.0}
    trained, _ = train(tmp_path, "jr", src, cfg, **kw)
    start = build_sae(cfg)
    threshold_steps = (trained.log_threshold - start.log_threshold).abs()
    encoder_steps = (trained.W_enc - start.W_enc).abs()
    assert threshold_steps.min().item() == pytest.approx(3e-2, rel=1e-2)  # every threshold sees the penalty
    assert threshold_steps.max().item() == pytest.approx(3e-2, rel=1e-2)
    assert encoder_steps.max().item() == pytest.approx(1e-2, rel=1e-2)


def test_optimizer_keeps_the_weights_layout_and_matches_torch_adam():
    """The latent-major encoder steps through its contiguous transpose: the same update as torch's Adam on a
    row-major copy; state loaded from a file (row-major) comes back latent-major."""
    torch.manual_seed(0)
    sae = build_sae(TopKConfig(d_in=8, n_latents=32, k=2))
    assert sae.W_enc.stride() == (1, 8)
    row_major = torch.nn.Parameter(sae.W_enc.detach().contiguous())
    ours = Adam(sae.parameters(), lr=0.1, fused=True)
    reference = torch.optim.Adam([row_major], lr=0.1, fused=True)
    for _ in range(3):
        ours.zero_grad()
        sae.training_output(torch.randn(16, 8), dead_mask=None, progress=0.0).loss.backward()
        row_major.grad = sae.W_enc.grad.contiguous()
        ours.step()
        reference.step()
    assert torch.equal(sae.W_enc, row_major) and sae.W_enc.stride() == (1, 8)
    state = ours.state_dict()
    for s in state["state"].values():  # as a checkpoint file returns them
        s.update({name: v.contiguous().clone() for name, v in s.items() if v.dim() == 2})
    resumed = Adam(sae.parameters(), fused=True)
    resumed.load_state_dict(state)
    for p in sae.parameters():
        for name, value in resumed.state[p].items():
            if value.dim():
                assert value.stride() == p.stride(), name
                assert torch.equal(value, ours.state[p][name]), name
    seen = []  # a closure runs on the weights as they are, not on their transposes
    loss = ours.step(lambda: seen.append(tuple(sae.W_enc.shape)) or sae.W_enc.sum())
    assert seen == [(8, 32)] and loss.shape == () and sae.W_enc.stride() == (1, 8)


@pytest.mark.parametrize("lr", [1e-3, 0.3])
def test_unit_row_adam_matches_projection_torch_adam_and_renormalisation(lr):
    """The decoder's one-pass update (gradient projected, Adam, rows rescaled) equals the three steps done
    separately with torch's Adam, over several steps, and its state resumes in a plain optimizer and back."""
    torch.manual_seed(1)
    W = torch.nn.functional.normalize(torch.randn(64, 24), dim=1)
    ours = torch.nn.Parameter(W.clone())
    reference = torch.nn.Parameter(W.clone())
    bias = torch.nn.Parameter(torch.zeros(24))
    fused = Adam([ours, bias], unit_rows=[ours], lr=lr, betas=(0.9, 0.99), fused=True)
    plain = torch.optim.Adam([reference], lr=lr, betas=(0.9, 0.99), fused=True)
    for _ in range(5):
        grad = torch.randn(64, 24)
        ours.grad, reference.grad, bias.grad = grad.clone(), grad.clone(), torch.randn(24)
        fused.step()
        reference.grad -= (reference.grad * reference).sum(1, keepdim=True) * reference
        plain.step()
        with torch.no_grad():
            reference /= reference.norm(dim=1, keepdim=True)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(64))
    assert float(fused.state[ours]["step"]) == 5 and bias in fused.state
    for name in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(fused.state[ours][name], plain.state[reference][name], rtol=1e-5, atol=1e-7)
    resumed = Adam([ours, bias], unit_rows=[ours], lr=lr, betas=(0.9, 0.99), fused=True)
    resumed.load_state_dict(fused.state_dict())
    ours.grad, bias.grad = torch.randn(64, 24), torch.randn(24)
    resumed.step()
    assert float(resumed.state[ours]["step"]) == 6


def test_unit_row_adam_off_the_compiled_path_does_the_same():
    """Where the compiled pass does not apply (here float64), the projection and rescaling run as torch ops."""
    torch.manual_seed(2)
    W = torch.nn.functional.normalize(torch.randn(16, 8, dtype=torch.float64), dim=1)
    ours, reference = torch.nn.Parameter(W.clone()), torch.nn.Parameter(W.clone())
    fused = Adam([ours], unit_rows=[ours], lr=0.1)
    plain = torch.optim.Adam([reference], lr=0.1)
    grad = torch.randn(16, 8, dtype=torch.float64)
    ours.grad, reference.grad = grad.clone(), grad - (grad * W).sum(1, keepdim=True) * W
    fused.step()
    plain.step()
    with torch.no_grad():
        reference /= reference.norm(dim=1, keepdim=True)
    torch.testing.assert_close(ours, reference)
    with pytest.raises(ValueError, match="unit_rows"):
        Adam([ours], unit_rows=[torch.nn.Parameter(torch.zeros(3, 3))])


def test_run_folder_contents_and_scale_folding(tmp_path):
    """Train on raw activations far from unit scale; the saved SAE reconstructs the raw data directly."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((32, 8)).astype(np.float32)
    codes = (rng.random((20_000, 32)) < 0.08) * rng.random((20_000, 32))
    x = (codes @ features * 50.0 + 300.0).astype(np.float32)  # big scale and offset
    np.save(tmp_path / "acts.npy", x)
    src_cfg = ArraySourceConfig(path=str(tmp_path / "acts.npy"))
    sae, _ = train(
        tmp_path,
        "arr",
        src_cfg,
        TopKConfig(d_in=8, n_latents=64, k=4),
        tokens=200_000,
        batch_size=256,
        lr=3e-3,
        buffer_rows=8192,
    )
    run = load_run(tmp_path / "arr")
    for name in ("config.json", "sae.safetensors", "metrics.jsonl", "training.png", "checkpoint.safetensors"):
        assert (tmp_path / "arr" / name).is_file(), name
    assert run.config.input_scale is not None and run.config.input_scale < 0.1
    xt = torch.from_numpy(x[:4096])
    fvu = ((run.sae(xt) - xt).pow(2).sum() / (xt - xt.mean(0)).pow(2).sum()).item()
    assert fvu < 0.2, fvu
    assert torch.equal(run.sae(xt), sae(xt))


def test_learning_rate_schedule():
    tc = TrainConfig(tokens=100 * 10, batch_size=10, warmup_steps=10, decay_fraction=0.2)
    factors = [tc.lr_factor(s) for s in range(100)]
    assert factors[0] < factors[5] < factors[9] < 1.0
    assert factors[10:80] == [1.0] * 70
    assert (
        factors[80] == 1.0
        and factors[99] == pytest.approx(0.05)
        and all(a > b for a, b in itertools.pairwise(factors[80:]))
    )


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"tokens": 100, "batch_size": 200}, "batch_size"),
        ({"warmup_steps": 10_000}, "warmup_steps"),
        ({"lr": 5.0}, "lr"),
    ],
)
def test_contradictory_train_configs_are_rejected(kw, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kw)
