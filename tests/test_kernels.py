"""The kernels (``sparsecode.kernels``) against their plain-torch references: the sparse TopK training step (every
backend) against ``kernels.reference``'s dense losses, and each compiled kernel against torch. Also run with
``NUMBA_DISABLE_JIT=1`` (``make test-kernels-nojit``), where the compiled kernels run as Python."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsecode import kernels
from sparsecode.errors import ConfigError
from sparsecode.kernels import auxk as auxk_module
from sparsecode.kernels import reference
from sparsecode.kernels import topk as topk_module
from sparsecode.kernels.rows import latent_order, project_out_rows_
from sparsecode.kernels.sparse import SparsePattern, gathered_pre_acts, sparse_decode, sparse_fvu
from sparsecode.kernels.topk import block_size, exact_topk
from sparsecode.sae import ARCHITECTURES, TopKConfig, build_sae


def dense_reference(sae, x, dead_mask, target=None):
    """``kernels.reference.topk_loss`` for ``sae``'s weights and configuration (TopK, Matryoshka, multi-budget)."""
    cfg = sae.cfg
    weights = {name: getattr(sae, name) for name in ("W_enc", "b_enc", "b_dec", "W_dec")}
    return reference.topk_loss(
        x,
        weights,
        cfg.k,
        target=target,
        dead=dead_mask,
        k_aux=cfg.k_aux,
        auxk_alpha=cfg.auxk_alpha,
        prefixes=getattr(cfg, "prefixes", None),
        budgets=getattr(cfg, "budgets", None),
    )


def config_class(arch):
    return ARCHITECTURES[arch].config_class


def grads(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad for name, p in sae.named_parameters()}


# Matryoshka per row, as the reference ranks (its batch-ranked step: test_architectures, against its dense step)
NESTED = {"topk": {}, "matryoshka": {"prefixes": [8, 40], "batch_topk": False}, "multibudget": {"budgets": [1, 3, 5]}}


@pytest.mark.parametrize(
    ("dead_fraction", "dense_auxk"),
    [(0.0, True), (0.3, True), (0.3, False), (1.0, True), (1.0, False)],
    ids=["no-auxk", "auxk-dense", "auxk-sparse", "all-dead-dense", "all-dead-sparse"],
)
@pytest.mark.parametrize("block_rows", [7, 10_000], ids=["blocks", "one-block"])
@pytest.mark.parametrize("with_target", [False, True], ids=["sae", "transcoder"])
@pytest.mark.parametrize("arch", list(NESTED))
def test_sparse_step_matches_dense_reference(monkeypatch, dead_fraction, dense_auxk, block_rows, with_target, arch):
    n, d, m, k = 50, 12, 96, 5
    monkeypatch.setattr(topk_module, "PRE_BLOCK_ELEMENTS", block_rows * m)
    monkeypatch.setattr(auxk_module, "DENSE_AUXK_RATIO", 10**6 if dense_auxk else 0)  # AuxK's two ways
    torch.manual_seed(0)
    sae = build_sae(config_class(arch)(d_in=d, n_latents=m, k=k, k_aux=7, **NESTED[arch])).double()
    with torch.no_grad():  # biases away from zero so their gradients are exercised
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)
    x = torch.randn(n, d, dtype=torch.float64) + 0.7
    target = torch.randn(n, d, dtype=torch.float64) if with_target else None
    dead = torch.rand(m) < dead_fraction
    if dead_fraction == 1.0:
        dead[:] = True

    out = sae.training_output(x, dead_mask=dead, progress=0.5, target=target)
    ours = grads(sae, out.loss)
    ref_loss, ref_x_hat = dense_reference(sae, x, dead, target)
    ref = grads(sae, ref_loss)

    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.x_hat, ref_x_hat, rtol=1e-10, atol=1e-12)
    assert ("auxk_loss" in out.metrics) == bool(dead.any())
    for name, p in sae.named_parameters():
        assert ours[name].stride() == p.stride(), name  # fused optimizers read gradients in the weights' layout
    for name in ref:
        assert ref[name].abs().sum() > 0, name  # every gradient is exercised
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("dense_auxk", [True, False], ids=["dense-auxk", "sparse-auxk"])
@pytest.mark.parametrize("backend", ["screen", "compiled", "torch"])
@pytest.mark.parametrize("arch", list(NESTED))
def test_float32_step_matches_dense_reference(monkeypatch, arch, backend, dense_auxk):
    """At the training dtype (float32) and a realistic width every backend (the compiled top-k with the bfloat16
    product's exact screen or the float32 product; plain torch) agrees with the reference to float tolerance, AuxK
    (either way) included."""
    monkeypatch.setenv("SPARSECODE_KERNELS", backend)
    monkeypatch.setattr(auxk_module, "DENSE_AUXK_RATIO", 10**6 if dense_auxk else 0)
    torch.manual_seed(1)
    nested = {
        "topk": {},
        "matryoshka": {"prefixes": [64, 256], "batch_topk": False},
        "multibudget": {"budgets": [4, 8, 16]},
    }[arch]
    sae = build_sae(config_class(arch)(d_in=64, n_latents=1024, k=16, **nested))
    x = torch.randn(512, 64)
    dead = torch.rand(1024) < 0.2
    out = sae.training_output(x, dead_mask=dead, progress=0.0)
    ours = grads(sae, out.loss)
    ref_loss, _ = dense_reference(sae, x, dead)
    ref = grads(sae, ref_loss)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, p in sae.named_parameters():
        assert ours[name].stride() == p.stride(), name
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("offset", [0.0, 30.0], ids=["centred", "far-from-zero"])
@pytest.mark.parametrize("given_variance", [True, False], ids=["given-variance", "batch-variance"])
def test_compiled_fvu_matches_torch_path(monkeypatch, given_variance, offset):
    """The one-pass compiled FVU (decode, loss and its gradients together) against embedding bags + mse_loss:
    values and the gradients of values, W_dec, b_dec and the target, with the FVU weighted inside a larger loss.
    Without a given variance the pass computes the batch's own, also for targets far from zero (where a
    one-pass Σt² − (Σt)²/n would lose digits in float32)."""
    torch.manual_seed(2)
    n, d, m, k = 300, 48, 512, 8
    values = torch.rand(n, k, requires_grad=True)
    W_dec = torch.randn(m, d, requires_grad=True)
    b_dec = torch.randn(d, requires_grad=True)
    target = (torch.randn(n, d) + offset).requires_grad_()
    indices = torch.randint(0, m, (n, k))
    variance = (target - target.mean(0)).pow(2).sum().detach() if given_variance else None
    results = {}
    for compiled in (True, False):
        with kernels.use("compiled" if compiled else "torch"):
            fvu, x_hat = sparse_fvu(values, SparsePattern(indices, m), W_dec, b_dec, target, variance)
            (3.0 * fvu).backward()
        results[compiled] = [fvu.detach(), x_hat.detach()] + [t.grad.clone() for t in (values, W_dec, b_dec, target)]
        for t in (values, W_dec, b_dec, target):
            t.grad = None
    names = ["fvu", "x_hat", "d values", "d W_dec", "d b_dec", "d target"]
    for name, ours, ref in zip(names, results[True], results[False]):
        assert ref.abs().sum() > 0, name
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("n", [1, 2, 63, 1000])
def test_batch_variance_matches_float64_reference(n):
    """The compiled one-pass variance (shifted sums) equals the centred float64 one, also far from zero."""
    from sparsecode.kernels.fvu_pass import batch_variance, decode_and_fvu_grads

    torch.manual_seed(5)
    target = torch.randn(n, 24) * torch.linspace(0.1, 3, 24) + torch.linspace(-400, 400, 24)
    reference = (target.double() - target.double().mean(0)).square().sum().item()
    assert batch_variance(target) == pytest.approx(reference, rel=1e-6, abs=1e-9)
    indices = torch.randint(0, 64, (n, 4))
    result = decode_and_fvu_grads(torch.rand(n, 4), indices, torch.randn(64, 24), torch.zeros(24), target)
    assert result.variance == pytest.approx(reference, rel=1e-6, abs=1e-9)
    if n > 1:
        assert result.scale == pytest.approx(2 / reference, rel=1e-6)


@pytest.mark.parametrize("n", [1, 3, 257])
def test_latent_order_is_a_stable_sort_by_latent(n):
    torch.manual_seed(n)
    m = 40
    flat = torch.randint(0, m, (n * 5,))
    order, rows, offsets = latent_order(flat, m, 5)
    assert torch.equal(order, torch.sort(flat, stable=True).indices)
    assert torch.equal(rows, order // 5)
    assert torch.equal(
        offsets, torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(flat, minlength=m).cumsum(0)])
    )


@pytest.mark.parametrize("level", [1.0, 0.1])
@pytest.mark.parametrize("given_variance", [True, False], ids=["given-variance", "batch-variance"])
def test_compiled_fvu_of_a_constant_batch_is_not_finite_like_the_torch_path(given_variance, level):
    """A batch with no variance has no FVU; the trainer reports that as a divergence, so it must not raise."""
    indices = torch.randint(0, 16, (4, 2))
    W_dec, b_dec, target = torch.randn(16, 3), torch.zeros(3), torch.full((4, 3), level)
    variance = torch.tensor(0.0) if given_variance else None
    fvu, _ = sparse_fvu(torch.rand(4, 2), SparsePattern(indices, 16), W_dec, b_dec, target, variance)
    assert not torch.isfinite(fvu)


def test_padded_pattern_slots_contribute_nothing():
    """Rows with fewer active latents (JumpReLU, BatchTopK) pad with value 0: no output, no gradient."""
    torch.manual_seed(2)
    W_dec = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[1, 3, 0], [2, 2, 2]])  # row 1 is all padding on latent 2
    values = torch.tensor([[0.5, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = sparse_decode(values, SparsePattern(indices, 10), W_dec)
    torch.testing.assert_close(out[0], 0.5 * W_dec[1] - W_dec[3])
    assert torch.equal(out[1], torch.zeros(4, dtype=torch.float64))
    out.pow(2).sum().backward()
    assert torch.equal(W_dec.grad[2], torch.zeros(4, dtype=torch.float64))
    dense = torch.zeros(2, 10, dtype=torch.float64).scatter_add(1, indices, values.detach())
    torch.testing.assert_close(W_dec.grad, dense.T @ (2 * out.detach()))


def test_gathered_pre_acts_gradients_by_gradcheck():
    torch.manual_seed(3)
    n, d, m = 6, 3, 8
    x = torch.randn(n, d, dtype=torch.float64)
    W_enc = torch.randn(d, m, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(m, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d, dtype=torch.float64, requires_grad=True)
    indices = torch.randint(0, m, (n, 2))
    pattern = SparsePattern(indices, m)

    def f(W_enc, b_enc, b_dec):
        selected = ((x - b_dec) @ W_enc + b_enc).gather(1, indices).detach()
        return gathered_pre_acts(selected, x, W_enc, b_enc, b_dec, pattern)

    def reference(W_enc, b_enc, b_dec):
        return ((x - b_dec) @ W_enc + b_enc).gather(1, indices)

    w = torch.randn(n, 2, dtype=torch.float64)
    ours = torch.autograd.grad((f(W_enc, b_enc, b_dec) * w).sum(), (W_enc, b_enc, b_dec))
    ref = torch.autograd.grad((reference(W_enc, b_enc, b_dec) * w).sum(), (W_enc, b_enc, b_dec))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_compiled_decoder_gradient_projection():
    torch.manual_seed(5)
    W = torch.nn.functional.normalize(torch.randn(300, 48), dim=1)
    grad = torch.randn(300, 48)
    expected = grad - (grad * W).sum(1, keepdim=True) * W
    project_out_rows_(grad, W)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    assert (grad * W).sum(1).abs().max() < 1e-5


def test_bfloat16_encoder_gemm_under_autocast():
    """--dtype bfloat16: only the encoder product runs in bf16; the result stays close to float32 and the
    gradients land in float32 weights."""
    torch.manual_seed(4)
    sae = build_sae(TopKConfig(d_in=32, n_latents=256, k=8))
    x = torch.randn(256, 32)
    dead = torch.rand(256) < 0.2
    ref = sae.training_output(x, dead_mask=dead, progress=0.0)
    ref_grads = {n: g.clone() for n, g in grads(sae, ref.loss).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.training_output(x, dead_mask=dead, progress=0.0)
    assert sae.__dict__["_scratch"].pre.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    ours = grads(sae, out.loss)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0.05, atol=0)
    for name, g in ours.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        cos = torch.nn.functional.cosine_similarity(g.flatten(), ref_grads[name].flatten(), dim=0)
        assert cos > 0.9, (name, cos)


def assert_same_topk(pre, k):
    """exact_topk returns the k largest values of every row, each at an index holding it, no index twice."""
    values, indices = exact_topk(pre, k)
    reference = pre.topk(k, dim=-1).values  # sorted descending
    assert values.shape == indices.shape == (pre.shape[0], k) and indices.dtype == torch.long
    torch.testing.assert_close(values.sort(-1, descending=True).values, reference, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(pre.gather(1, indices), values, rtol=0, atol=0, equal_nan=True)
    assert all(len(set(row)) == k for row in indices.tolist())


def test_exact_topk_matches_torch_topk():
    g = torch.Generator().manual_seed(0)
    m, k = 768, 8
    assert block_size(m, k) is not None  # the block path runs, not the fallback
    rows = [
        torch.randn(64, m, generator=g),  # distinct values: the same index set as torch.topk
        torch.randint(0, 4, (64, m), generator=g).float(),  # heavy ties: many candidates tie the bound
        torch.zeros(4, m),  # one value everywhere
        torch.full((4, m), -torch.inf),
    ]
    peaked = torch.randn(8, m, generator=g)
    peaked[:, 5::96] += 100  # all of a row's top k in one block
    rows.append(peaked)
    with_nan = torch.randn(4, m, generator=g)
    with_nan[:, [3, 400]] = torch.nan  # torch.topk ranks NaN above everything
    rows.append(with_nan)
    for pre in rows:
        assert_same_topk(pre, k)
    pre = torch.randn(64, m, generator=g)
    indices = exact_topk(pre, k)[1]
    assert torch.equal(indices.sort(-1).values, pre.topk(k, dim=-1).indices.sort(-1).values)
    # gradients reach the selected entries of pre, as through torch.topk
    weights = torch.randn(m, generator=g)
    grads = []
    for select in (exact_topk, lambda p, k: p.topk(k, dim=-1)):
        leaf = pre.clone().requires_grad_()
        values, chosen = select(leaf, k)
        (values * weights[chosen]).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].count_nonzero() == 64 * k


@pytest.mark.parametrize("m,k", [(768, 768), (768, 200), (769, 8), (6, 1)])
def test_exact_topk_falls_back_where_blocks_do_not_pay(m, k):
    pre = torch.randn(16, m, generator=torch.Generator().manual_seed(1))
    assert block_size(m, k) is None
    assert_same_topk(pre, k)
    assert_same_topk(pre[:, ::1].t().contiguous().t(), k)  # a non-contiguous block


def test_compiled_topk_with_bias_matches_torch_topk():
    """topk_rows' kernel selects the top k of pre + bias exactly, without writing the sum."""
    from sparsecode.kernels.topk_rows import topk_with_bias

    g = torch.Generator().manual_seed(3)
    m, k = 768, 8
    size = block_size(m, k)
    peaked = torch.randn(8, m, generator=g)
    peaked[:, 5::96] += 100  # all of a row's top k in one block
    cases = [
        (torch.randn(64, m, generator=g), torch.randn(m, generator=g)),
        (torch.randint(0, 4, (64, m), generator=g).float(), torch.randint(0, 2, (m,), generator=g).float()),
        (torch.zeros(4, m), torch.zeros(m)),  # one value everywhere
        (torch.full((4, m), -torch.inf), torch.zeros(m)),
        (peaked, torch.randn(m, generator=g) * 0.01),
        (torch.randn(16, m, generator=g), torch.randn(m, generator=g) * 50),
    ]  # the bias dominates
    for pre, bias in cases:
        values, indices = torch.full((len(pre), k), torch.nan), torch.full((len(pre), k), -1)
        topk_with_bias(pre, bias, k, size, out=(values, indices))
        full = pre + bias
        reference = full.topk(k, dim=-1).values
        torch.testing.assert_close(values.sort(-1, descending=True).values, reference, rtol=0, atol=0)
        torch.testing.assert_close(full.gather(1, indices), values, rtol=0, atol=0)
        assert all(len(set(row)) == k for row in indices.tolist())


def test_compiled_topk_rows_do_not_depend_on_which_thread_took_them():
    """Threads claim 64-row chunks in whatever order they finish: each row's winners, in their order, must be
    those of its chunk alone (else the step's sums, and training, would vary from run to run)."""
    from sparsecode.kernels.runtime import CHUNK_ROWS
    from sparsecode.kernels.topk_rows import topk_with_bias

    g = torch.Generator().manual_seed(7)
    m, k, n = 768, 8, 5 * CHUNK_ROWS + 3
    size = block_size(m, k)
    pre, bias = torch.randn(n, m, generator=g), torch.randn(m, generator=g) * 0.1
    whole = torch.empty(n, k), torch.empty(n, k, dtype=torch.long)
    topk_with_bias(pre, bias, k, size, out=whole)
    for start in range(0, n, CHUNK_ROWS):
        part = torch.empty(min(n - start, CHUNK_ROWS), k), torch.empty(min(n - start, CHUNK_ROWS), k, dtype=torch.long)
        topk_with_bias(pre[start : start + CHUNK_ROWS].contiguous(), bias, k, size, out=part)
        assert torch.equal(part[0], whole[0][start : start + CHUNK_ROWS])
        assert torch.equal(part[1], whole[1][start : start + CHUNK_ROWS])


@pytest.mark.parametrize("rank_relative", [True, False], ids=["relative", "raw"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batchtopk_sparse_step_matches_its_dense_step(monkeypatch, rank_relative, dtype):
    """BatchTopK's candidates-per-row step gives the dense batch ranking's loss, gradients and threshold; a
    batch where some row keeps all its candidates takes the dense path itself."""
    from sparsecode.sae import BatchTopKConfig
    from sparsecode.sae import batchtopk as batchtopk_module

    torch.manual_seed(4)
    n, d, m, k = 64, 16, 256, 4
    x = torch.randn(n, d, dtype=dtype)
    if not rank_relative:  # raw ranking gives the largest rows most of the budget: more candidates per row
        monkeypatch.setattr(batchtopk_module, "CANDIDATES_PER_K", 16)
    if rank_relative:  # rows of varied norm (raw ranking would hand them all their candidates)
        x = x * torch.rand(n, 1, dtype=dtype).mul(3).add(0.2)
    dead = torch.rand(m) < 0.3
    saes = [
        build_sae(BatchTopKConfig(d_in=d, n_latents=m, k=k, k_aux=6, rank_relative=rank_relative)).to(dtype)
        for _ in range(2)
    ]
    with torch.no_grad():
        saes[0].b_enc.normal_(0, 0.1)
        saes[1].b_enc.copy_(saes[0].b_enc)
    calls = []
    sae = saes[0]
    original = sae._dense_training_output
    sae._dense_training_output = lambda *a: calls.append(1) or original(*a)
    sparse_out = saes[0].training_output(x, dead_mask=dead, progress=0.5)
    assert calls == []  # an ordinary batch takes the sparse path
    dense_out = saes[1]._dense_training_output(x, dead)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(sparse_out.loss, dense_out.loss, **tol)
    torch.testing.assert_close(sparse_out.x_hat, dense_out.x_hat, **tol)
    assert torch.equal(sparse_out.fired, dense_out.fired)
    torch.testing.assert_close(sparse_out.metrics["l0"], dense_out.metrics["l0"])
    torch.testing.assert_close(saes[0].threshold, saes[1].threshold, **tol)
    assert "auxk_loss" in sparse_out.metrics
    ours, ref = grads(saes[0], sparse_out.loss), grads(saes[1], dense_out.loss)
    for name in ref:
        assert ref[name].abs().sum() > 0, name
        torch.testing.assert_close(ours[name], ref[name], msg=name, **tol)

    # a row aligned with more identical encoder columns than it has candidates keeps all of them: the batch
    # ranking might also want its next latent, so the dense path runs instead
    u = torch.nn.functional.normalize(torch.randn(d, dtype=dtype), dim=0)
    with torch.no_grad():
        sae.W_enc[:, : batchtopk_module.CANDIDATES_PER_K * k + 8] = u[:, None]
        sae.b_enc.zero_()
    aligned = x.clone()
    aligned[0] = sae.b_dec.detach() + 5 * u
    sae.training_output(aligned, dead_mask=None, progress=0.5)
    assert calls == [1]


def _sparse_and_dense_steps(cfg, dtype, open_per_latent=3):
    """Two copies of a ``cfg`` dictionary, each latent open on about ``open_per_latent`` of 512 rows, and the
    sparse ``training_output`` of the first (asserting it ran sparse) and the dense step of the second."""
    torch.manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(512, cfg.d_in, dtype=dtype), dim=1) * 4  # rows of equal norm
    sae = build_sae(cfg)
    sae.initialize_from_data(x.float())
    sae.to(dtype)
    with torch.no_grad():
        if cfg.arch == "gated":  # gate bias: each latent opens on its ``open_per_latent`` largest projections
            sae.b_enc.copy_(-sae.pre_acts(x).topk(open_per_latent + 1, dim=0).values.mean(0) + sae.b_enc)
            sae.r_mag.normal_(0, 0.3)
            sae.b_mag.normal_(0, 0.1)
        else:  # thresholds between each latent's ``open_per_latent`` largest z and the next
            z = sae.pre_acts(x).relu()
            z = z if sae.row_rms(x) is None else z / sae.row_rms(x)
            sae.log_threshold.copy_(z.topk(open_per_latent + 1, dim=0).values[-2:].mean(0).clamp_min(0.1).log())
    twin = copy.deepcopy(sae)
    calls = []
    original = sae._dense_training_output
    sae._dense_training_output = lambda *a: calls.append(1) or original(*a)
    sparse_out = sae.training_output(x, dead_mask=None, progress=0.5)
    assert calls == []  # an ordinary batch takes the sparse path
    dense_out = twin._dense_training_output(x, 0.5)
    return (sae, sparse_out), (twin, dense_out), calls, x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "arch,extra",
    [("jumprelu", {"relative_threshold": True}), ("jumprelu", {"relative_threshold": False}), ("gated", {})],
    ids=["jumprelu", "jumprelu-absolute", "gated"],
)
def test_target_l0_sparse_step_matches_its_dense_step(arch, extra, dtype):
    """JumpReLU's and Gated's candidates-per-row step gives the dense step's loss, reconstruction, metrics and
    every gradient (thresholds included: latents just below theirs are candidates too); a batch where some row
    might have more open latents than candidates takes the dense path itself."""
    from sparsecode.sae.common import candidate_width

    extra = {"bandwidth": 0.02, **extra} if arch == "jumprelu" else extra
    cfg = ARCHITECTURES[arch].config_class(d_in=16, n_latents=256, target_l0=4.0, **extra)
    (sae, sparse_out), (twin, dense_out), calls, x = _sparse_and_dense_steps(cfg, dtype)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(sparse_out.loss, dense_out.loss, **tol)
    torch.testing.assert_close(sparse_out.x_hat, dense_out.x_hat, **tol)
    assert torch.equal(sparse_out.fired, dense_out.fired)
    for name, value in dense_out.metrics.items():
        torch.testing.assert_close(sparse_out.metrics[name], value, msg=name, **tol)
    ours, ref = grads(sae, sparse_out.loss), grads(twin, dense_out.loss)
    for name in ref:
        assert ref[name].abs().sum() > 0, name
        torch.testing.assert_close(ours[name], ref[name], msg=name, **tol)

    # a row aligned with more identical encoder columns than it has candidates: the dense path runs instead
    u = torch.nn.functional.normalize(torch.randn(16, dtype=dtype), dim=0)
    with torch.no_grad():
        sae.W_enc[:, : candidate_width(4.0, 256) + 8] = u[:, None]
        sae.b_enc.zero_()
    aligned = x.clone()
    aligned[0] = sae.b_dec.detach() + 50 * u
    sae.training_output(aligned, dead_mask=None, progress=0.5)
    assert calls == [1]


def test_reference_reconstructs_planted_codes_exactly():
    """The reference itself, on known answers: rows made of at most k positive multiples of orthonormal dictionary
    rows are reconstructed exactly by TopK (FVU 0), by every Matryoshka prefix that holds their latents and by
    every budget that keeps them all; AuxK's dead latents fit a residual made of them exactly, and silent dead
    latents fit a zero residual at no cost."""
    torch.manual_seed(6)
    d, m, k, n = 16, 16, 3, 40
    basis = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]  # (d, d) orthonormal rows
    weights = {"W_enc": basis.T, "b_enc": torch.zeros(m), "b_dec": torch.zeros(d), "W_dec": basis}
    weights = {name: w.to(torch.float64) for name, w in weights.items()}

    def planted(latents):  # (n, m) codes with k positive entries among ``latents`` per row
        codes = torch.zeros(n, m, dtype=torch.float64)
        for row in codes:
            row[latents[torch.randperm(len(latents))[:k]]] = torch.rand(k, dtype=torch.float64) + 0.5
        return codes

    codes = planted(torch.arange(4))
    x = codes @ basis
    for nested in ({}, {"prefixes": [4, 8]}, {"budgets": [3]}):
        loss, x_hat = reference.topk_loss(x, weights, k, **nested)
        torch.testing.assert_close(x_hat, x)
        assert float(loss) < 1e-20, nested
    loss, _ = reference.topk_loss(x, weights, k, prefixes=[2])  # the first 2 latents alone miss some: FVU > 0
    assert float(loss) > 0.1
    dead = torch.arange(m) >= 8
    dead_codes = planted(torch.arange(8, 12))
    assert float(reference.auxk(dead_codes + codes, dead, k, basis, dead_codes @ basis)) < 1e-20
    assert float(reference.auxk(dead_codes + codes, dead, k, basis, codes @ basis)) > 0.5  # live latents' part
    assert float(reference.auxk(codes, dead, k, basis, torch.zeros(n, d, dtype=torch.float64))) == 0  # dead: all 0


def test_backend_setting(monkeypatch):
    """One setting: ``SPARSECODE_KERNELS`` (checked when read, with a message naming the choices) or ``use``."""
    monkeypatch.delenv("SPARSECODE_KERNELS", raising=False)
    assert kernels.current() == "auto"
    monkeypatch.setenv("SPARSECODE_KERNELS", "numba")
    with pytest.raises(ConfigError, match="SPARSECODE_KERNELS must be one of auto, compiled, screen, torch"):
        kernels.current()
    with kernels.use("torch"):
        assert kernels.current() == "torch"
        with kernels.use("compiled"):
            assert kernels.current() == "compiled"
        assert kernels.current() == "torch"
    with pytest.raises(ConfigError, match="got 'fast'"), kernels.use("fast"):
        pass


COMPILED_KERNELS = [
    ("topk_rows", "_topk_rows"),
    ("screen", "_screened_rows"),
    ("fvu_pass", "_decode_and_fvu_grads"),
    ("rows", "_counting_sort"),
    ("rows", "_project_rows"),
    ("adam", "_adam_unit_rows"),
]


@pytest.mark.parametrize("backend", ["torch", "compiled", "screen"])
def test_each_backend_runs_its_kernels_and_only_those(monkeypatch, backend):
    """A float32 TopK training step and its optimizer step: under ``torch`` no compiled kernel runs; under
    ``compiled`` all but the screen do; under ``screen`` the screen replaces the float32 product's selection. The
    step's loss is the reference's every time."""
    import importlib

    from sparsecode.train.optim import Adam

    calls = []
    for module_name, name in COMPILED_KERNELS:
        module = importlib.import_module(f"sparsecode.kernels.{module_name}")
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    monkeypatch.setenv("SPARSECODE_KERNELS", backend)
    torch.manual_seed(8)
    sae = build_sae(TopKConfig(d_in=32, n_latents=256, k=8))
    x = torch.randn(64, 32)
    out = sae.training_output(x, dead_mask=None, progress=0.0)
    torch.testing.assert_close(out.loss, dense_reference(sae, x, None)[0], rtol=1e-5, atol=1e-6)
    opt = Adam(sae.parameters(), lr=1e-3, unit_rows=sae.unit_norm_rows())
    out.loss.backward()
    opt.step()
    sae.remove_parallel_grad_()
    expected = {
        "torch": set(),
        "compiled": {"_topk_rows", "_decode_and_fvu_grads", "_counting_sort", "_project_rows", "_adam_unit_rows"},
        "screen": {"_screened_rows", "_decode_and_fvu_grads", "_counting_sort", "_project_rows", "_adam_unit_rows"},
    }[backend]
    assert set(calls) == expected


@pytest.mark.parametrize("lr", [1e-3, 0.3])
def test_unit_row_adam_is_the_same_compiled_or_in_torch(lr):
    """The one-pass unit-row Adam (``kernels.adam_unit_rows_``) against torch's: gradient projected, Adam, rows
    rescaled, over several steps (the torch backend takes that path)."""
    from sparsecode.train.optim import Adam

    torch.manual_seed(9)
    W = torch.nn.functional.normalize(torch.randn(130, 24), dim=1)
    results = {}
    for backend in ("compiled", "torch"):
        with kernels.use(backend):
            weight = torch.nn.Parameter(W.clone())
            opt = Adam([weight], unit_rows=[weight], lr=lr, betas=(0.9, 0.99))
            for step in range(4):
                weight.grad = torch.randn(130, 24, generator=torch.Generator().manual_seed(step))
                opt.step()
            results[backend] = weight.detach(), opt.state[weight]["exp_avg"], opt.state[weight]["exp_avg_sq"]
    for ours, ref in zip(results["compiled"], results["torch"]):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["compiled"][0].norm(dim=1), torch.ones(130))


def test_decoder_gradient_projection_is_the_same_compiled_or_in_torch():
    torch.manual_seed(10)
    W = torch.nn.functional.normalize(torch.randn(200, 40), dim=1)
    grad = torch.randn(200, 40)
    results = []
    for backend in ("compiled", "torch"):
        with kernels.use(backend):
            g = grad.clone()
            project_out_rows_(g, W)
            results.append(g)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert (results[0] * W).sum(1).abs().max() < 1e-5
