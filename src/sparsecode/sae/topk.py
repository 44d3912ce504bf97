"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per row; AuxK revives dead latents."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import SAEConfig, SparseAutoencoder, TrainOutput, total_variance
from .common import auxk_loss, residual_fvu
from .cpu_screen import EncoderScreen
from .sparse import (
    SparsePattern,
    chunked_topk,
    exact_topk,
    gathered_pre_acts,
    gemm_dtype,
    screen_applies,
    screened_topk_rows,
    sparse_decode,
    sparse_fvu,
)


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    """Active latents per row."""
    auxk_alpha: float = 1 / 32
    """Weight of the auxiliary loss that trains dead latents to model the residual."""
    k_aux: int | None = None
    """Dead latents used by the auxiliary loss; None means d_in // 2."""

    arch = "topk"
    base_lr = 4.8e-3  # best of a 1-32x sweep on MiniLM at 0.5M and 2M tokens (bench/results/lr_sweep.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"sae.k must be between 1 and n_latents={self.n_latents}, got {self.k}")
        if self.auxk_alpha < 0:
            raise ConfigError(f"sae.auxk_alpha must be >= 0, got {self.auxk_alpha}")
        if self.k_aux is not None and not 1 <= self.k_aux <= self.n_latents:
            raise ConfigError(f"sae.k_aux must be between 1 and n_latents={self.n_latents}, got {self.k_aux}")


class TopKSAE(SparseAutoencoder):
    config_class = TopKConfig
    cfg: TopKConfig

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, n_latents) pre-activations -> values, indices of the top k, each (n, k); values ReLU'd."""
        values, indices = exact_topk(pre, self.cfg.k)
        return values.relu(), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = self.select(self.pre_acts(x))
        return torch.zeros(x.shape[0], self.cfg.n_latents, dtype=values.dtype, device=values.device).scatter_(
            -1, indices, values
        )

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Decode from (n, k) values and indices without building the dense latent matrix."""
        # prefixes of (n, k) selections (multi-budget, Matryoshka) arrive as strided views
        pattern = SparsePattern(indices.contiguous(), self.cfg.n_latents)
        return sparse_decode(values.contiguous(), pattern, self.W_dec) + self.b_dec

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        """One dense product (the encoder forward); everything after it works on the k selected latents
        (see ``sparse.py``), with the same values and gradients as the dense formulation."""
        target = x if target is None else target
        auxk = self._auxk_selector(dead_mask, x.shape[1])
        top_pre, indices = self._winners(x, self.cfg.k, auxk)  # (n, k) each
        with torch.autocast(x.device.type, enabled=False):  # the sparse rest in full precision
            return self._sparse_loss(x, target, top_pre, indices, auxk)

    def _winners(self, x: torch.Tensor, k: int, auxk: _DeadTopK | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` pre-activations of every row and their latents, each (n, k), without gradient: the step's
        one dense product, block by block into the reused scratch block (sparse AuxK sees every block too). Where
        the CPU runs bfloat16 products fast, the product is bfloat16 and the winners are rescored exactly
        (``cpu_screen``): the same winners and values; sparse AuxK then takes a float32 product over the dead
        latents' columns only."""
        if screen_applies(x, self.W_enc, k):
            screen = self.__dict__.setdefault("_screen", EncoderScreen())  # plain attribute: reused buffers
            winners = screened_topk_rows(x, self.W_enc, self.b_enc, self.b_dec, k, screen, self._block_rows(x))
            if auxk and not auxk.dense:
                with torch.no_grad():
                    auxk.see_dead_columns(x, self.W_enc, self.b_enc - self.b_dec @ self.W_enc)
            return winners
        block = self._pre_block(x)  # in the GEMM's dtype
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            bias = self.b_enc - self.b_dec @ self.W_enc  # (n_latents,)
            top_pre, indices = chunked_topk(
                x, self.W_enc, bias, k, buffer=block, extra=[auxk.see] if auxk and not auxk.dense else None
            )  # (n, k) each
            return top_pre.to(x.dtype), indices

    def _sparse_loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        top_pre: torch.Tensor,
        indices: torch.Tensor,
        auxk: _DeadTopK | None,
        keep: torch.Tensor | None = None,
    ) -> TrainOutput:
        """Loss from the (n, k) winners; ``keep`` (n, k) bool drops some of them (BatchTopK's batch ranking)."""
        n_latents = self.cfg.n_latents
        top_pre, indices = self._order_winners(top_pre, indices)
        pattern = SparsePattern(indices, n_latents)
        values = gathered_pre_acts(top_pre, x, self.W_enc, self.b_enc, self.b_dec, pattern).relu()  # (n, k)
        if keep is not None:
            values = values * keep
        loss, x_hat, metrics = self._reconstruction_loss(values, pattern, target)

        if auxk:
            # Only dead latents compete: model the residual the live latents leave.
            residual = (target - x_hat).detach()
            if auxk.dense:
                aux_loss = auxk.dense_loss(x, self.W_enc, self.b_enc, self.b_dec, self.W_dec, residual)
            else:
                aux_pattern = SparsePattern(auxk.indices, n_latents)
                aux_values = gathered_pre_acts(
                    auxk.values.to(x.dtype), x, self.W_enc, self.b_enc, self.b_dec, aux_pattern
                ).relu()
                aux_loss = auxk_loss(aux_values, auxk.indices, self.W_dec, residual)
            loss = loss + self.cfg.auxk_alpha * aux_loss
            metrics["auxk_loss"] = aux_loss.detach()

        active = (values > 0).detach()  # (n, k)
        fired = (
            torch.zeros(n_latents, dtype=torch.uint8, device=x.device)
            .scatter_reduce_(0, pattern.flat, active.view(-1).to(torch.uint8), "amax")
            .bool()
        )  # from the k winners only
        metrics["l0"] = active.sum() / x.shape[0]
        return TrainOutput(loss=loss, x_hat=x_hat, fired=fired, metrics=metrics)

    def _order_winners(self, top_pre: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (n, k) winners in the order the loss needs (any order here; largest first for multi-budget)."""
        return top_pre, indices

    def _reconstruction_loss(
        self, values: torch.Tensor, pattern: SparsePattern, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Loss, (n, d_out) reconstruction and metrics from the (n, k) ReLU'd winners; nested dictionaries
        (Matryoshka, multi-budget) override it to add their partial reconstructions."""
        fvu, x_hat = sparse_fvu(values, pattern, self.W_dec, self.b_dec, target)  # x_hat (n, d_out)
        return fvu, x_hat, {"fvu": fvu.detach()}

    def _masked_fvus(
        self, values: torch.Tensor, pattern: SparsePattern, target: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The FVU of each partial reconstruction keeping ``values * mask`` on the shared pattern (None: all of
        them), and the last reconstruction (n, d_out). Nested dictionaries build their losses from these."""
        variance = total_variance(target)
        losses = []
        for mask in masks:
            x_hat = sparse_decode(values if mask is None else values * mask, pattern, self.W_dec) + self.b_dec
            losses.append(F.mse_loss(x_hat, target, reduction="sum") / variance)
        return losses, x_hat

    def _auxk_selector(self, dead_mask: torch.Tensor | None, d_in: int) -> _DeadTopK | None:
        if dead_mask is None or self.cfg.auxk_alpha <= 0 or not bool(dead_mask.any()):
            return None
        dead = dead_mask.nonzero().squeeze(1)  # (n_dead,)
        return _DeadTopK(dead, min(self.cfg.k_aux or d_in // 2, len(dead)))

    def train(self, mode: bool = True) -> TopKSAE:
        if not mode:
            self.__dict__.pop("_scratch", None)  # the training scratch buffers are not needed for inference
            self.__dict__.pop("_screen", None)
        return super().train(mode)

    def _block_rows(self, x: torch.Tensor) -> int:
        """Rows per encoder product (``PRE_BLOCK_ELEMENTS`` bounds its scratch)."""
        return max(1, min(x.shape[0], PRE_BLOCK_ELEMENTS // self.cfg.n_latents))

    def _pre_block(self, x: torch.Tensor) -> torch.Tensor:
        """A reused (rows, n_latents) scratch block for pre-activations: allocated once, not every step
        (fresh multi-megabyte buffers cost page faults on every step)."""
        rows = self._block_rows(x)
        dtype = gemm_dtype(x)
        block = self.__dict__.get("_scratch")
        if block is None or block.shape[0] < rows or block.dtype != dtype or block.device != x.device:
            block = torch.empty(rows, self.cfg.n_latents, dtype=dtype, device=x.device)
            self.__dict__["_scratch"] = block  # plain attribute: not a parameter, not saved
        return block[:rows]


PRE_BLOCK_ELEMENTS = 4096 * 6144
"""Pre-activations computed per block of rows (elements, 96 MiB in fp32): bounds the scratch memory for
any batch size. Measured on a 2-core CPU at d=384, m=6144: blocks of 4096 rows beat 1024 by ~20% and 256
by ~2x (small GEMMs run far below peak), so the block is as big as this memory budget allows."""


DENSE_AUXK_RATIO = 12
"""AuxK runs as dense products over the dead latents' columns when there are at most this many dead latents per
chosen one (k_aux): five (n, d) × (d, n_dead) products then cost less than gathering k_aux decoder and encoder
rows per row four times. ``python bench/train_step.py --dead-fraction F`` times the step both ways."""


class _DeadTopK:
    """The dead latents for AuxK, and how their top ``k_aux`` are found: collected block by block from the encoder
    product (sparse AuxK), or, when ``dense``, chosen inside ``dense_loss``."""

    def __init__(self, dead: torch.Tensor, k_aux: int) -> None:
        self.dead = dead  # (n_dead,)
        self.k_aux = k_aux
        self.dense = len(dead) <= DENSE_AUXK_RATIO * k_aux
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def dense_loss(
        self,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        W_dec: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """``auxk_loss`` of the dead latents' top ``k_aux`` per row, by dense products over their columns only."""
        enc = W_enc.T.index_select(0, self.dead).T  # (d, n_dead), latent-major like W_enc (so is its gradient)
        bias = b_enc.index_select(0, self.dead) - b_dec @ enc  # (n_dead,)
        pre = torch.addmm(bias, x, enc)  # (n, n_dead): (x − b_dec) W_enc + b_enc at the dead columns
        with torch.no_grad():
            chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(
                -1, pre.topk(self.k_aux, dim=-1, sorted=False).indices, True
            )  # (n, n_dead)
        err_hat = (pre.relu() * chosen) @ W_dec.index_select(0, self.dead)  # (n, d_out)
        return residual_fvu(err_hat, residual)

    def see(self, start: int, pre: torch.Tensor, pending_bias: torch.Tensor | None) -> None:
        dead_pre = pre.index_select(1, self.dead)  # (rows, n_dead)
        if pending_bias is not None:
            dead_pre += pending_bias[self.dead]
        values, local = dead_pre.topk(self.k_aux, dim=-1, sorted=False)
        self._parts.append((values, self.dead[local]))

    def see_dead_columns(self, x: torch.Tensor, W_enc: torch.Tensor, bias: torch.Tensor) -> None:
        """All rows at once from a float32 product over the dead latents' columns only, ``x @ W_enc[:, dead] +
        bias[dead]``, in row blocks of at most ``PRE_BLOCK_ELEMENTS``."""
        dead_weights = W_enc.T.index_select(0, self.dead)  # (n_dead, d): rows of the latent-major encoder
        dead_bias = bias.index_select(0, self.dead)  # (n_dead,)
        rows = max(1, PRE_BLOCK_ELEMENTS // len(self.dead))
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
