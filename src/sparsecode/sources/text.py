"""Text corpora: stream documents from files, hub datasets or the embedded default corpus, and split them.

A *document* is a paragraph of a .txt file (paragraphs are separated by blank lines), or the text column of
one record of a .jsonl/.json/.parquet/.arrow/.csv file or of a Hugging Face hub dataset. The order is fully
deterministic: corpus entries in the order given, directories walked recursively in sorted order, documents in
file order. Documents are yielded one at a time (files are read line by line or record batch by record batch),
so a corpus is never held in memory whole.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from .base import check_split
from .corpus_default import (
    default_corpus_identity,
    default_documents,
    other_documents,
    shakespeare_documents,
    wikipedia_documents,
)

LINE_SUFFIXES = (".txt", ".jsonl")
"""Read by sparsecode itself, line by line: paragraphs of text, one JSON object per line."""
DATASETS_SUFFIXES = {".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
"""Read through Hugging Face ``datasets`` (streaming): suffix -> its packaged builder."""
CORPUS_SUFFIXES = LINE_SUFFIXES + tuple(DATASETS_SUFFIXES)
"""File types a corpus may contain."""
DEFAULT_TEXT_COLUMN = "text"
DATASETS_BATCH = 1000
"""Records read per batch from a ``datasets`` stream."""

EMBEDDED_CORPORA = {"wikipedia": wikipedia_documents, "shakespeare": shakespeare_documents, "pydoc": other_documents}
"""Corpus names that stand for text shipped in installed packages (see ``corpus_default``); the default corpus is
"wikipedia" then "shakespeare"; "pydoc" (CPython's docs) is a different English corpus to evaluate on."""

_BLANK = " \t\r\f\v"  # a line of only these (before its newline) separates paragraphs


def split_paragraphs(text: str) -> list[str]:
    """Split ``text`` on blank lines; strip each piece and drop empty ones."""
    return list(_paragraphs(text.splitlines(keepends=True)))


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Paragraphs of a stream of lines: blank lines separate them; each is stripped, empty ones dropped."""
    current: list[str] = []
    for line in lines:
        if line.endswith("\n") and line.removesuffix("\n").strip(_BLANK) == "":
            if (p := "".join(current).strip()) != "":
                yield p
            current = []
        else:
            current.append(line)
    if (p := "".join(current).strip()) != "":
        yield p


def _lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or type(e).__name__})") from None


def _missing_column(where: str, column: str, found: Iterable[str]) -> DataError:
    names = ", ".join(repr(k) for k in found) or "none"
    return DataError(f"{where}: no text column {column!r} (columns: {names}); pick one with --text-column")


def _jsonl_documents(path: Path, column: str) -> Iterator[str]:
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            msg = f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            raise DataError(msg) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with a string field {column!r}")
        if column not in obj:
            raise _missing_column(f"{path}:{lineno}", column, obj)
        if not isinstance(obj[column], str):
            got = type(obj[column]).__name__
            raise DataError(
                f"{path}:{lineno}: field {column!r} holds {got}, not text; pick the text with --text-column"
            )
        if obj[column].strip():
            yield obj[column].strip()


def _quiet_datasets() -> None:
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _stream_records(where: str, column: str, open_stream) -> Iterator[str]:
    """The stripped, non-empty strings of ``column`` from a ``datasets`` IterableDataset, batch by batch."""
    _quiet_datasets()
    try:
        stream = open_stream()
        batches = stream.iter(batch_size=DATASETS_BATCH)
        first = True
        for batch in batches:
            if first and column not in batch:
                raise _missing_column(where, column, batch)
            first = False
            for value in batch[column]:
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise DataError(
                        f"{where}: column {column!r} holds {type(value).__name__}, not text; "
                        "pick the text with --text-column"
                    )
                if value.strip():
                    yield value.strip()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- datasets/pyarrow/fsspec raise many types for unreadable input
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DataError(f"{where}: cannot read it as a dataset ({first_line})") from None


def _datasets_file(path: Path, column: str) -> Iterator[str]:
    from datasets import load_dataset

    builder = DATASETS_SUFFIXES[path.suffix]
    return _stream_records(
        str(path), column, lambda: load_dataset(builder, data_files=str(path), split="train", streaming=True)
    )


def hub_parts(name: str) -> tuple[str, str | None]:
    """``"org/name"`` or ``"org/name:config"`` -> (dataset id, config or None)."""
    dataset, _, config = name.partition(":")
    return dataset, (config or None)


def _offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _hub_documents(name: str, column: str) -> Iterator[str]:
    if _offline():
        raise DataError(
            f"corpus {name}: not a local file or directory, and the hub is offline (HF_HUB_OFFLINE); "
            "give local .txt/.jsonl/.json/.parquet/.arrow/.csv files"
        )
    from datasets import load_dataset

    dataset, config = hub_parts(name)
    return _stream_records(
        f"hub dataset {name}", column, lambda: load_dataset(dataset, config, split="train", streaming=True)
    )


def _looks_like_path(s: str) -> bool:
    # hub ids are "name" or "org/name" (optionally ":config"); anything with a file suffix or more separators is a path
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or Path(s).suffix in CORPUS_SUFFIXES


def corpus_files(raw: str) -> list[Path] | None:
    """The files a corpus entry stands for (a file, or a directory's corpus files in sorted order), or None for a
    hub dataset name; a path that does not exist raises DataError."""
    path = Path(raw).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
    if path.is_file():
        return [path]
    if _looks_like_path(raw):
        raise DataError(
            f"corpus path {raw} not found; give existing .txt/.jsonl/.json/.parquet/.arrow/.csv files or directories"
        )
    return None


def _file_documents(path: Path, column: str) -> Iterator[str]:
    if path.suffix == ".txt":
        return _paragraphs(_lines(path))
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, column)
    if path.suffix in DATASETS_SUFFIXES:
        return _datasets_file(path, column)
    raise DataError(f"{path}: unsupported corpus file type; use {', '.join(CORPUS_SUFFIXES)} files or a directory")


def iter_documents(paths: list[str] | None, text_column: str = DEFAULT_TEXT_COLUMN) -> Iterator[str]:
    """Documents of a corpus, one at a time, in a deterministic order. ``None`` means the embedded default corpus
    (see ``corpus_default``). Raises DataError when the corpus yields no document at all."""
    if paths is None:
        yield from default_documents()
        return
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    found = False
    for raw in paths:
        for stream in _entry_streams(raw, text_column):
            for doc in stream:
                found = True
                yield doc
    if not found:
        shown = ", ".join(str(p) for p in paths) or "(empty list)"
        raise DataError(
            f"no documents found in corpus {shown}; need non-empty .txt files or records with text in column "
            f"{text_column!r}"
        )


def _entry_streams(raw: str, column: str) -> list[Iterator[str]]:
    if raw in EMBEDDED_CORPORA and not Path(raw).exists():
        return [EMBEDDED_CORPORA[raw]()]
    files = corpus_files(raw)
    return [_hub_documents(raw, column)] if files is None else [_file_documents(f, column) for f in files]


def load_documents(paths: list[str] | None, text_column: str = DEFAULT_TEXT_COLUMN) -> list[str]:
    """All documents of a corpus as a list (see ``iter_documents``; for small corpora and tests)."""
    return list(iter_documents(paths, text_column))


def corpus_identity(paths: list[str] | None) -> list[Any]:
    """What a corpus's documents depend on, cheaply (no reading): each file's path, size and mtime, each hub
    dataset's name, or the embedded corpus's package versions. Keys the tokenized-corpus cache."""
    if paths is None:
        return ["default", default_corpus_identity()]
    out: list[Any] = []
    for raw in paths:
        if raw in EMBEDDED_CORPORA and not Path(raw).exists():
            out.append(["embedded", raw, default_corpus_identity() if raw != "pydoc" else sys.version])
            continue
        files = corpus_files(raw)
        if files is None:
            out.append(["hub", raw])
            continue
        for f in files:
            st = f.stat()
            out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def is_eval_document(index: int, eval_every: int) -> bool:
    """Of the distinct documents, every ``eval_every``-th one (index % eval_every == eval_every-1) is held out."""
    return index % eval_every == eval_every - 1


def split_documents(docs: list[str], split: str, eval_every: int = 20) -> list[str]:
    """The documents of ``split``: of the distinct documents (first occurrence kept, so a paragraph repeated
    in the corpus cannot sit on both sides), every ``eval_every``-th one is held out as "eval", the rest are
    "train"."""
    check_split(split)
    held_out = split == "eval"
    distinct = list(dict.fromkeys(docs))
    return [d for i, d in enumerate(distinct) if is_eval_document(i, eval_every) == held_out]
