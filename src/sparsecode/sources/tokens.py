"""A corpus tokenized once into chunks on disk, read back a chunk at a time: its token ids are never all in memory.

One streaming pass over the documents deduplicates them (a 16-byte digest per distinct document is all that is
kept), assigns each distinct document to its split, tokenizes them a batch at a time and appends every chunk's
token ids to that split's file. The folder is written under a temporary name and renamed into place when complete
(an interrupted pass leaves nothing behind), keyed by what the chunks depend on (the corpus files' paths, sizes and
mtimes or the hub name, the tokenizer's files, ``max_length``, ``eval_every``), so later runs reuse it.

Per split the folder holds ``SPLIT.tokens`` (int32 token ids of all chunks, back to back), ``SPLIT.lengths``
(int32 tokens per chunk) and ``SPLIT.kept`` (int32 non-special tokens per chunk), plus ``meta.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self, overload

import numpy as np

from ..io import new_file_mode, sweep_temporaries, temp_prefix, user_cache_dir, write_json
from .base import SPLITS, check_split
from .text import is_eval_document

TOKENS_FORMAT = 1
TOKENIZE_BATCH = 256
"""Documents per tokenizer call while building."""


def default_tokens_dir() -> Path:
    """``$SPARSECODE_TOKENS``, else ``$XDG_CACHE_HOME/sparsecode/tokens``, else ``~/.cache/sparsecode/tokens``."""
    return user_cache_dir("SPARSECODE_TOKENS", "tokens")


class Chunks(Sequence[list[int]]):
    """The chunks of one split as a read-only sequence of token-id lists, read from disk on access (``os.pread``:
    safe from several threads). ``lengths`` holds every chunk's length without reading any tokens."""

    def __init__(self, path: Path, lengths: np.ndarray, indices: range | None = None):
        self._path = path
        self.lengths = lengths  # (n_chunks,) int32
        self._starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (n_chunks + 1,)
        self._indices = range(len(lengths)) if indices is None else indices
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, i: int) -> list[int]: ...
    @overload
    def __getitem__(self, i: slice) -> Chunks: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return Chunks(self._path, self.lengths, self._indices[i])
        j = self._indices[i]
        a, b = int(self._starts[j]), int(self._starts[j + 1])
        data = os.pread(self._fd, (b - a) * 4, a * 4)
        return np.frombuffer(data, dtype=np.int32).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self[i] for i in range(len(self)))

    def heads(self, n: int) -> np.ndarray:
        """(len(self), n) int64: each chunk's first ``n`` token ids, -1 past its end (one read of the file)."""
        idx = np.asarray(self._indices, dtype=np.int64)  # (n_chunks,)
        out = np.full((len(idx), n), -1, dtype=np.int64)
        if len(idx) == 0 or self._starts[-1] == 0:
            return out
        tokens = np.memmap(self._path, dtype=np.int32, mode="r")  # (total tokens,)
        offsets = np.arange(n)  # (n,)
        inside = offsets[None, :] < self.lengths[idx][:, None]  # (n_chunks, n)
        where = self._starts[idx][:, None] + offsets[None, :]  # (n_chunks, n)
        out[inside] = tokens[where[inside]]
        return out


class TokenizedCorpus:
    """A complete token folder (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self.meta: dict[str, Any] = json.loads((root / "meta.json").read_text())

    def chunks(self, split: str) -> Chunks:
        check_split(split)
        return Chunks(self.root / f"{split}.tokens", self._array(split, "lengths"))

    def kept_counts(self, split: str) -> np.ndarray:
        """(n_chunks,) int32 non-special tokens of each chunk."""
        check_split(split)
        return self._array(split, "kept")

    def _array(self, split: str, name: str) -> np.ndarray:
        return np.fromfile(self.root / f"{split}.{name}", dtype=np.int32)

    @property
    def documents_sha256(self) -> str:
        """sha256 over the train documents (each followed by NUL), a 0x01 byte, the eval documents likewise and
        another 0x01: the same digest the documents' text gave before the corpus was streamed."""
        return self.meta["documents_sha256"]

    @property
    def n_documents(self) -> int:
        """Distinct documents in the corpus."""
        return self.meta["n_documents"]


def tokens_key(identity: dict[str, Any]) -> str:
    blob = json.dumps({"format": TOKENS_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_tokenized(
    identity: dict[str, Any],
    documents: Iterable[str],
    chunker: Any,
    special_ids: set[int],
    eval_every: int,
    root: Path | None = None,
) -> TokenizedCorpus:
    """The token folder for ``identity`` (a JSON-able description of everything the chunks depend on), built
    from ``documents`` with ``chunker`` (a list of documents -> a list of chunks per document) when missing."""
    base = default_tokens_dir() if root is None else Path(root)
    final = base / tokens_key(identity)
    if not (final / "meta.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(base)  # builds cut short by a kill
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(f"{final.name}.partial"), dir=base))
        os.chmod(tmp, new_file_mode(directory=True))  # the cache may be shared by the machine's users
        try:
            meta = _build(tmp, documents, chunker, special_ids, eval_every)
            write_json(tmp / "meta.json", {**meta, "identity": identity})
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished the same folder first: keep theirs
                if not (final / "meta.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return TokenizedCorpus(final)


class _SplitWriter:
    """Appends one split's chunks to its files (a context manager: the token file is open while inside)."""

    def __init__(self, folder: Path, split: str):
        self.lengths, self.kept = array("i"), array("i")
        self.folder, self.split = folder, split

    def __enter__(self) -> Self:
        self.tokens = open(self.folder / f"{self.split}.tokens", "wb")
        return self

    def __exit__(self, *exc) -> None:
        self.tokens.close()
        for name in ("lengths", "kept"):
            (self.folder / f"{self.split}.{name}").write_bytes(getattr(self, name).tobytes())

    def add(self, chunk: list[int], special: np.ndarray) -> None:
        ids = np.asarray(chunk, dtype=np.int32)
        self.tokens.write(ids.tobytes())
        self.lengths.append(len(ids))
        self.kept.append(int(len(ids) - np.isin(ids, special).sum()))


def _batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _build(folder: Path, documents: Iterable[str], chunker, special_ids: set[int], eval_every: int) -> dict[str, Any]:
    from tqdm.auto import tqdm

    special = np.array(sorted(special_ids), dtype=np.int32)
    seen: set[bytes] = set()
    train_hash = hashlib.sha256()
    n_docs = 0
    with ExitStack() as stack:
        writers = {split: stack.enter_context(_SplitWriter(folder, split)) for split in SPLITS}
        eval_text = stack.enter_context(open(folder / "eval.documents", "wb"))  # hashed after train, as in the digest
        bar = stack.enter_context(tqdm(desc="tokenizing corpus", unit=" docs", leave=False, disable=None))
        for batch in _batches(documents, TOKENIZE_BATCH):
            fresh: list[tuple[str, str]] = []
            for doc in batch:
                digest = hashlib.blake2b(doc.encode("utf-8"), digest_size=16).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                split = "eval" if is_eval_document(n_docs, eval_every) else "train"
                n_docs += 1
                data = doc.encode("utf-8") + b"\0"
                (train_hash.update if split == "train" else eval_text.write)(data)
                fresh.append((split, doc))
            for (split, _), chunks in zip(fresh, chunker([d for _, d in fresh])):
                for chunk in chunks:
                    writers[split].add(chunk, special)
            bar.update(len(batch))
    train_hash.update(b"\1")
    with open(folder / "eval.documents", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            train_hash.update(block)
    train_hash.update(b"\1")
    os.remove(folder / "eval.documents")
    return {
        "documents_sha256": train_hash.hexdigest(),
        "n_documents": n_docs,
        "chunks": {s: len(w.lengths) for s, w in writers.items()},
        "tokens": {s: int(sum(w.lengths)) for s, w in writers.items()},
    }
