"""The feature database (RUN/features.sqlite): schema, and writing it in one transaction to a temporary
file that is renamed into place, so an interrupted build leaves the previous database (or none).

    meta(key, value)              JSON values: run, model, hook, split, n_tokens, settings, ...
    features(id, ...)             one row per latent: firing count/density, mean/max activation,
                                  quantiles, histogram, promoted/suppressed tokens (JSON columns)
    contexts(feature, kind, ...)  token windows: kind 'top' (by max activation) or 'quantile' (sampled)
    tokens(id, text, key)         display text of every token id used above; key = trimmed, lower-case text
    feature_tokens(token, feature, activation)   tokens a feature fires on inside its top contexts
    feature_boards(feature, correlation)         Othello runs only: JSON (64, 3) correlation of the latent with
                                  each square being empty / mine / theirs (``features/boards.py``)
    pictures(key, data_uri)       image runs only: PNG data URIs, "patch:ROW" for every patch (image-model runs: token
                                  region) shown and, for patches, "atom:ID" for every latent's decoder row
                                  (``features/images.py``, ``features/vision.py``)
    boxes(row, image, top, left, height, width)  image-model runs only: the pixel box in its image of every token
                                  row shown (``features/vision.py``)
    random_contexts(rank, ...)    token windows at random positions with every latent firing in them (JSON)

`sparsecode explain` adds its own tables (explanations, explanation_scores) to the same file later.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..io import atomic_write

FORMAT = "sparsecode-features"
VERSION = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (
    id INTEGER PRIMARY KEY,
    fire_count INTEGER NOT NULL,
    density REAL NOT NULL,
    mean_act REAL,
    max_act REAL NOT NULL,
    min_act REAL,
    quantiles TEXT NOT NULL,
    histogram TEXT NOT NULL,
    top_tokens TEXT NOT NULL,
    promoted TEXT NOT NULL,
    suppressed TEXT NOT NULL
);
CREATE INDEX features_density ON features (density);
CREATE INDEX features_max_act ON features (max_act);
CREATE INDEX features_mean_act ON features (mean_act);
CREATE TABLE contexts (
    feature INTEGER NOT NULL,
    kind TEXT NOT NULL,
    band TEXT,
    rank INTEGER NOT NULL,
    activation REAL NOT NULL,
    chunk INTEGER NOT NULL,
    position INTEGER NOT NULL,
    center INTEGER NOT NULL,
    token_ids TEXT NOT NULL,
    acts TEXT NOT NULL,
    PRIMARY KEY (feature, kind, rank)
) WITHOUT ROWID;
CREATE TABLE tokens (id INTEGER PRIMARY KEY, text TEXT NOT NULL, key TEXT NOT NULL);
CREATE INDEX tokens_key ON tokens (key);
CREATE TABLE feature_tokens (
    token INTEGER NOT NULL,
    feature INTEGER NOT NULL,
    activation REAL NOT NULL,
    PRIMARY KEY (token, feature)
) WITHOUT ROWID;
CREATE TABLE random_contexts (
    rank INTEGER PRIMARY KEY,
    chunk INTEGER NOT NULL,
    position INTEGER NOT NULL,
    center INTEGER NOT NULL,
    token_ids TEXT NOT NULL,
    active TEXT NOT NULL
);
"""
BOARDS_SCHEMA = "CREATE TABLE feature_boards (feature INTEGER PRIMARY KEY, correlation TEXT NOT NULL)"

PICTURES_SCHEMA = "CREATE TABLE pictures (key TEXT PRIMARY KEY, data_uri TEXT NOT NULL)"

BOXES_SCHEMA = (
    "CREATE TABLE boxes (row INTEGER PRIMARY KEY, image TEXT NOT NULL, top INTEGER NOT NULL, "
    "left INTEGER NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL)"
)


def write_database(
    path: str | Path,
    meta: dict[str, Any],
    features: Iterable[tuple],
    contexts: Iterable[tuple],
    tokens: dict[int, str],
    feature_tokens: Iterable[tuple],
    feature_boards: Iterable[tuple] | None = None,
    random_contexts: Iterable[tuple] = (),
    pictures: Iterable[tuple] | None = None,
    boxes: Iterable[tuple] | None = None,
) -> None:
    """Write a complete database to ``path`` atomically. Row tuples follow the column order of ``SCHEMA``
    (``feature_boards`` / ``pictures`` / ``boxes``: rows of the optional board, picture and box tables)."""

    def write(tmp: Path) -> None:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = MEMORY")  # the file is a temporary until renamed: no side files
            con.execute("BEGIN")
            for statement in SCHEMA.split(";"):  # executescript would commit first: one statement at a time
                if statement.strip():
                    con.execute(statement)
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            con.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", features)
            con.executemany("INSERT INTO contexts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", contexts)
            con.executemany(
                "INSERT INTO tokens VALUES (?, ?, ?)", [(i, t, t.strip().lower()) for i, t in sorted(tokens.items())]
            )
            con.executemany("INSERT INTO feature_tokens VALUES (?, ?, ?)", feature_tokens)
            if feature_boards is not None:
                con.execute(BOARDS_SCHEMA)
                con.executemany("INSERT INTO feature_boards VALUES (?, ?)", feature_boards)
            con.executemany("INSERT INTO random_contexts VALUES (?, ?, ?, ?, ?, ?)", random_contexts)
            if pictures is not None:
                con.execute(PICTURES_SCHEMA)
                con.executemany("INSERT INTO pictures VALUES (?, ?)", pictures)
            if boxes is not None:
                con.execute(BOXES_SCHEMA)
                con.executemany("INSERT INTO boxes VALUES (?, ?, ?, ?, ?, ?)", boxes)
            con.execute(
                "INSERT INTO meta VALUES ('format', ?), ('version', ?)", (json.dumps(FORMAT), json.dumps(VERSION))
            )
            con.execute("COMMIT")
        finally:
            con.close()

    atomic_write(path, write)
