"""Transcoder (Dunefsky et al. 2024; Paulo et al. 2025): a sparse dictionary that reads the input of a
module (say, an MLP) and predicts its output. TopK latents; an optional linear skip connection x @ W_skip
carries the part of the map that is linear, so the latents model the rest.

    pre   = x @ W_enc + b_enc                          # (n, n_latents), no input centring
    f     = topk(pre)                                  # (n, n_latents)
    y_hat = f @ W_dec + b_dec  [+ x @ W_skip]          # (n, d_out)

Trained without paired targets it reconstructs its input, like an SAE (d_out = d_in).

Transcoders imported from other libraries may use a ReLU or JumpReLU activation instead of TopK (``activation``);
those are for inference (eval, features, serve): training them is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import TrainOutput
from .common import fvu, topk_train_output
from .topk import TopKConfig, TopKSAE


@dataclass
class TranscoderConfig(TopKConfig):
    d_out: int | None = None
    """Width of the target activations; None means d_in."""
    skip: bool = False
    """Add a linear skip connection x @ W_skip (initialised to zero) to the prediction."""
    activation: str = "topk"
    """"topk" (keep the k largest pre-activations, ReLU'd), or, for imported transcoders only, "relu" or "jumprelu"
    (pre · H(pre − θ) with a per-latent threshold θ); ``k`` is unused by the last two."""

    arch = "transcoder"

    @property
    def plain_topk(self) -> bool:
        return False  # a transcoder, not an SAE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"sae.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        if self.d_out < 1:
            raise ConfigError(f"sae.d_out must be >= 1, got {self.d_out}")


ACTIVATIONS = ("topk", "relu", "jumprelu")


class Transcoder(TopKSAE):
    config_class = TranscoderConfig
    cfg: TranscoderConfig

    def __init__(self, cfg: TranscoderConfig) -> None:
        super().__init__(cfg)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        W_dec = torch.randn(cfg.n_latents, cfg.d_out, generator=g)
        self.W_dec = torch.nn.Parameter(W_dec / W_dec.norm(dim=1, keepdim=True))  # (n_latents, d_out)
        if cfg.d_out != cfg.d_in:  # else keep the base init: encoder = decoder transpose, as for SAEs
            W_enc = torch.randn(cfg.d_in, cfg.n_latents, generator=g)
            self.W_enc = torch.nn.Parameter(W_enc / W_enc.norm(dim=0, keepdim=True))  # (d_in, n_latents)
        else:
            self.W_enc = torch.nn.Parameter(self.W_dec.detach().T.clone())
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_out))
        if cfg.skip:
            self.W_skip = torch.nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out))
        if cfg.activation == "jumprelu":
            self.register_buffer("threshold", torch.zeros(cfg.n_latents))  # (n_latents,)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.activation == "topk":
            return super().encode(x)
        pre = self.pre_acts(x)  # (n, n_latents)
        if self.cfg.activation == "relu":
            return pre.relu()
        return pre.relu() * (pre > self.threshold)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_enc + self.b_enc

    def reconstruct(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        y_hat = self.decode(latents)  # (n, d_out)
        return y_hat + x @ self.W_skip if self.cfg.skip else y_hat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_in) -> (n, d_out) prediction of the target."""
        return self.reconstruct(x, self.encode(x))

    def training_output(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None, progress: float, target: torch.Tensor | None = None
    ) -> TrainOutput:
        if self.cfg.activation != "topk":
            raise ConfigError(
                f"a transcoder with activation {self.cfg.activation!r} is for inference (imported); train with 'topk'"
            )
        y = x if target is None else target  # (n, d_out)
        if y.shape[1] != self.cfg.d_out:
            raise ConfigError(f"the transcoder predicts width d_out={self.cfg.d_out}, the targets have {y.shape[1]}")
        pre = self.pre_acts(x)  # (n, n_latents)
        values, indices = self.select(pre)  # (n, k)
        y_hat = self.decode_sparse(values, indices)  # (n, d_out)
        if self.cfg.skip:
            y_hat = y_hat + x @ self.W_skip
        loss = fvu(y_hat, y)
        metrics = {"fvu": loss.detach()}
        return topk_train_output(
            self,
            pre=pre,
            values=values,
            indices=indices,
            target=y,
            x_hat=y_hat,
            loss=loss,
            metrics=metrics,
            dead_mask=dead_mask,
        )

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Make a transcoder trained on (``scale`` · x → ``target_scale`` · y) map raw x to raw y: every output
        divides by target_scale, and the latents with it (decoder rows keep unit norm)."""
        ts = scale if target_scale is None else target_scale
        self.W_enc *= scale / ts
        self.b_enc /= ts
        self.b_dec /= ts
        if self.cfg.activation == "jumprelu":
            self.threshold /= ts
        if self.cfg.skip:
            self.W_skip *= scale / ts
