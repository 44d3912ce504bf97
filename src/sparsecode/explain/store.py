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
import math
import sqlite3
import statistics
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


SUMMED = ("accuracy", "balanced_accuracy", "f1", "auc")
"""The per-feature scores averaged over features in a summary."""


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
        world = json.loads(meta.get("world", "null"))
        if world in ("images", "vision"):  # contexts are pictures: there is no text to describe or judge
            self.con.close()
            raise DataError(
                f"{self.path}: explanations are written from text contexts, and this run's examples are images "
                f"({world}); browse them with `sparsecode serve {self.path.parent}`"
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
        """{scorer: {"real"/"shuffled": means over features, "paired": real minus shuffled feature by feature}}.

        real/shuffled: "n" features ("n_scored" of them with a test set of both classes), mean "accuracy", "balanced_accuracy" (and its standard error "_se"), "f1",
        "auc" (and "auc_se", over the "n_auc" features that have one), "yes_rate" (share of all answers that were
        yes), "contexts" (answered per feature, mean) and "contexts_min" (fewest; 0 for a feature without a test
        set, e.g. one firing in every random window, whose scores are then empty and left out of the means). paired, over the features scored both ways: the mean difference of balanced accuracy and of AUC with
        standard errors, and how many features scored "higher" / "equal" / "lower" in balanced accuracy."""
        rows = self.con.execute(
            "SELECT scorer, baseline, feature, tp, fp, tn, fn, accuracy, balanced_accuracy, f1, auc "
            "FROM explanation_scores ORDER BY scorer, baseline, feature"
        ).fetchall()
        by: dict[str, dict[str, dict[int, tuple]]] = {}
        for scorer, baseline, feature, *rest in rows:  # rest: tp, fp, tn, fn, accuracy, balanced accuracy, f1, auc
            by.setdefault(scorer, {}).setdefault("shuffled" if baseline else "real", {})[feature] = tuple(rest)
        return {scorer: _scorer_summary(kinds) for scorer, kinds in by.items()}


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n); None for fewer than 2 values)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def _scorer_summary(kinds: dict[str, dict[int, tuple]]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    for kind, rows in kinds.items():  # row: tp, fp, tn, fn, accuracy, balanced_accuracy, f1, auc
        column = {name: [r[i] for r in rows.values() if r[i] is not None] for i, name in enumerate(SUMMED, 4)}
        answered = sum(r[0] + r[1] + r[2] + r[3] for r in rows.values())
        bal, bal_se = _mean_se(column["balanced_accuracy"])
        auc, auc_se = _mean_se(column["auc"])
        out[kind] = {
            "n": len(rows),
            "n_scored": len(column["balanced_accuracy"]),
            "accuracy": _mean_se(column["accuracy"])[0],
            "balanced_accuracy": bal,
            "balanced_accuracy_se": bal_se,
            "f1": _mean_se(column["f1"])[0],
            "auc": auc,
            "auc_se": auc_se,
            "n_auc": len(column["auc"]),
            "yes_rate": sum(r[0] + r[1] for r in rows.values()) / answered if answered else None,
            "contexts": answered / len(rows),
            "contexts_min": min(r[0] + r[1] + r[2] + r[3] for r in rows.values()),
        }
    real, shuffled = kinds.get("real", {}), kinds.get("shuffled", {})
    both = [(real[f], shuffled[f]) for f in sorted(real.keys() & shuffled.keys())]
    if both:
        bal = [r[5] - b[5] for r, b in both if r[5] is not None and b[5] is not None]
        auc = [r[7] - b[7] for r, b in both if r[7] is not None and b[7] is not None]
        out["paired"] = {
            "n": len(bal),
            "balanced_accuracy": _mean_se(bal)[0],
            "balanced_accuracy_se": _mean_se(bal)[1],
            "higher": sum(d > 0 for d in bal),
            "equal": sum(d == 0 for d in bal),
            "lower": sum(d < 0 for d in bal),
            "auc": _mean_se(auc)[0],
            "auc_se": _mean_se(auc)[1],
            "n_auc": len(auc),
        }
    return out
