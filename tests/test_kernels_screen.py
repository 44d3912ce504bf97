"""The bfloat16 product's exact top-k (``kernels/screen.py``) against float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsecode.kernels import auxk as auxk_module
from sparsecode.kernels.runtime import CHUNK_ROWS
from sparsecode.kernels.screen import EncoderScreen, split_bfloat16
from sparsecode.kernels.topk import block_size, screen_applies, screened_topk_rows
from sparsecode.sae import TopKConfig, build_sae


def screened(x, W_enc, b_enc, b_dec, k, rows=10_000):
    return screened_topk_rows(x, W_enc, b_enc, b_dec, k, EncoderScreen(), rows)


def float64_topk(x, W_enc, b_enc, b_dec, k):
    pre = (x.double() - b_dec.double()) @ W_enc.double() + b_enc.double()  # (n, m)
    return pre, pre.topk(k + 1, dim=-1).values  # k + 1: the gap after the k-th tells where ties may swap


def assert_exact_topk(x, W_enc, b_enc, b_dec, k, **kw):
    values, indices = screened(x, W_enc, b_enc, b_dec, k, **kw)
    pre, top = float64_topk(x, W_enc, b_enc, b_dec, k)
    scale = pre.abs().amax(1, keepdim=True)  # (n, 1)
    # the values are the float32 pre-activations of the chosen latents ...
    assert ((values.double() - pre.gather(1, indices)).abs() <= 1e-5 * scale).all()
    # ... of k distinct latents that are the top k, up to float32 rounding where the k-th and the next are that close
    assert all(len(set(row)) == k for row in indices.tolist())
    chosen = values.double().sort(1, descending=True).values
    assert ((chosen - top[:, :k]).abs() <= 1e-5 * scale).all()
    clear = (top[:, k - 1] - top[:, k]) > 1e-5 * scale[:, 0]  # rows whose k-th value is not (nearly) tied
    reference = pre.topk(k, dim=-1).indices
    assert torch.equal(indices[clear].sort(1).values, reference[clear].sort(1).values)
    return values, indices


def layer(n, d, m, seed, *, bias=0.1, offset=0.0, norms=(0.5, 2.0)):
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(m, d, generator=g).T  # latent-major, as the SAEs keep it
    W_enc = W_enc * torch.empty(m).uniform_(*norms, generator=g) / W_enc.norm(dim=0)
    x = torch.randn(n, d, generator=g) + offset
    b_dec = x.mean(0) + 0.1 * torch.randn(d, generator=g)
    return x, W_enc, torch.randn(m, generator=g) * bias, b_dec


CASES = ["typical", "far-from-zero", "bias-dominates", "aligned", "wide", "tiny", "huge"]


@pytest.mark.parametrize("case", CASES)
def test_screened_topk_is_the_exact_topk(case):
    n, d, m, k = 300, 64, 1024, 16
    kw = {
        "typical": {},
        "far-from-zero": {"offset": 40.0},
        "bias-dominates": {"bias": 30.0},
        "aligned": {},
        "wide": {"norms": (1e-3, 1e3)},
        "tiny": {},
        "huge": {},
    }[case]
    x, W_enc, b_enc, b_dec = layer(n, d, m, seed=CASES.index(case), **kw)
    if case == "aligned":  # rows along encoder columns: the tails' Cauchy–Schwarz bound is tight
        x = b_dec + W_enc.T[torch.arange(n) % m] * 3 + 1e-3 * torch.randn(n, d)
    if case in ("tiny", "huge"):
        scale = 1e-6 if case == "tiny" else 1e6
        x, b_enc, b_dec = x * scale, b_enc * scale, b_dec * scale
    assert_exact_topk(x, W_enc, b_enc, b_dec, k)


def test_near_ties_beyond_bfloat16_are_resolved_exactly():
    """Columns that differ by less than bfloat16 resolves all become candidates (many more than k: the heap path);
    float32 rescoring orders them."""
    n, d, m, k = 64, 32, 512, 8
    g = torch.Generator().manual_seed(5)
    base = torch.randn(d, generator=g)
    rows = torch.randn(m, d, generator=g) * 0.1
    rows[:64] = base + 1e-4 * torch.randn(64, d, generator=g)  # 64 near-copies of one direction
    W_enc = rows.T  # latent-major
    x = base.expand(n, d) * 2 + 0.01 * torch.randn(n, d, generator=g)
    _values, indices = assert_exact_topk(x, W_enc, torch.zeros(m), torch.zeros(d), k)
    assert (indices < 64).all()  # the winners are among the near-copies


def test_a_winner_hidden_by_a_large_bias_is_found():
    """A column whose large bias cancels a large product: the product's rounding (4 at 995) is large next to the
    pre-activation (5), so the bfloat16 value ranks it below 4.5 — its block must still be searched."""
    n, d, m, k = 8, 2, 512, 4
    x = torch.ones(n, d)
    W_enc = torch.zeros(d, m)
    W_enc[0] = 4.5 - 0.0625 * (torch.arange(m) % 40)  # pre-activations 4.5 down to 2.06, exact in bfloat16
    blocks = m // block_size(m, k)
    W_enc[0, ::blocks] = 1.0  # the rest of column 0's strided block: far below
    W_enc[:, 0] = torch.tensor([-1000.0, 5.0])  # 5 − 1000 + 1000 = 5: the top value; −995 rounds to −996
    W_enc = W_enc.T.contiguous().T  # latent-major
    b_enc = torch.zeros(m)
    b_enc[0] = 1000.0
    values, indices = assert_exact_topk(x, W_enc, b_enc, torch.zeros(d), k)
    assert (indices == 0).any(1).all() and (values.amax(1) == 5).all()


def test_mismatched_shapes_are_refused():
    x, W_enc, b_enc, b_dec = layer(8, 16, 256, seed=3)
    with pytest.raises(ValueError, match=r"W_enc \(256, 16\)"):
        screened(x, W_enc.T.contiguous(), b_enc, b_dec, 4)
    with pytest.raises(ValueError, match=r"b_enc \(255,\)"):
        screened(x, W_enc, b_enc[:255], b_dec, 4)


def test_screened_topk_by_row_blocks_and_chunks_is_the_same():
    """Whichever thread takes a 64-row chunk, each row's result, order included, is the same (so training is
    repeatable); other row blocks give the same winners and values, in an order that may differ."""
    x, W_enc, b_enc, b_dec = layer(5 * CHUNK_ROWS + 3, 48, 768, seed=11)
    whole = screened(x, W_enc, b_enc, b_dec, 8)
    for rows in (CHUNK_ROWS, 2 * CHUNK_ROWS, 100, 7):
        part = screened(x, W_enc, b_enc, b_dec, 8, rows=rows)
        if rows % CHUNK_ROWS == 0:
            assert torch.equal(part[0], whole[0]) and torch.equal(part[1], whole[1])
        by_latent, order = part[1].sort(1)
        assert torch.equal(by_latent, whole[1].sort(1).values)
        assert torch.equal(part[0].gather(1, order), whole[0].gather(1, whole[1].sort(1).indices))


def test_rows_with_nan_do_not_disturb_the_others():
    x, W_enc, b_enc, b_dec = layer(40, 32, 512, seed=2)
    x[3, 5] = float("nan")
    values, indices = screened(x, W_enc, b_enc, b_dec, 8)
    assert ((indices >= 0) & (indices < 512)).all()
    keep = torch.arange(40) != 3
    _pre, top = float64_topk(x[keep], W_enc, b_enc, b_dec, 8)
    torch.testing.assert_close(values[keep].double().sort(1, descending=True).values, top[:, :8], rtol=1e-5, atol=1e-6)


def test_split_bfloat16_rounds_like_torch():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(200, 40, generator=g) * torch.logspace(-30, 30, 200).unsqueeze(1)
    bits = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80FFFF, 0x00000001, 0x7F7FFFFF], np.uint32)
    rows[0, :6] = torch.from_numpy(bits.view(np.float32).copy())  # halfway cases (to even), tiny, largest finite
    head = torch.empty(200, 40, dtype=torch.bfloat16)
    head_norm, tail_norm = split_bfloat16(rows, head)
    assert torch.equal(head.view(torch.int16), rows.bfloat16().view(torch.int16))
    ok = torch.isfinite(head.float()).all(1)
    head_ref, tail_ref = head.double().norm(dim=1), (rows.double() - head.double()).norm(dim=1)
    for ours, ref in ((head_norm, head_ref), (tail_norm, tail_ref)):  # never below: the bounds rely on it
        assert (ours[ok].double() >= ref[ok]).all()
        torch.testing.assert_close(ours[ok].double(), ref[ok], rtol=1e-5, atol=0)


@pytest.mark.parametrize("dense_auxk", [True, False], ids=["dense-auxk", "sparse-auxk"])
def test_training_step_with_and_without_the_screen_agrees(monkeypatch, dense_auxk):
    """The TopK step's winners, loss and gradients are those of the float32 product, AuxK (either way) included."""
    monkeypatch.setattr(auxk_module, "DENSE_AUXK_RATIO", 10**6 if dense_auxk else 0)
    torch.manual_seed(4)
    x = torch.randn(256, 48) + 0.3
    dead = torch.rand(768) < 0.25
    results = {}
    for screen in (True, False):
        monkeypatch.setenv("SPARSECODE_KERNELS", "screen" if screen else "compiled")
        torch.manual_seed(0)
        sae = build_sae(TopKConfig(d_in=48, n_latents=768, k=12, k_aux=20))
        assert screen_applies(x, sae.W_enc, 12) == screen
        out = sae.training_output(x, dead_mask=dead, progress=0.5)
        out.loss.backward()
        results[screen] = out, {name: p.grad.clone() for name, p in sae.named_parameters()}
    (screen_out, screen_grads), (plain_out, plain_grads) = results[True], results[False]
    torch.testing.assert_close(screen_out.loss, plain_out.loss, rtol=1e-6, atol=0)
    assert torch.equal(screen_out.fired, plain_out.fired)
    for name in plain_grads:
        torch.testing.assert_close(screen_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_screen_applies_only_where_it_can(monkeypatch):
    """Forced on, the screen serves float32 CPU steps whose k suits the strided blocks; not k too large for m,
    other dtypes, or a row-major encoder."""
    monkeypatch.setenv("SPARSECODE_KERNELS", "screen")
    sae = build_sae(TopKConfig(d_in=16, n_latents=64, k=4))
    x = torch.randn(4, 16)
    assert screen_applies(x, sae.W_enc, 4)
    assert block_size(64, 40) is None and not screen_applies(x, sae.W_enc, 40)
    assert not screen_applies(x.double(), sae.W_enc.double(), 4)
    assert not screen_applies(x, sae.W_enc.contiguous(), 4)
    monkeypatch.setenv("SPARSECODE_KERNELS", "compiled")
    assert not screen_applies(x, sae.W_enc, 4)
