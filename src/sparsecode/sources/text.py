"""Text corpora: load documents from .txt/.jsonl files (or the embedded default) and split them.

A *document* is a paragraph of a .txt file (paragraphs are separated by blank lines) or the
``text`` field of one line of a .jsonl file. The order is fully deterministic: paths in the order
given, directories walked recursively in sorted order, documents in file order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError
from .base import check_split

CORPUS_SUFFIXES = (".txt", ".jsonl")
"""File types a corpus may contain."""

MIN_DEFAULT_PARAGRAPH_CHARS = 20
"""Paragraphs of the default corpus shorter than this (after stripping) are dropped."""

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def split_paragraphs(text: str) -> list[str]:
    """Split ``text`` on blank lines; strip each piece and drop empty ones."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]


def default_documents() -> list[str]:
    """The embedded default corpus: CPython's pydoc topic texts, split into paragraphs.

    Topics are taken in sorted-key order; paragraphs shorter than ``MIN_DEFAULT_PARAGRAPH_CHARS``
    are dropped. Ships with Python, so no download is needed.
    """
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        docs.extend(p for p in split_paragraphs(topics[key]) if len(p) >= MIN_DEFAULT_PARAGRAPH_CHARS)
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or type(e).__name__})") from None


def _load_jsonl(path: Path) -> list[str]:
    docs: list[str] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            msg = f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            raise DataError(msg) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(f"{path}:{lineno}: expected a JSON object with a string field 'text'")
        if obj["text"].strip():
            docs.append(obj["text"].strip())
    return docs


def _load_file(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return split_paragraphs(_read_text(path))
    if path.suffix == ".jsonl":
        return _load_jsonl(path)
    raise DataError(
        f"{path}: unsupported corpus file type; use {' or '.join(CORPUS_SUFFIXES)} files or a directory of them"
    )


def load_documents(paths: list[str] | None) -> list[str]:
    """Documents from .txt/.jsonl files and directories, in a deterministic order.

    ``None`` means the embedded default corpus (see ``default_documents``).
    """
    if paths is None:
        return default_documents()
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    docs: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
            for f in files:
                docs.extend(_load_file(f))
        elif path.is_file():
            docs.extend(_load_file(path))
        else:
            raise DataError(f"corpus path {raw} not found; give existing .txt/.jsonl files or directories")
    if not docs:
        shown = ", ".join(str(p) for p in paths) or "(empty list)"
        raise DataError(f"no documents found in corpus {shown}; need non-empty .txt or .jsonl (field 'text') files")
    return docs


def split_documents(docs: list[str], split: str, eval_every: int = 20) -> list[str]:
    """The documents of ``split``: of the distinct documents (first occurrence kept, so a paragraph repeated
    in the corpus cannot sit on both sides), every ``eval_every``-th one (index % eval_every ==
    eval_every-1) is held out as "eval", the rest are "train"."""
    check_split(split)
    held_out = split == "eval"
    distinct = list(dict.fromkeys(docs))
    return [d for i, d in enumerate(distinct) if (i % eval_every == eval_every - 1) == held_out]
