"""A tiny run folder whose SAE has features with known answers, for the feature database and dashboard tests.

The hook is BERT's word-embedding output, so a token's activation depends on the token alone, and:
  latent 0 fires (activation 1) exactly on the added token SCRIPT_TOKEN ("<script>alert(1)</script>"),
  latent 1 fires exactly on " apples", latent 2 never fires, latent 3 fires 0.5 on every token,
  latents 4..7 are random directions (continuous activations, many firings).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

SCRIPT_TOKEN = "<script>alert(1)</script>"
APPLES, SCRIPT, DEAD, DENSE = 1, 0, 2, 3
N_LATENTS = 8


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = []
    for i in range(40):
        if i % 5 == 0:
            paragraphs.append(f"Never trust {SCRIPT_TOKEN} inside page number {i} of the manual.")
        elif i % 3 == 0:
            paragraphs.append(f"In {1990 + i} there were {i * 7} apples and {i} oranges on table {i}.")
        else:
            paragraphs.append(f"Paragraph {i} says that sparse features of layer {i % 4} are linear and rare.")
    (folder / "corpus.txt").write_text("\n\n".join(paragraphs) + "\n")
    return folder


def write_model(src: Path, dst: Path) -> Path:
    """The tiny BERT plus one added (non-special) token whose text is an HTML script element."""
    from transformers import AutoTokenizer, BertModel

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(str(dst))
    tok.add_tokens([SCRIPT_TOKEN])
    model = BertModel.from_pretrained(str(dst))
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():  # a typical-sized embedding of its own (std 0.02, as BERT initialises the others)
        model.get_input_embeddings().weight[-1] = (
            torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 0.02
        )
    model.save_pretrained(str(dst))
    tok.save_pretrained(str(dst))
    return dst


def detector(embedding: torch.Tensor, token_id: int, scale: float = 4.0) -> tuple[torch.Tensor, float]:
    """An encoder column and bias firing with activation 1 on ``token_id``'s embedding, (almost surely) 0 elsewhere."""
    e = embedding[token_id]
    return e / e.pow(2).sum() * scale, 1.0 - scale


def write_planted_run(run_dir: Path, model_dir: Path, corpus_dir: Path) -> Path:
    from transformers import AutoTokenizer, BertModel

    from sparsecode.run import RunConfig
    from sparsecode.sae import ReLUConfig, build_sae
    from sparsecode.sources import ModelSourceConfig

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    emb = BertModel.from_pretrained(str(model_dir)).get_input_embeddings().weight.detach()  # (vocab, 32)
    script_id = tok.convert_tokens_to_ids(SCRIPT_TOKEN)
    apples_id = tok.convert_tokens_to_ids("apples")
    sae = build_sae(ReLUConfig(d_in=emb.shape[1], n_latents=N_LATENTS))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc.copy_(torch.randn(emb.shape[1], N_LATENTS, generator=g) * 20)
        sae.b_enc.zero_()
        for latent, tid in ((SCRIPT, script_id), (APPLES, apples_id)):
            col, bias = detector(emb, tid)
            sae.W_enc[:, latent], sae.b_enc[latent] = col, bias
            sae.W_dec[latent] = emb[tid] / emb[tid].norm()
        sae.W_enc[:, DEAD], sae.b_enc[DEAD] = 0.0, -1.0
        sae.W_enc[:, DENSE], sae.b_enc[DENSE] = 0.0, 0.5
    source = ModelSourceConfig(
        model=str(model_dir),
        hook="embeddings.word_embeddings",
        corpus=[str(corpus_dir)],
        eval_every=2,
        max_length=24,
        batch_size=4,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    RunConfig(source=source, sae=sae.cfg).save(run_dir)
    sae.save(run_dir / "sae.safetensors")
    return run_dir
