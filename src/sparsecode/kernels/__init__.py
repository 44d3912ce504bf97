"""The CPU kernels of the sparse training step, and the one place that picks between them.

One entry point per operation; each chooses between the compiled (numba) kernels, the bfloat16 screen and plain
torch per the one setting ``SPARSECODE_KERNELS`` (``backend``: auto | compiled | screen | torch):

- ``encoder_topk``: the TopK encoder's top k per row, the step's one dense product (``topk``; compiled selection
  ``topk_rows``, bfloat16 screen ``screen``), with ``exact_topk`` for a dense block of pre-activations;
- ``DeadLatents``: AuxK's dead latents, their top k_aux and reconstruction of the residual (``auxk``);
- ``sparse_decode``, ``gathered_pre_acts``, ``SparsePattern``: the decoder and the encoder's backward on the k
  selected latents only (``sparse``; the pattern's latent order by a compiled counting sort, ``rows``);
- ``sparse_fvu``: the reconstruction's FVU with its gradients in one compiled pass (``fvu_pass``);
- ``project_out_rows_``: a unit-norm decoder's gradient projection (``rows``);
- ``adam_unit_rows_``: Adam's step of a unit-norm decoder with the projection and the rescaling (``adam``).

``reference`` holds plain-torch TopK, AuxK, Matryoshka and multi-budget losses that the fast paths are tested
against. With ``NUMBA_DISABLE_JIT=1`` the compiled kernels run as Python (``runtime``), so a debugger can step
through them.
"""

from __future__ import annotations

from . import reference
from .adam import MIN_NORM, adam_unit_rows_
from .auxk import DeadLatents
from .backend import BACKENDS, compiled_for, current, use
from .rows import project_out_rows_
from .sparse import SparsePattern, gathered_pre_acts, sparse_decode, sparse_fvu
from .topk import EncoderScratch, encoder_topk, exact_topk, gemm_dtype

__all__ = [
    "BACKENDS",
    "MIN_NORM",
    "DeadLatents",
    "EncoderScratch",
    "SparsePattern",
    "adam_unit_rows_",
    "compiled_for",
    "current",
    "encoder_topk",
    "exact_topk",
    "gathered_pre_acts",
    "gemm_dtype",
    "project_out_rows_",
    "reference",
    "sparse_decode",
    "sparse_fvu",
    "use",
]
