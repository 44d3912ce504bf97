"""AuxK's dead latents (Gao et al. 2024): their top ``k_aux`` per row and the reconstruction of the residual they
make, either by dense products over the dead latents' columns or sparsely from the encoder product's blocks."""

from __future__ import annotations

import torch

from . import topk
from .sparse import SparsePattern, gathered_pre_acts, sparse_decode

DENSE_AUXK_RATIO = 12
"""AuxK runs as dense products over the dead latents' columns when there are at most this many dead latents per
chosen one (k_aux): five (n, d) × (d, n_dead) products then cost less than gathering k_aux decoder and encoder
rows per row four times. ``python bench/train_step.py --dead-fraction F`` times the step both ways."""


class DeadLatents:
    """The dead latents for AuxK, and how their top ``k_aux`` are found: collected block by block from the encoder
    product (sparse AuxK, ``topk.encoder_topk(..., dead=...)``), or, when ``dense``, chosen inside
    ``reconstruction``."""

    def __init__(self, dead: torch.Tensor, k_aux: int) -> None:
        self.dead = dead  # (n_dead,)
        self.k_aux = k_aux
        self.dense = len(dead) <= DENSE_AUXK_RATIO * k_aux
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reconstruction(
        self, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor, W_dec: torch.Tensor
    ) -> torch.Tensor:
        """(n, d_out) Σ over each row's top ``k_aux`` dead latents of relu(pre-activation) · decoder row,
        differentiable in the weights (the AuxK loss compares it with the residual)."""
        if self.dense:
            return self._dense_reconstruction(x, W_enc, b_enc, b_dec, W_dec)
        pattern = SparsePattern(self.indices, W_dec.shape[0])
        values = gathered_pre_acts(self.values.to(x.dtype), x, W_enc, b_enc, b_dec, pattern).relu()  # (n, k_aux)
        return sparse_decode(values, pattern, W_dec)

    def _dense_reconstruction(
        self, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor, W_dec: torch.Tensor
    ) -> torch.Tensor:
        enc = W_enc.T.index_select(0, self.dead).T  # (d, n_dead), latent-major like W_enc (so is its gradient)
        bias = b_enc.index_select(0, self.dead) - b_dec @ enc  # (n_dead,)
        pre = torch.addmm(bias, x, enc)  # (n, n_dead): (x − b_dec) W_enc + b_enc at the dead columns
        with torch.no_grad():
            chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(
                -1, pre.topk(self.k_aux, dim=-1, sorted=False).indices, True
            )  # (n, n_dead)
        return (pre.relu() * chosen) @ W_dec.index_select(0, self.dead)  # (n, d_out)

    def see(self, start: int, pre: torch.Tensor, pending_bias: torch.Tensor | None) -> None:
        """Take the dead latents' top k_aux of a block of pre-activations (``pending_bias``: still to add, or None)."""
        dead_pre = pre.index_select(1, self.dead)  # (rows, n_dead)
        if pending_bias is not None:
            dead_pre += pending_bias[self.dead]
        values, local = dead_pre.topk(self.k_aux, dim=-1, sorted=False)
        self._parts.append((values, self.dead[local]))

    def see_dead_columns(self, x: torch.Tensor, W_enc: torch.Tensor, bias: torch.Tensor) -> None:
        """All rows at once from a float32 product over the dead latents' columns only, ``x @ W_enc[:, dead] +
        bias[dead]``, in row blocks of at most ``topk.PRE_BLOCK_ELEMENTS``."""
        dead_weights = W_enc.T.index_select(0, self.dead)  # (n_dead, d): rows of the latent-major encoder
        dead_bias = bias.index_select(0, self.dead)  # (n_dead,)
        rows = max(1, topk.PRE_BLOCK_ELEMENTS // len(self.dead))
        for start in range(0, x.shape[0], rows):
            dead_pre = torch.addmm(dead_bias, x[start : start + rows], dead_weights.T)  # (rows, n_dead)
            values, local = dead_pre.topk(self.k_aux, dim=-1, sorted=False)
            self._parts.append((values, self.dead[local]))

    @property
    def values(self) -> torch.Tensor:
        """(n, k_aux) pre-activations of the selected dead latents."""
        return torch.cat([v for v, _ in self._parts])

    @property
    def indices(self) -> torch.Tensor:
        """(n, k_aux) their latent indices."""
        return torch.cat([i for _, i in self._parts])
