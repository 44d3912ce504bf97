"""On-disk activation cache: a source wrapper that reuses a complete earlier pass instead of
re-running the model.

A pass over a split is written shard by shard into a temporary folder while it streams; only when the
pass completes is the folder renamed into place (atomic), so an interrupted pass leaves no partial
cache. Later passes — the next epoch of the same run, or another run with the same source config —
read the shards. The cache key is a hash of the source's config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..io import (
    load_tensors,
    new_file_mode,
    save_tensors,
    sweep_temporaries,
    temp_prefix,
    user_cache_dir,
    write_json,
)
from ..sources.base import ActivationBatch, Source, SourceBase

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$SPARSECODE_CACHE``, else ``$XDG_CACHE_HOME/sparsecode/activations``, else ``~/.cache/...``."""
    return user_cache_dir("SPARSECODE_CACHE", "activations")


def cache_key(source: Source) -> str:
    """A stable hash of what determines the activations: the source config (less the device) and, where the
    source offers one, its ``fingerprint()`` (e.g. the text and the model files, so an edited corpus or a
    replaced model never reads stale activations)."""
    cfg = dict(source.config.to_dict())
    cfg.pop("device", None)
    fingerprint = source.fingerprint()
    blob = json.dumps({"format": CACHE_FORMAT, "source": cfg, "fingerprint": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class CachedSource(SourceBase):
    """Wraps a source; same protocol; serves complete passes from disk. It declares no model or ground truth of
    its own (callers that need those use the wrapped ``inner`` source)."""

    def __init__(
        self,
        source: Source,
        cache_dir: str | Path,
        shard_rows: int = 65536,
        progress: bool = False,
        write: bool = True,
    ) -> None:
        self.inner = source
        self.progress = progress
        self.write = write
        """Record complete passes; False only reads passes recorded by another writer of the same key (several
        runs on one hook trained together: one of them writes)."""
        self.config = source.config
        self.root = Path(cache_dir) / cache_key(source)
        self.shard_rows = shard_rows

    @property
    def d_in(self) -> int:
        return self.inner.d_in

    @property
    def d_out(self) -> int | None:
        """Width of the paired targets, if the wrapped source yields them (transcoders)."""
        return self.inner.d_out

    def fingerprint(self) -> dict[str, Any] | None:
        return self.inner.fingerprint()

    def validate(self) -> None:
        self.inner.validate()

    def num_rows(self, split: str = "train") -> int | None:
        manifest = self._manifest(split)
        return manifest["rows"] if manifest else self.inner.num_rows(split)

    def is_cached(self, split: str) -> bool:
        return self._manifest(split) is not None

    def _manifest(self, split: str) -> dict | None:
        path = self.root / split / "manifest.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def iter_batches(self, split: str = "train", start_row: int = 0) -> Iterator[ActivationBatch]:
        manifest = self._manifest(split)
        if manifest is not None:
            yield from self._read(split, manifest, start_row)
        elif self.write and start_row == 0 and self.inner.num_rows(split) is not None:
            yield from self._write_through(split)
        else:
            yield from self.inner.iter_batches(split, start_row)

    def _read(self, split: str, manifest: dict, start_row: int) -> Iterator[ActivationBatch]:
        row = 0
        for name, n in zip(manifest["shards"], manifest["shard_rows"]):
            if row + n <= start_row:
                row += n
                continue
            t = load_tensors(self.root / split / name)
            block = ActivationBatch(**t)
            yield block.slice(max(0, start_row - row))
            row += n

    def _write_through(self, split: str) -> Iterator[ActivationBatch]:
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(self.root)  # passes cut short by a kill
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(f"{split}.partial"), dir=self.root))
        os.chmod(
            tmp, new_file_mode(directory=True)
        )  # mkdtemp's 0700 would hide the shared cache from the folder's other users
        pending: list[ActivationBatch] = []
        shards: list[str] = []
        shard_rows: list[int] = []

        def flush() -> None:
            if not pending:
                return
            merged = {k: torch.cat([b.tensors()[k] for b in pending]) for k in pending[0].tensors()}
            name = f"shard_{len(shards):05d}.safetensors"
            save_tensors(tmp / name, merged)
            shards.append(name)
            shard_rows.append(len(merged["acts"]))
            pending.clear()

        bar = tqdm(
            total=self.inner.num_rows(split),
            unit="tok",
            unit_scale=True,
            desc=f"activations ({split})",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        try:
            buffered = 0
            for block in self.inner.iter_batches(split, 0):
                bar.update(len(block))
                pending.append(block)
                buffered += len(block)
                if buffered >= self.shard_rows:
                    flush()
                    buffered = 0
                yield block
            flush()
            write_json(
                tmp / "manifest.json",
                {
                    "format": CACHE_FORMAT,
                    "rows": sum(shard_rows),
                    "d_in": self.d_in,
                    "shards": shards,
                    "shard_rows": shard_rows,
                    "source": self.config.to_dict(),
                },
            )
            final = self.root / split
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished the same pass first; theirs is as good as ours
                pass
        finally:  # an unfinished pass leaves nothing behind (after the rename, tmp is gone)
            bar.close()
            shutil.rmtree(tmp, ignore_errors=True)
