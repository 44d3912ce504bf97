"""Activation extraction in bfloat16 vs float32: tokens/s, and what the lower precision changes.

    python bench/bf16_forward.py [--model smollm2] [--hook model.layers.6] [--rows 8192] [--repeats 2] [--threads 1]

Runs the model source (`source.dtype`, `sparsecode train --model-dtype`) in float32 and in bfloat16 over the same
rows of the default corpus, interleaved, and reports side by side:
- tokens/s of activation extraction (the forward up to the hook, as training runs it);
- the FVU of the bfloat16 rows against the float32 ones (the error the precision adds, in the units SAE
  reconstructions are scored in: 1 - R² over the rows);
- for causal LMs, the model's next-token cross-entropy over the same chunks in each precision.
Also prints whether this CPU has AMX (lscpu flag amx_bf16) or AVX512-BF16, which decide how fast bfloat16 runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import sparsecode  # noqa: F401  (before torch: its OpenMP defaults apply only then)

# isort: split
import torch

from sparsecode.sources import ModelSourceConfig, open_source


def cpu_bf16_flags() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    return sorted({f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16")})


def extract(source, rows: int) -> tuple[torch.Tensor, float]:
    """The first ``rows`` train rows (float32) and the seconds it took."""
    start, parts, n = time.perf_counter(), [], 0
    for block in source.iter_batches("train"):
        parts.append(block.acts)
        n += len(block)
        if n >= rows:
            break
    return torch.cat(parts)[:rows], time.perf_counter() - start


@torch.inference_mode()
def cross_entropy(source, chunks: int) -> float:
    """Mean next-token loss of the whole model over the first ``chunks`` train chunks."""
    total, count = 0.0, 0
    ids_list = source.chunks("train")[:chunks]
    for i in range(0, len(ids_list), 8):
        enc = source.tokenize(ids_list[i : i + 8])
        logits = source.model(**enc, use_cache=False).logits.float()  # (B, T, vocab)
        labels = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask], labels[mask], reduction="sum")
        total, count = total + loss.item(), count + int(mask.sum())
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--hook", default="model.layers.6")
    ap.add_argument("--corpus", help="corpus (default: the embedded one)")
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ce-chunks", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sources = {
        dtype: open_source(ModelSourceConfig(model=a.model, hook=a.hook, corpus=a.corpus, dtype=dtype))
        for dtype in ("float32", "bfloat16")
    }
    for s in sources.values():
        extract(s, 64)  # load the weights, warm up
    times: dict[str, list[float]] = {d: [] for d in sources}
    rows: dict[str, torch.Tensor] = {}
    for _ in range(a.repeats):  # interleaved
        for dtype, s in sources.items():
            rows[dtype], seconds = extract(s, a.rows)
            times[dtype].append(seconds)
    ref, low = rows["float32"], rows["bfloat16"]
    fvu = (low - ref).pow(2).sum().item() / (ref - ref.mean(0)).pow(2).sum().item()
    flags = cpu_bf16_flags()
    print(
        f"{a.model} to {a.hook}, {a.rows:,} rows, {a.threads} thread(s), medians of {a.repeats} interleaved; "
        f"CPU bf16 flags: {', '.join(flags) or 'none'}; mkldnn {torch.backends.mkldnn.is_available()}"
    )
    rates = {d: a.rows / statistics.median(ts) for d, ts in times.items()}
    for dtype in sources:
        print(f"  {dtype:9s} {rates[dtype]:8,.0f} tokens/s")
    print(f"  bfloat16 / float32 speed: {rates['bfloat16'] / rates['float32']:.2f}x")
    print(f"  FVU of the bfloat16 rows against the float32 rows: {fvu:.5f}")
    if sources["float32"].is_causal_lm:
        ce = {d: cross_entropy(s, a.ce_chunks) for d, s in sources.items()}
        print(f"  next-token CE over {a.ce_chunks} chunks: float32 {ce['float32']:.4f}, bfloat16 {ce['bfloat16']:.4f}")


if __name__ == "__main__":
    main()
