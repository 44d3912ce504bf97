"""Which features drove a prediction: attribution patching (activation × gradient) at one or several dictionaries,
the exact ablation effect of the top ones beside it, and edges between the features of adjacent dictionaries
(Marks et al., "Sparse Feature Circuits").

For a scalar metric m of one forward pass (a target token's log-probability, or a logit difference), every
dictionary site is spliced in exactly: its write point y becomes y + z @ W_dec with z a zero tensor that
requires a gradient, so the forward pass is unchanged in value and ∂m/∂z = ∂m/∂f is the gradient of m with
respect to each latent f at each position (all other latents and the dictionary's error held fixed). Then

- a latent's **attribution** is Σ_positions f · ∂m/∂f: the first-order estimate of m(clean) − m(latent zeroed
  at every position), the "attribution patching" estimate; exact when m is linear in the latent;
- its **ablation effect** is that difference measured (one forward pass with the latent zeroed, error added
  back), so the reader sees how good the linear estimate is;
- an **error node** per site, Σ (y − ŷ) · ∂m/∂y, says how much of the metric runs through what the
  dictionary does not reconstruct;
- an **edge** from latent u of an upstream site to latent d of the next site downstream is
  Σ_positions (∂m/∂d) · (∂d/∂u) · u: the part of d's attribution that flows through u. ∂d/∂u is taken
  through the model between the two sites and through the downstream encoder's active latents (d = pre_d · 1[d
  active]), so it is exact where the active set does not change.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import DataError
from ..hooks import intercept
from .edit import intervene, zero_latent
from .sites import Site

Metric = Callable[[], torch.Tensor]
"""Runs the model once and returns the scalar metric (a 0-dim tensor)."""

NO_EDGE_ARCHS = ("gated", "matching_pursuit")
"""Dictionaries whose latents are not the encoder's pre-activations on their active set: node attribution works
(decoding is linear), edges into them do not."""


@dataclass
class Node:
    """One latent of one site, scored."""

    site: str
    latent: int
    attribution: float
    """Σ over positions of activation × gradient: the estimated drop of the metric if the latent were zeroed."""
    activation: float
    """Its summed activation over the positions."""
    position: int
    """The position where its attribution is largest in size."""
    ablation: float | None = None
    """The measured drop m(clean) − m(latent zeroed everywhere), when computed."""


@dataclass
class Edge:
    source_site: str
    source: int
    target_site: str
    target: int
    weight: float
    """The part of the target's attribution that flows through the source latent."""


@dataclass
class Attribution:
    metric: float
    """The metric on the clean forward pass."""
    nodes: list[Node]
    """The top latents of every site by |attribution|, largest first."""
    errors: dict[str, float]
    """Per site, the attribution of the dictionary's error term."""
    edges: list[Edge] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    """Site names in forward order."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Probe:
    """The state kept at one site during the differentiable forward pass."""

    def __init__(self, site: Site, with_input_grad: bool) -> None:
        self.site = site
        self.with_input_grad = with_input_grad
        self.x: torch.Tensor | None = None  # the read point's activations
        self.f: torch.Tensor | None = None  # (B, T, n_latents) latents, no gradient
        self.f_diff: torch.Tensor | None = None  # the same as a differentiable function of x (edges)
        self.z: torch.Tensor | None = None  # (B, T, n_latents) zero leaf: its gradient is ∂m/∂f
        self.y_new: torch.Tensor | None = None  # the write point's new value (retains its gradient)
        self.error: torch.Tensor | None = None  # (B, T, d_out) y − ŷ
        self.order: int = -1

    def on_read(self, x: torch.Tensor) -> None:
        self.x = x

    def on_write(self, y: torch.Tensor, counter: list[int]) -> torch.Tensor:
        if self.z is not None:
            raise DataError(f"{self.site.name}: the hooked module ran twice in one forward pass; hook another one")
        self.order = counter[0]
        counter[0] += 1
        sae = self.site.sae
        x = y if self.site.read is self.site.write else self.x
        if x is None:
            raise DataError(f"{self.site.name}: the target point ran before the point the transcoder reads")
        xf = x.float()  # (B, T, d_in)
        with torch.no_grad():
            f = sae.encode(xf.detach().flatten(0, 1))  # (B*T, n_latents)
            y_hat = sae.reconstruct(xf.detach().flatten(0, 1), f)  # (B*T, d_out)
        self.f = f.reshape(*x.shape[:2], -1)
        self.error = (y.detach().float() - y_hat.reshape(y.shape)).detach()
        if self.with_input_grad and xf.requires_grad:
            pre = sae.pre_acts(xf.flatten(0, 1)).reshape(self.f.shape)  # (B, T, n_latents)
            self.f_diff = pre * (self.f != 0)
        self.z = torch.zeros_like(self.f, requires_grad=True)
        y_new = y + (self.z @ sae.W_dec).to(y.dtype)  # value: y + 0, exactly
        y_new.retain_grad()
        self.y_new = y_new
        return y_new


def _scores(probe: _Probe, top: int, mask: torch.Tensor | None) -> tuple[list[Node], float]:
    g = probe.z.grad  # (B, T, n_latents)
    contrib = (_masked(probe.f, mask) * g).flatten(0, 1)  # (B*T, n_latents)
    per_latent = contrib.sum(0)  # (n_latents,)
    k = min(top, int((per_latent != 0).sum()))
    nodes = []
    for latent in per_latent.abs().topk(k).indices.tolist():
        col = contrib[:, latent]
        nodes.append(
            Node(
                site=probe.site.name,
                latent=latent,
                attribution=float(per_latent[latent]),
                activation=float(_masked(probe.f, mask).flatten(0, 1)[:, latent].sum()),
                position=int(col.abs().argmax()) % probe.f.shape[1],
            )
        )
    error = float((_masked(probe.error, mask) * probe.y_new.grad.float()).sum())
    return nodes, error


def _masked(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, n) with the rows outside ``mask`` (B, T) zeroed."""
    return t if mask is None else t * mask.to(t.device)[..., None]


def attribute(
    sites: Sequence[Site],
    metric: Metric,
    *,
    top: int = 10,
    ablate: bool = True,
    edges: bool = True,
    edge_top: int = 10,
    positions: torch.Tensor | None = None,
) -> Attribution:
    """Attribute ``metric()`` to the latents of ``sites`` (several sites: also the edges between adjacent ones, in
    forward order). ``top`` latents per site are kept (and, with ``ablate``, each measured by ablation); edges
    run from the ``edge_top`` upstream to the ``edge_top`` downstream latents with the largest attributions.
    ``positions`` (batch, seq) bool limits latents, edges and ablations to those positions (None: all)."""
    if not sites:
        raise DataError("attribution needs at least one dictionary")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise DataError(f"two dictionaries sit at the same point ({', '.join(names)}); give each point once")
    counter = [0]
    probes = [_Probe(s, with_input_grad=edges and len(sites) > 1) for s in sites]
    with ExitStack() as stack, torch.enable_grad():
        for p in probes:
            if p.site.read is not p.site.write:
                stack.enter_context(intercept(p.site.read, p.on_read))
            stack.enter_context(intercept(p.site.write, lambda y, p=p: p.on_write(y, counter)))
        m = metric()
        if not isinstance(m, torch.Tensor) or m.dim() != 0:
            raise DataError("the attribution metric must be a scalar tensor")
        missing = [p.site.name for p in probes if p.z is None]
        if missing:
            raise DataError(f"{', '.join(missing)} never ran in the forward pass; hook a module the model runs")
        m.backward(retain_graph=True)
        probes.sort(key=lambda p: p.order)
        result = Attribution(metric=float(m.detach()), nodes=[], errors={}, sites=[p.site.name for p in probes])
        per_site: dict[str, list[Node]] = {}
        for p in probes:
            nodes, result.errors[p.site.name] = _scores(p, top, positions)
            per_site[p.site.name] = nodes
            result.nodes.extend(nodes)
        if edges:
            for up, down in itertools.pairwise(probes):
                nodes_up, nodes_down = per_site[up.site.name], per_site[down.site.name]
                result.edges.extend(_edges(up, down, nodes_up, nodes_down, edge_top, positions))
    if ablate:
        for node in result.nodes:
            site = next(s for s in sites if s.name == node.site)
            with torch.no_grad(), intervene(site, [zero_latent(node.latent)], positions=positions):
                node.ablation = result.metric - float(metric())
    result.nodes.sort(key=lambda n: -abs(n.attribution))
    return result


def _edges(
    up: _Probe, down: _Probe, up_nodes: list[Node], down_nodes: list[Node], k: int, mask: torch.Tensor | None
) -> list[Edge]:
    if down.site.sae.cfg.arch in NO_EDGE_ARCHS:
        raise DataError(
            f"{down.site.name}: edges into a {down.site.sae.cfg.arch} dictionary are not supported; "
            "attribute its nodes alone"
        )
    if down.f_diff is None:
        raise DataError(f"{down.site.name} does not depend on {up.site.name}; order the runs by layer")
    sources = [n.latent for n in up_nodes[:k]]
    out = []
    for node in down_nodes[:k]:
        j = node.latent
        s = _masked(down.z.grad * down.f_diff, mask)[..., j].sum()  # Σ_t (∂m/∂d_t) d_t, differentiable upstream
        if not s.requires_grad:
            continue
        (g,) = torch.autograd.grad(s, up.z, retain_graph=True, allow_unused=True)
        if g is None:
            continue
        weights = (g * _masked(up.f, mask)).flatten(0, 1).sum(0)  # (n_up,)
        out.extend(Edge(up.site.name, i, down.site.name, j, float(weights[i])) for i in sources)
    return out
