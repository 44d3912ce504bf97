"""Peak memory of training from a streamed Parquet corpus: a large corpus and budget against a small one.

    python bench/corpus_memory.py [--small 1M] [--large 10M] [--hidden 64] [--data bench/data]

Writes two Parquet corpora of distinct documents into bench/data/ (``--small`` and ``--large`` tokens for MiniLM's
tokenizer; each document is a few sentences of the embedded corpus drawn at random, with a number, so no two are
equal), and a small random BERT built from a config (``--hidden`` wide, 2 layers, MiniLM's tokenizer: the model
forward is what is slow here, and it does not change what the corpus layer keeps in memory). Then, each in a fresh
process with an empty token folder and no activation cache, `sparsecode train` on the small corpus for ``--small``
tokens and on the large one for ``--large`` tokens (an SAE of 4 × width latents, k 16), and prints each process's
peak RSS (getrusage of the child) and the ratio. The tokenizing pass, the model forward and training are all
inside the measured process.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"


def _sentences() -> list[str]:
    from sparsecode.sources.corpus_default import default_documents

    out: list[str] = []
    for doc in default_documents():
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", doc.replace("\n", " ")) if len(s.strip()) > 20)
    return out


def write_corpus(path: Path, tokens: int, sentences: list[str]) -> int:
    """A Parquet file of distinct documents holding at least ``tokens`` MiniLM tokens (about 1.3 per word)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(tokens)
    most = max(1, min(12, tokens // 2000))  # sentences per document (tiny corpora still get dozens of documents)
    docs, words = [], 0
    while words * 1.3 < tokens * 1.02:
        doc = f"Note {len(docs)}. " + " ".join(rng.choice(sentences) for _ in range(rng.randint(1, most)))
        docs.append(doc)
        words += len(doc.split())
    pq.write_table(pa.table({"text": docs}), path, row_group_size=2048)
    return len(docs)


def write_model(path: Path, hidden: int) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sparsecode.sources.embedded import default_model_path

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden)
    BertModel(cfg).eval().save_pretrained(str(path))
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(str(path))


def measure(model: Path, corpus: Path, tokens: int, hidden: int) -> tuple[float, float, str]:
    """(peak RSS in MiB, seconds, the epochs line) of one training process."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SPARSECODE_TOKENS": f"{tmp}/tokens", "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "sparsecode", "train", "--model", str(model), "--hook", "encoder.layer.1"]
        cmd += ["--corpus", str(corpus), "--tokens", str(tokens), "--latents", str(4 * hidden), "--k", "16"]
        cmd += ["--batch-size", str(min(4096, tokens)), "--out", f"{tmp}/run", "--no-cache", "--quiet"]
        t0 = time.perf_counter()
        with open(f"{tmp}/stderr", "w+") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (its peak RSS)
            proc.returncode = os.waitstatus_to_exitcode(status)
            seconds = time.perf_counter() - t0
            err.seek(0)
            messages = err.read()
    if proc.returncode:
        sys.exit(f"train failed: {messages.strip()}")
    epochs = next((line for line in messages.splitlines() if "epochs" in line), "")
    return usage.ru_maxrss / 1024, seconds, epochs


def main() -> None:
    from sparsecode.cli import parse_count

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=parse_count, default=1_000_000)
    p.add_argument("--large", type=parse_count, default=10_000_000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--data", type=Path, default=DATA, help="where the corpora and the model go (default bench/data)")
    a = p.parse_args()
    a.data.mkdir(exist_ok=True)
    model = a.data / f"tiny-bert-{a.hidden}"
    if not (model / "config.json").exists():
        write_model(model, a.hidden)
    sentences = _sentences()
    peaks = {}
    for tokens in (a.small, a.large):
        corpus = a.data / f"corpus-{tokens}.parquet"
        if not corpus.exists():
            n = write_corpus(corpus, tokens, sentences)
            print(f"wrote {corpus}: {n:,} documents, {corpus.stat().st_size / 2**20:.1f} MiB")
        peak, seconds, epochs = measure(model, corpus, tokens, a.hidden)
        peaks[tokens] = peak
        print(f"corpus {corpus.name}, train --tokens {tokens:,}: peak RSS {peak:,.0f} MiB, {seconds:,.0f} s; {epochs}")
    ratio = peaks[a.large] / peaks[a.small]
    print(f"peak RSS {a.large:,} / {a.small:,} tokens: {ratio:.3f}")


if __name__ == "__main__":
    main()
