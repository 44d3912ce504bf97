"""Reading a feature's contexts from RUN/features.sqlite and storing explanations and scores in it.

Results go into two tables of the same file, created on first use (the dashboard shows them when present):

    explanations(feature, text, explainer, prompt_version)
    explanation_scores(feature, scorer, baseline, explanation_of, judge, prompt_version,
                       tp, fp, tn, fn, unparsed, accuracy, balanced_accuracy, f1, auc)

Each feature's explanation and scores are written in one transaction, so an interrupted run leaves every feature
either complete or absent, and the next run carries on with the absent ones. Rebuilding the database with
`sparsecode features` starts it afresh (the contexts the explanations were written from are gone).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ..errors import DataError
from ..features.database import FORMAT, VERSION
from .scoring import Context, Score

SCHEMA = """
CREATE TABLE IF NOT EXISTS explanations (
    feature INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    explainer TEXT NOT NULL,
    prompt_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS explanation_scores (
    feature INTEGER NOT NULL,
    scorer TEXT NOT NULL,
    baseline INTEGER NOT NULL,
    explanation_of INTEGER NOT NULL,
    judge TEXT NOT NULL,
    prompt_version INTEGER NOT NULL,
    tp INTEGER NOT NULL,
    fp INTEGER NOT NULL,
    tn INTEGER NOT NULL,
    fn INTEGER NOT NULL,
    unparsed INTEGER NOT NULL,
    accuracy REAL,
    balanced_accuracy REAL,
    f1 REAL,
    auc REAL,
    PRIMARY KEY (feature, scorer, baseline)
) WITHOUT ROWID
"""


SCORE_COLUMNS = (
    *("feature", "scorer", "baseline", "explanation_of", "judge", "prompt_version", "tp", "fp", "tn", "fn"),
    *("unparsed", "accuracy", "balanced_accuracy", "f1", "auc"),
)


class ExplainStore:
    """One writing connection to a run's feature database (used from one thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} not found; build it first with `sparsecode features {self.path.parent}`")
        self.con = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
            ok = json.loads(meta.get("format", "null")) == FORMAT and json.loads(meta.get("version", "0")) == VERSION
        except (sqlite3.DatabaseError, json.JSONDecodeError):
            ok = False
        if not ok:
            self.con.close()
            raise DataError(
                f"{self.path}: not a sparsecode feature database of version {VERSION}; rebuild it with "
                f"`sparsecode features {self.path.parent}`"
            )
        tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "random_contexts" not in tables:
            self.con.close()
            raise DataError(
                f"{self.path} has no random contexts (negative examples): it was built by an older sparsecode; "
                f"rebuild it with `sparsecode features {self.path.parent}`"
            )
        self.n_latents = int(json.loads(meta["n_latents"]))
        self.con.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            self.con.execute(statement)
        columns = {r[1] for r in self.con.execute("PRAGMA table_info(explanation_scores)")}
        if "auc" not in columns:  # scores stored before the AUC was: theirs stays empty
            self.con.execute("ALTER TABLE explanation_scores ADD COLUMN auc REAL")
        self.con.execute("COMMIT")
        self._texts: dict[int, str] = dict(self.con.execute("SELECT id, text FROM tokens").fetchall())
        self._negatives: list[tuple[list[int], set[int]]] | None = None

    def close(self) -> None:
        self.con.close()

    # -- choosing features ----------------------------------------------------------------------------
    def top_density(self, n: int) -> list[int]:
        """The ``n`` live features that fire most often (ties: lower id first)."""
        rows = self.con.execute(
            "SELECT id FROM features WHERE fire_count > 0 ORDER BY density DESC, id ASC LIMIT ?", (n,)
        )
        return [r[0] for r in rows]

    def live(self, ids: list[int]) -> list[int]:
        """Those of ``ids`` that fire at all (a dead feature has nothing to explain)."""
        marks = ",".join("?" * len(ids))
        rows = self.con.execute(f"SELECT id FROM features WHERE fire_count > 0 AND id IN ({marks})", ids)
        alive = {r[0] for r in rows}
        return [i for i in ids if i in alive]

    # -- contexts -------------------------------------------------------------------------------------
    def _context(self, token_ids: list[int], acts: list[float]) -> Context:
        return Context([self._texts.get(i, f"<{i}>") for i in token_ids], acts)

    def contexts(self, feature: int) -> tuple[list[Context], list[Context]]:
        """(top contexts best first, sampled lower-quantile contexts) of ``feature``."""
        rows = self.con.execute(
            "SELECT kind, token_ids, acts FROM contexts WHERE feature = ? ORDER BY kind DESC, rank", (feature,)
        ).fetchall()
        out: dict[str, list[Context]] = {"top": [], "quantile": []}
        for kind, ids, acts in rows:
            out[kind].append(self._context(json.loads(ids), json.loads(acts)))
        return out["top"], out["quantile"]

    def negatives(self, feature: int) -> list[Context]:
        """Random windows of the corpus in which ``feature`` fires on no token."""
        if self._negatives is None:
            rows = self.con.execute("SELECT token_ids, active FROM random_contexts ORDER BY rank").fetchall()
            self._negatives = [(json.loads(ids), set(json.loads(active))) for ids, active in rows]
        return [self._context(ids, [0.0] * len(ids)) for ids, active in self._negatives if feature not in active]

    # -- results --------------------------------------------------------------------------------------
    def explanations(self) -> dict[int, str]:
        return dict(self.con.execute("SELECT feature, text FROM explanations").fetchall())

    def scored(self, baseline: bool) -> dict[int, set[str]]:
        """{feature: the scorers it has a real (or, with ``baseline``, shuffled) score of}."""
        out: dict[int, set[str]] = {}
        rows = self.con.execute("SELECT feature, scorer FROM explanation_scores WHERE baseline = ?", (int(baseline),))
        for feature, scorer in rows:
            out.setdefault(feature, set()).add(scorer)
        return out

    def forget(self, features: list[int]) -> None:
        """Delete what is stored about ``features`` (for --redo)."""
        self.con.execute("BEGIN")
        for table in ("explanations", "explanation_scores"):
            self.con.executemany(f"DELETE FROM {table} WHERE feature = ?", [(f,) for f in features])
        self.con.execute("COMMIT")

    def save(
        self,
        feature: int,
        explanation: tuple[str, str] | None,
        scores: dict[str, Score],
        baseline: bool,
        explanation_of: int,
        judge: str,
        prompt_version: int,
    ) -> None:
        """In one transaction: ``feature``'s explanation ((text, explainer), if new) and its ``scores``."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            if explanation is not None:
                self.con.execute(
                    "INSERT OR REPLACE INTO explanations VALUES (?, ?, ?, ?)", (feature, *explanation, prompt_version)
                )
            self.con.executemany(
                f"INSERT OR REPLACE INTO explanation_scores ({', '.join(SCORE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(SCORE_COLUMNS))})",
                [
                    (feature, name, int(baseline), explanation_of, judge, prompt_version, s.tp, s.fp, s.tn, s.fn)
                    + (s.unparsed, s.accuracy, s.balanced_accuracy, s.f1, s.auc)
                    for name, s in scores.items()
                ],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def summary(self) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """{scorer: {"real"/"shuffled": {"n": features, "accuracy": mean, "balanced_accuracy": mean, "f1": mean,
        "auc": mean over the "n_auc" features that have one}}}."""
        out: dict[str, dict[str, dict[str, float | int | None]]] = {}
        rows = self.con.execute(
            "SELECT scorer, baseline, COUNT(*), AVG(accuracy), AVG(balanced_accuracy), AVG(f1), AVG(auc), COUNT(auc) "
            "FROM explanation_scores GROUP BY scorer, baseline ORDER BY scorer, baseline"
        )
        for scorer, baseline, n, acc, bal, f1, auc, n_auc in rows:
            out.setdefault(scorer, {})["shuffled" if baseline else "real"] = {
                "n": n,
                "accuracy": acc,
                "balanced_accuracy": bal,
                "f1": f1,
                "auc": auc,
                "n_auc": n_auc,
            }
        return out
