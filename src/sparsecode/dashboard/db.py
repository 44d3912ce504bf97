"""Read-only access to RUN/features.sqlite (sqlite3 only: browsing never imports torch)."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import DataError

FORMAT, VERSION = "sparsecode-features", 1  # what sparsecode.features.database writes

FEATURE_ID = re.compile(r"[0-9]{1,12}")
"""A feature id as written in URLs and searches: ASCII digits only (str.isdigit() also accepts "²" and "٣")."""

SORTS = {
    "id": "id",
    "density": "density",
    "max_act": "max_act",
    "mean_act": "mean_act",
    "detection": "detection",
    "match": "match_act",
}
"""List sort keys (query value -> column); "match" (activation on the searched token) needs a token query;
"detection" is the balanced accuracy of the feature's explanation (`sparsecode explain`), unexplained last."""
EXPLAINED = (
    "LEFT JOIN explanations e ON e.feature = features.id LEFT JOIN explanation_scores s ON s.feature = features.id "
    "AND s.scorer = 'detection' AND s.baseline = 0"
)
"""The explanation and its detection score of each feature, when `sparsecode explain` has stored them."""
FILTERS = ("all", "alive", "dead", "dense")
"""List filters."""
IMAGE_WORLDS = {"images": "image patches", "vision": "an image model's activations over image views"}
"""meta ``world`` of the runs whose rows come from images, and what they were trained on."""


def _like_escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class FeatureDB:
    """Queries the dashboard needs. One read-only connection per thread (the server runs handlers in a pool)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} not found; build it with `sparsecode features {self.path.parent}`")
        self._local = threading.local()
        try:
            self.meta = {k: json.loads(v) for k, v in self._con().execute("SELECT key, value FROM meta")}
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise DataError(
                f"{self.path}: not a readable feature database ({e}); rebuild it with "
                f"`sparsecode features {self.path.parent}`"
            ) from None
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise DataError(
                f"{self.path}: not a sparsecode feature database of version {VERSION}; rebuild it with "
                f"`sparsecode features {self.path.parent}`"
            )
        self.n_latents: int = int(self.meta["n_latents"])
        self.dense_threshold: float = float(self.meta["settings"]["dense_threshold"])
        self._token_text: dict[int, str] | None = None

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    def token_texts(self, ids: list[int]) -> list[str]:
        if self._token_text is None:  # small (the tokens shown anywhere); loaded once
            self._token_text = dict(self._con().execute("SELECT id, text FROM tokens").fetchall())
        return [self._token_text.get(i, f"<{i}>") for i in ids]

    # -- list ----------------------------------------------------------------------------------------
    def list_features(
        self,
        sort: str = "max_act",
        order: str = "desc",
        filter: str = "all",
        query: str = "",
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(total matching, one page of summary rows). ``query``: a feature id, or a token's text (exact,
        case-insensitive, ignoring surrounding spaces) that the feature fires on in its top contexts, or words that
        all occur in the feature's explanation (either matches); rows carry ``match_act``, the feature's largest
        activation on that token (None for a match by explanation), and ``explanation`` / ``detection`` /
        ``detection_auc`` (its detection balanced accuracy and AUC) when explained."""
        where, params, join_params = [], [], []
        explained = self.has_explanations()
        join = EXPLAINED if explained else ""
        columns = (
            f"e.text AS explanation, s.balanced_accuracy AS detection, {'s.auc' if self._has_auc() else 'NULL'} "
            "AS detection_auc"
            if explained
            else ("NULL AS explanation, NULL AS detection, NULL AS detection_auc")
        )
        match = "NULL AS match_act"
        if filter == "alive":
            where.append("fire_count > 0")
        elif filter == "dead":
            where.append("fire_count = 0")
        elif filter == "dense":
            where.append("density > ?")
            params.append(self.dense_threshold)
        query = query.strip()
        if FEATURE_ID.fullmatch(query):
            where.append("id = ?")
            params.append(int(query))
        elif query:
            join += (
                " LEFT JOIN (SELECT ft.feature, MAX(ft.activation) AS match_act FROM feature_tokens ft JOIN tokens t "
                "ON t.id = ft.token WHERE t.key = ? GROUP BY ft.feature) m ON m.feature = features.id"
            )
            join_params.append(query.lower())
            match = "match_act"
            found = ["m.feature IS NOT NULL"]
            words = query.lower().split()
            if explained and words:  # every word of the query in the explanation, case-insensitive
                found.append("(" + " AND ".join(["LOWER(e.text) LIKE ? ESCAPE '\\'"] * len(words)) + ")")
                params[:0] = [f"%{_like_escape(w)}%" for w in words]
            where.insert(0, f"({' OR '.join(found)})")
        elif sort == "match":
            raise ValueError("sort 'match' needs a token query")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        direction = "ASC" if order == "asc" else "DESC"
        nulls = " NULLS LAST" if sort in ("detection", "match") else ""
        con = self._con()
        total = con.execute(f"SELECT COUNT(*) FROM features {join} {clause}", [*join_params, *params]).fetchone()[0]
        rows = con.execute(
            f"SELECT id, fire_count, density, mean_act, max_act, top_tokens, {columns}, {match} FROM features {join} "
            f"{clause} ORDER BY {SORTS[sort]} {direction}{nulls}, id ASC LIMIT ? OFFSET ?",
            [*join_params, *params, limit, offset],
        ).fetchall()
        return total, [{**dict(r), "top_tokens": json.loads(r["top_tokens"])} for r in rows]

    def has_explanations(self) -> bool:
        """Whether `sparsecode explain` has stored explanations (it may do so while the dashboard runs)."""
        row = (
            self._con()
            .execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('explanations', 'explanation_scores')"
            )
            .fetchone()
        )
        return row[0] == 2

    def _has_auc(self) -> bool:
        """Whether the scores carry an AUC (those stored by an older sparsecode do not)."""
        return any(r[1] == "auc" for r in self._con().execute("PRAGMA table_info(explanation_scores)"))

    def explanation(self, fid: int) -> dict[str, Any] | None:
        """Feature ``fid``'s explanation, who wrote it, and its scores {scorer: {"real"/"shuffled": {...}}}."""
        if not self.has_explanations():
            return None
        con = self._con()
        r = con.execute("SELECT text, explainer, prompt_version FROM explanations WHERE feature = ?", (fid,)).fetchone()
        if r is None:
            return None
        scores: dict[str, dict[str, Any]] = {}
        for s in con.execute("SELECT * FROM explanation_scores WHERE feature = ? ORDER BY scorer, baseline", (fid,)):
            row = {"auc": None} | {k: v for k, v in dict(s).items() if k not in ("feature", "scorer", "baseline")}
            scores.setdefault(s["scorer"], {})["shuffled" if s["baseline"] else "real"] = row
        return {**dict(r), "scores": scores}

    def top_tokens(self, ids: list[int]) -> dict[int, list[str]]:
        """The distinct tokens each of ``ids`` is centred on in its top contexts (as on the list page)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._con().execute(f"SELECT id, top_tokens FROM features WHERE id IN ({marks})", ids).fetchall()
        return {r["id"]: json.loads(r["top_tokens"]) for r in rows}

    # -- one feature ---------------------------------------------------------------------------------
    def feature(self, fid: int) -> dict[str, Any] | None:
        """Everything about feature ``fid``, or None if there is no such feature."""
        con = self._con()
        r = con.execute("SELECT * FROM features WHERE id = ?", (fid,)).fetchone()
        if r is None:
            return None
        out = dict(r)
        out["quantiles"] = dict(zip((str(q) for q in self.meta["quantile_levels"]), json.loads(r["quantiles"])))
        out["histogram"] = [{"low": lo, "high": hi, "count": c} for lo, hi, c in json.loads(r["histogram"])]
        out["top_tokens"] = json.loads(r["top_tokens"])
        for side in ("promoted", "suppressed"):
            pairs = json.loads(r[side])
            texts = self.token_texts([i for i, _ in pairs])
            out[side] = [{"token_id": i, "text": t, "score": s} for (i, s), t in zip(pairs, texts)]
        out["dense"] = out["density"] > self.dense_threshold
        out["contexts"] = {"top": [], "quantile": []}
        for c in con.execute("SELECT * FROM contexts WHERE feature = ? ORDER BY kind, rank", (fid,)):
            ids = json.loads(c["token_ids"])
            out["contexts"][c["kind"]].append(
                {
                    "activation": c["activation"],
                    "band": c["band"],
                    "chunk": c["chunk"],
                    "position": c["position"],
                    "center": c["center"],
                    "tokens": [
                        {"id": i, "text": t, "act": a}
                        for i, t, a in zip(ids, self.token_texts(ids), json.loads(c["acts"]))
                    ],
                }
            )
        out["explanation"] = self.explanation(fid)
        if self.meta.get("world") == "othello":
            self._add_boards(out)
        elif self.image_run:
            self._add_pictures(out)
        return out

    @property
    def image_run(self) -> bool:
        """Whether the run's rows are image patches or an image model's tokens (no text: text-only tools do not
        apply)."""
        return self.meta.get("world") in IMAGE_WORLDS

    def _add_pictures(self, out: dict[str, Any]) -> None:
        """An image run: each context's picture (the patch, or the token's region in its image) and, for patches, the
        feature's atom as PNG data URIs; for an image model's tokens also each context's pixel box."""
        shown = [c for kind in out["contexts"].values() for c in kind if c["tokens"]]
        rows = [c["tokens"][0]["id"] for c in shown]
        keys = [f"atom:{out['id']}"] + [f"patch:{r}" for r in rows]
        marks = ",".join("?" * len(keys))
        con = self._con()
        found = dict(con.execute(f"SELECT key, data_uri FROM pictures WHERE key IN ({marks})", keys))
        out["atom"] = found.get(keys[0])
        boxes = {}
        if self.meta.get("world") == "vision":
            query = f"SELECT * FROM boxes WHERE row IN ({','.join('?' * len(rows))})"
            boxes = {
                b["row"]: {k: b[k] for k in ("image", "top", "left", "height", "width")}
                for b in con.execute(query, rows)
            }
        for c in (c for kind in out["contexts"].values() for c in kind):
            row = c["tokens"][0]["id"] if c["tokens"] else None
            c["patch"] = found.get(f"patch:{row}")
            if boxes:
                c["box"] = boxes.get(row)

    def _add_boards(self, out: dict[str, Any]) -> None:
        """An Othello run: each context's position as a board, and the feature's board correlation (64, 3)
        with its per-square shading, when the build stored it."""
        from .boards import context_board, square_shading

        for kind in out["contexts"].values():
            for c in kind:
                c["board"] = context_board(c)
        row = self._con().execute("SELECT correlation FROM feature_boards WHERE feature = ?", (out["id"],)).fetchone()
        out["board_correlation"] = json.loads(row["correlation"]) if row else None
        out["board_shading"] = square_shading(out["board_correlation"]) if row else None
