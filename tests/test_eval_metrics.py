"""Known-answer tests for the deeper evaluation metrics: feature F1, dark matter, logistic/sparse probes,
token concepts, feature absorption, neuron sparsity."""

from __future__ import annotations

import pytest
import torch

from sparsecode.eval.absorption import feature_absorption
from sparsecode.eval.dark_matter import dark_matter
from sparsecode.eval.ground_truth import FeatureF1, match_features
from sparsecode.eval.logistic import binary_scores, fit_logistic, rank_by_mean_difference
from sparsecode.eval.probing import TokenRows, k_sparse_probe, sparse_probing, token_concepts


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- ground truth F1 -------------------------------------------------------------------------------


def test_feature_f1_exact_and_shuffled():
    g = _gen(0)
    codes = torch.rand(500, 6, generator=g) * (torch.rand(500, 6, generator=g) < 0.3)  # (n, F)
    true = torch.eye(6)  # (F, d)
    perm = torch.randperm(10, generator=g)
    learned = torch.zeros(10, 6)  # true feature i is learned row perm[i]; the other 4 rows are empty
    learned[perm[:6]] = torch.eye(6)
    match, cos = match_features(learned, true)
    assert torch.equal(match, perm[:6]) and torch.allclose(cos, torch.ones(6, dtype=torch.float64))
    latents = torch.zeros(500, 10)
    latents[:, perm[:6]] = codes  # each matched latent fires exactly when its feature is on
    acc = FeatureF1(match)
    acc.update(codes[:200], latents[:200])
    acc.update(codes[200:], latents[200:])
    r = acc.result()
    assert r["f1"] == 1.0 and r["precision"] == 1.0 and r["recall"] == 1.0 and r["features_seen"] == 6

    # a latent that fires on every row: precision = feature density, recall 1
    always = latents.clone()
    always[:, perm[0]] = 1.0
    acc = FeatureF1(match)
    acc.update(codes, always)
    per = acc.per_feature()
    density = float((codes[:, 0] > 0).double().mean())
    assert float(per["precision"][0]) == pytest.approx(density) and float(per["recall"][0]) == 1.0
    assert float(per["f1"][0]) == pytest.approx(2 * density / (1 + density))


# -- dark matter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.0, 0.3, 0.8])
def test_dark_matter_recovers_planted_linear_share(share):
    """x = sparse part + error; the error = (linear function of x) + independent noise, with the linear
    part holding ``share`` of the error variance. The held-out R² must find that share."""
    g = _gen(1)
    n, d = 8000, 24
    sparse = torch.randn(n, d, generator=g) * (torch.rand(n, d, generator=g) < 0.2)
    a = torch.randn(d, d, generator=g) / d**0.5
    base = torch.randn(n, d, generator=g)  # the input also carries a dense part the map reads from
    x = sparse + base
    lin = x @ a
    noise = torch.randn(n, d, generator=g)
    # scale so that Var(linear part) / (Var(linear) + Var(noise)) = share
    lin = lin / lin.var(0).sum().sqrt() * share**0.5
    noise = noise / noise.var(0).sum().sqrt() * (1 - share) ** 0.5
    x_hat = x - (lin + noise)
    r = dark_matter(x, x_hat)
    assert r["error_linear_r2"] == pytest.approx(share, abs=0.03)
    assert r["linear_error_fvu"] + r["nonlinear_error_fvu"] == pytest.approx(r["total_error_fvu"], rel=0.05)
    assert r["n_fit"] == 4000 and r["n_heldout"] == 4000


def test_dark_matter_predictable_norm():
    g = _gen(2)
    x = torch.randn(4000, 8, generator=g)
    direction = torch.randn(8, generator=g)
    direction /= direction.norm()
    err = (2.0 + x[:, :1]).abs() * direction  # norm = |2 + x_0|: mostly linear in x
    r = dark_matter(x, x - err)
    assert r["error_norm_r2"] > 0.9
    from sparsecode.errors import DataError

    with pytest.raises(DataError, match="more rows than dimensions"):
        dark_matter(x[:10], x[:10])


# -- logistic / sparse probes ----------------------------------------------------------------------


def test_fit_logistic_matches_closed_form_separable_direction():
    g = _gen(3)
    n = 3000
    x = torch.randn(2, n, 3, generator=g)
    true_w = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.rand(2, n, generator=g) < torch.sigmoid((x * true_w[:, None]).sum(-1))
    fit = fit_logistic(x, y, torch.ones(2, n), l2=0.0)
    w = fit.raw_direction()
    assert torch.allclose(w.float(), true_w, atol=0.25)
    # gradient of the unregularised objective is ~0 at the optimum
    z = (x.double() - fit.mean[:, None]) / fit.std[:, None]
    p = torch.sigmoid((z * fit.coef[:, None]).sum(-1) + fit.bias[:, None])
    grad = torch.einsum("cn,cnk->ck", p - y.double(), z) / n
    assert grad.abs().max() < 1e-6


def test_binary_scores_counts():
    pred = torch.tensor([[1, 1, 0, 0, 1]], dtype=torch.bool)
    y = torch.tensor([[1, 0, 1, 0, 1]], dtype=torch.bool)
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # last row excluded
    s = binary_scores(pred, y, w)
    assert float(s["accuracy"][0]) == 0.5 and float(s["precision"][0]) == 0.5 and float(s["recall"][0]) == 0.5
    assert float(s["f1"][0]) == 0.5


def test_k_sparse_probe_finds_the_planted_coordinate():
    """Concept c is carried by coordinate 7 only: the 1-sparse probe picks it and is nearly perfect;
    a representation that hides it in a random rotation needs more coordinates."""
    g = _gen(4)
    n, d = 4000, 32
    y = torch.rand(n, generator=g) < 0.3
    x = torch.randn(n, d, generator=g)
    x[:, 7] = y.float() * 3 + 0.3 * torch.randn(n, generator=g)
    train = torch.arange(n) % 2 == 0
    w_train, w_test = train.float()[None], (~train).float()[None]
    out = k_sparse_probe(x, y[None], w_train, w_test, ks=(1, 4))
    assert int(out["top"][0, 0]) == 7
    assert float(out[1]["f1"][0]) > 0.98
    rot = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    out_rot = k_sparse_probe(x @ rot, y[None], w_train, w_test, ks=(1, 4))
    assert float(out_rot[1]["f1"][0]) < float(out[1]["f1"][0]) - 0.05
    score = rank_by_mean_difference(x, y[None], torch.ones(1, n), block=5)  # column blocks change nothing
    assert torch.allclose(score, rank_by_mean_difference(x, y[None], torch.ones(1, n)))


def test_token_concepts_on_wordpiece_and_bpe():
    concepts, letter = token_concepts(["hello", "##ing", "42", ",", "def", "Apple", "##7", "zoo"])
    assert concepts["is_digit"].tolist() == [False, False, True, False, False, False, True, False]
    assert concepts["starts_word"].tolist() == [True, False, True, True, True, True, False, True]
    assert concepts["is_punctuation"].tolist() == [False, False, False, True, False, False, False, False]
    assert concepts["is_python_keyword"].tolist() == [False, False, False, False, True, False, False, False]
    assert concepts["is_capitalised"].tolist() == [False, False, False, False, False, True, False, False]
    assert letter.tolist() == [7, -1, -1, -1, 3, 0, -1, 25]
    assert concepts["first_letter_a"].tolist() == [False, False, False, False, False, True, False, False]
    bpe, bpe_letter = token_concepts(["Ġfor", "ing", "Ġ12", "."])
    assert bpe["starts_word"].tolist() == [True, False, True, False]
    assert bpe["is_python_keyword"].tolist() == [True, False, False, False]
    assert bpe_letter.tolist() == [5, -1, -1, -1]


def _planted_token_rows(n: int = 6000, seed: int = 5) -> TokenRows:
    """Tokens '7' (digit) and words; latent 3 fires exactly on digits, the residual carries digits
    only spread over all coordinates."""
    g = _gen(seed)
    vocab = ["7", "cat", "dog", ",", "##s", "the"]
    ids = torch.randint(0, len(vocab), (n,), generator=g)
    tokens = [vocab[i] for i in ids.tolist()]
    digit = ids == 0
    latents = torch.relu(torch.randn(n, 20, generator=g) - 1.5)
    latents[:, 3] = digit.float() * (1 + torch.rand(n, generator=g))
    resid = torch.randn(n, 16, generator=g) + digit.float()[:, None] * 0.4 * torch.randn(16, generator=g)
    return TokenRows(
        token_ids=ids, doc_ids=torch.arange(n) // 50, reps={"sae": latents, "residual": resid}, tokens=tokens
    )


def test_sparse_probing_reports_planted_digit_latent_and_skips_rare_concepts():
    rows = _planted_token_rows()
    r = sparse_probing(rows, ks=(1, 2), progress=False)
    digit = r["concepts"]["is_digit"]
    assert digit["sae_top_latents"][0] == 3
    assert digit["sae"]["f1"][0] == pytest.approx(1.0)
    assert digit["residual"]["f1"][0] < 0.95
    assert "is_capitalised" in r["skipped"] and "first_letter_q" in r["skipped"]
    assert set(r["mean"]) == {"sae", "residual"} and len(r["mean"]["sae"]["f1"]) == 2


# -- absorption ------------------------------------------------------------------------------------


def test_absorption_on_planted_case():
    """Letters a, b, c as orthogonal directions. For letter a, the main latent 0 is silent on the tokens
    of 12 'absorbing' words (each its own latent whose decoder is a's direction plus a word direction);
    for letters b and c the main latent always fires. Planted absorption: a = 12 × 3% = 36%, b = c = 0."""
    g = _gen(6)
    n, d = 12000, 48
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T  # orthonormal rows
    letter = torch.randint(0, 4, (n,), generator=g) - 1  # -1 (not a word), 0=a, 1=b, 2=c
    word = torch.randint(0, 100, (n,), generator=g)  # word id within the letter
    x = 0.3 * torch.randn(n, d, generator=g)
    m = 3 + 12 + 20
    w_dec = torch.zeros(m, d)
    w_dec[:3] = basis[:3]
    for j in range(12):
        w_dec[3 + j] = (basis[0] + basis[3 + j]) / 2**0.5
    w_dec[15:] = torch.nn.functional.normalize(torch.randn(20, d, generator=g), dim=1)
    latents = torch.zeros(n, m)
    for i in range(n):
        if letter[i] >= 0:
            x[i] += 2 * basis[letter[i]]
        if letter[i] == 0 and word[i] < 36:  # 36 of 100 words of letter a are absorbed by 12 latents
            j = 3 + int(word[i]) // 3
            latents[i, j] = 2 * 2**0.5
            x[i] += 2 * basis[3 + (j - 3)]
        elif letter[i] >= 0:
            latents[i, letter[i]] = 2.0
    latents[:, 15:] = torch.relu(torch.randn(n, 20, generator=g) - 2)
    doc_ids = torch.arange(n) // 40
    r = feature_absorption(x, latents, w_dec, letter, doc_ids)
    assert set(r["letters"]) == {"a", "b", "c"}
    assert r["letters"]["a"]["main_latents"][0] == 0
    assert r["letters"]["a"]["absorption_rate"] == pytest.approx(0.36, abs=0.04)
    assert r["letters"]["b"]["absorption_rate"] == 0.0 and r["letters"]["c"]["absorption_rate"] == 0.0
    assert r["absorption_rate"] == pytest.approx(0.12, abs=0.015)

    # with the absorbing decoders pointing away from a's direction, nothing counts as absorbed
    w_dec2 = w_dec.clone()
    w_dec2[3:15] = basis[3:15]
    r2 = feature_absorption(x, latents, w_dec2, letter, doc_ids)
    assert r2["letters"]["a"]["absorption_rate"] == 0.0
    assert r2["letters"]["a"]["main_miss_rate"] == pytest.approx(0.36, abs=0.04)


# -- KL in spliced fidelity, neuron sparsity -------------------------------------------------------


def test_splice_kl_causal_lm(tiny_gpt2_dir, text_corpus):
    from sparsecode.eval import spliced_fidelity
    from sparsecode.sources.hf import ModelSource, ModelSourceConfig

    src = ModelSource(
        ModelSourceConfig(model=str(tiny_gpt2_dir), hook="transformer.h.0", corpus=[str(text_corpus)], eval_every=2)
    )
    same = spliced_fidelity(src, lambda a: a, max_chunks=6, batch_size=3, progress=False)
    assert same["kl_spliced"] == 0.0 and same["kl_zero_ablation"] > 0 and same["kl_mean_ablation"] > 0
    zero = spliced_fidelity(src, torch.zeros_like, max_chunks=6, batch_size=3, progress=False)
    assert zero["kl_spliced"] == pytest.approx(zero["kl_zero_ablation"], rel=1e-9)


def _set_mlp_biases(model, layer_fracs: list[float], n: int) -> None:
    """Zero each BERT intermediate weight; bias +1 on the first frac·n neurons, −1 on the rest."""
    for layer, frac in zip(model.encoder.layer, layer_fracs):
        dense = layer.intermediate.dense
        with torch.no_grad():
            dense.weight.zero_()
            dense.bias.fill_(-1.0)
            dense.bias[: int(frac * n)] = 1.0


@pytest.mark.parametrize("act, threshold", [("relu", None), ("gelu", None), ("gelu", 0.9)])
def test_neuron_sparsity_known_answer(tiny_bert_dir, text_corpus, act, threshold):
    """Constant pre-activations ±1: the on-fraction per layer is exactly the planted share of +1 biases
    (GELU(1) = 0.841 > 0.01, GELU(−1) < 0); a threshold above 0.841 turns every neuron off."""
    from transformers import BertConfig, BertModel

    from sparsecode.eval.neurons import neuron_sparsity
    from sparsecode.sources.hf import ModelSource, ModelSourceConfig

    src = ModelSource(
        ModelSourceConfig(model=str(tiny_bert_dir), hook="encoder.layer.0", corpus=[str(text_corpus)], eval_every=2)
    )
    cfg = BertConfig.from_pretrained(str(tiny_bert_dir), hidden_act=act)
    model = BertModel(cfg).eval()
    _set_mlp_biases(model, [0.25, 0.5], cfg.intermediate_size)
    src._model, src.model_config = model, cfg
    r = neuron_sparsity(src, max_chunks=4, threshold=threshold, progress=False)
    assert r["threshold"] == (threshold if threshold is not None else (0.0 if act == "relu" else 0.01))
    assert [lay["module"] for lay in r["layers"]] == ["encoder.layer.0.intermediate", "encoder.layer.1.intermediate"]
    expected = [0.0, 0.0] if threshold == 0.9 else [0.25, 0.5]
    assert [lay["fraction_active"] for lay in r["layers"]] == expected
    assert r["layers"][0]["never_active_fraction"] == 1 - expected[0]
    assert r["tokens"] > 0


def test_l0_histogram_and_std():
    from sparsecode.eval import ReconstructionStats

    lat = torch.zeros(6, 4)
    lat[0, :3] = 1.0  # L0 per row: 3, 0, 1, 1, 0, 4
    lat[2, 1] = lat[3, 2] = 2.0
    lat[5] = 0.5
    s = ReconstructionStats(4)
    s.update(torch.randn(3, 2), lat[:3], torch.zeros(3, 2))
    s.update(torch.randn(3, 2), lat[3:], torch.zeros(3, 2))
    r = s.result()
    assert r["l0_histogram"] == [2, 2, 0, 1, 1]
    assert r["l0_std"] == pytest.approx(float(torch.tensor([3.0, 0, 1, 1, 0, 4]).std(unbiased=False)))
