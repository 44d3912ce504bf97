"""Attribution with known answers: activation x gradient equals the finite-difference derivative of the metric on a
real (tiny) transformer, equals exact ablation where the model is linear, and the circuit edge planted in a
two-layer toy is recovered with its exact weight."""

from __future__ import annotations

import pytest
import torch
from lm_runs import write_run
from torch import nn

from sparsecode.errors import DataError
from sparsecode.hooks import HookPoint
from sparsecode.interventions import Site, intervene, scale_latent, site_of_run
from sparsecode.interventions.attribute import attribute
from sparsecode.run import load_run
from sparsecode.sae import ReLUConfig, build_sae


def _identity_sae(d: int):
    sae = build_sae(ReLUConfig(d_in=d, n_latents=d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval().requires_grad_(False)


class TwoLayerToy(nn.Module):
    """h_a = x;  h_b = h_a + mix(h_a);  the metric reads h_b. ``mix`` maps direction 0 to twice direction 1 only:
    the planted edge a:0 -> b:1."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.a, self.b = nn.Identity(), nn.Identity()
        self.mix = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.weight[1, 0] = 2.0
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h + self.mix(h))


def test_planted_two_layer_edge_is_recovered_and_attribution_equals_ablation():
    toy = TwoLayerToy()
    sites = [
        Site(_identity_sae(4), HookPoint(toy.b), HookPoint(toy.b), name="b"),  # given out of order on purpose
        Site(_identity_sae(4), HookPoint(toy.a), HookPoint(toy.a), name="a"),
    ]
    x = torch.tensor([[[3.0, 0.0, 0.0, 0.5]]])  # (B=1, T=1, d=4): latent a:0 = 3, a:3 = 0.5
    v = torch.tensor([0.0, 1.0, 0.0, 0.25])

    def metric() -> torch.Tensor:
        return (toy(x) * v).sum()  # linear in every latent

    result = attribute(sites, metric, top=4, edge_top=4)
    assert result.sites == ["a", "b"] and result.metric == pytest.approx(6.0 + 0.125)
    scores = {(n.site, n.latent): (n.attribution, n.ablation) for n in result.nodes}
    # b:1 = 2 x 3 = 6 is read with weight 1; a:0 = 3 reaches the metric only through it (gradient 2 x 1);
    # a:3 = 0.5 passes straight to b:3, read with weight 0.25
    assert scores[("a", 0)] == pytest.approx((6.0, 6.0))
    assert scores[("a", 3)] == pytest.approx((0.125, 0.125))
    assert scores[("b", 1)] == pytest.approx((6.0, 6.0))
    assert scores[("b", 3)] == pytest.approx((0.125, 0.125))
    for attribution, ablation in scores.values():  # linear model: the estimate is exact
        assert attribution == pytest.approx(ablation, abs=1e-6)
    assert result.errors == pytest.approx({"a": 0.0, "b": 0.0})
    edges = {(e.source, e.target): e.weight for e in result.edges}
    assert edges[(0, 1)] == pytest.approx(6.0)  # the planted edge: all of b:1's attribution flows from a:0
    assert edges[(3, 3)] == pytest.approx(0.125)  # the residual path of a:3 into b:3
    assert max(abs(w) for (s, t), w in edges.items() if (s, t) not in ((0, 1), (3, 3))) == 0.0


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_gpt2_dir):
    return load_run(write_run(tmp_path_factory.mktemp("attr") / "run", tiny_gpt2_dir, hook="transformer.h.0"))


def test_attribution_equals_finite_differences_on_a_transformer(gpt2_run):
    model, tok = gpt2_run.model, gpt2_run.tokenizer
    enc = tok("the cat sat on the", return_tensors="pt")
    target = tok.convert_tokens_to_ids("mat")
    site = site_of_run(gpt2_run)

    def metric() -> torch.Tensor:
        logits = model(**enc).logits[0, -1].double()
        return torch.log_softmax(logits, -1)[target]

    result = attribute([site], metric, top=6, ablate=True)
    assert len(result.nodes) == 6
    eps = 1e-3
    for node in result.nodes:
        # d/de m(latent scaled by 1 + e at every position) at e = 0 is exactly sum_t f_t dm/df_t: the attribution
        values = []
        for s in (1 + eps, 1 - eps):
            with torch.no_grad(), intervene(site, [scale_latent(node.latent, s)]):
                values.append(float(metric()))
        fd = (values[0] - values[1]) / (2 * eps)
        assert node.attribution == pytest.approx(fd, rel=2e-3, abs=1e-6)
        assert node.ablation is not None and node.ablation == node.ablation  # measured, finite
    # the largest ones are ranked first
    assert [abs(n.attribution) for n in result.nodes] == sorted(
        (abs(n.attribution) for n in result.nodes), reverse=True
    )


def test_edges_between_two_transformer_layers(tmp_path, tiny_gpt2_dir, gpt2_run):
    second = load_run(write_run(tmp_path / "run1", tiny_gpt2_dir, hook="transformer.h.1", seed=3))
    model, tok = gpt2_run.model, gpt2_run.tokenizer
    enc = tok("the cat sat on the", return_tensors="pt")

    def metric() -> torch.Tensor:
        return model(**enc).logits[0, -1, tok.convert_tokens_to_ids("mat")]

    sites = [site_of_run(gpt2_run), site_of_run(second, model)]
    result = attribute(sites, metric, top=5, edge_top=5, ablate=False)
    assert result.sites == ["transformer.h.0", "transformer.h.1"]
    assert result.edges and all(e.source_site == "transformer.h.0" for e in result.edges)
    assert any(e.weight != 0 for e in result.edges)
    with pytest.raises(DataError, match="same point"):
        attribute([sites[0], sites[0]], metric)
