"""A feature database with exact firing rules, and a rule-following explainer/judge, for the explain tests.

The corpus is a stream of words, capitalised words and numbers. Latent DIGITS fires (activation 1 + value/100) on
exactly the number tokens, latent CAPS (activation 2) on exactly the capitalised words, latent DEAD never. The
database is written with the features stage's own writer: top contexts centred on the best firings, sampled
contexts, and random windows with the latents firing in them, as `sparsecode features` stores them.

``RuleModel`` stands in for a language model, only to pin the scorer's arithmetic: as explainer it names the rule
its marked tokens follow ("numbers", "capitalised words", else a fixed wrong guess); as judge it applies the rule
an explanation names to the excerpt (or to its marked tokens), and says no for any explanation it cannot apply.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from sparsecode.explain.llm import Answer, Usage
from sparsecode.features.database import write_database

DIGITS, CAPS, DEAD = 0, 1, 2
N_LATENTS = 3
LEFT, RIGHT = 4, 3
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "went", "home", "with", "some", "bread", "or", "tea"]
NAMES = ["Paris", "Anna", "Monday", "Rome", "Zeus", "Oslo"]
RULES = {"numbers": lambda t: t.strip().isdigit(), "capitalised words": lambda t: t.strip()[:1].isupper()}


def _acts(token: str) -> list[float]:
    t = token.strip()
    return [1 + int(t) / 100 if t.isdigit() else 0.0, 2.0 if t[:1].isupper() else 0.0, 0.0]


def write_world(run_dir: Path, n_chunks: int = 40, chunk_len: int = 24, seed: int = 0) -> Path:
    """A run folder holding only features.sqlite (and a config.json stub, so the CLI accepts it)."""
    rng = random.Random(seed)
    vocab: dict[str, int] = {}
    chunks = []
    for _ in range(n_chunks):
        tokens = []
        for _ in range(chunk_len):
            r = rng.random()
            tokens.append(
                " " + (str(rng.randrange(100)) if r < 0.1 else rng.choice(NAMES) if r < 0.2 else rng.choice(WORDS))
            )
        chunks.append([vocab.setdefault(t, len(vocab)) for t in tokens])
    text = {i: t for t, i in vocab.items()}
    acts = [[_acts(text[i]) for i in c] for c in chunks]  # [chunk][pos][latent]

    def window(c: int, p: int) -> range:
        return range(max(0, p - LEFT), min(chunk_len, p + RIGHT + 1))

    features, contexts, feature_tokens = [], [], {}
    n_tokens = n_chunks * chunk_len
    for f in range(N_LATENTS):
        firings = [(acts[c][p][f], c, p) for c in range(n_chunks) for p in range(chunk_len) if acts[c][p][f] > 0]
        best: dict[int, tuple] = {}
        for a, c, p in sorted(firings, reverse=True):
            best.setdefault(c, (a, c, p))  # one top context per chunk, centred on its best firing
        top = sorted(best.values(), reverse=True)[:20]
        rest = [x for x in firings if (x[1], x[2]) not in {(c, p) for _, c, p in top}]
        sampled = random.Random(f).sample(rest, min(6, len(rest)))
        for kind, rows in (("top", top), ("quantile", sampled)):
            for rank, (a, c, p) in enumerate(rows):
                w = window(c, p)
                ids, fa = [chunks[c][i] for i in w], [acts[c][i][f] for i in w]
                contexts.append(
                    (
                        f,
                        kind,
                        None if kind == "top" else "0-25%",
                        rank,
                        a,
                        c,
                        p,
                        p - w.start,
                        json.dumps(ids),
                        json.dumps(fa),
                    )
                )
                for t, x in zip(ids, fa):
                    if x > 0:
                        feature_tokens[(t, f)] = max(x, feature_tokens.get((t, f), 0.0))
        n = len(firings)
        values = [a for a, _, _ in firings]
        features.append(
            (
                f,
                n,
                n / n_tokens,
                sum(values) / n if n else None,
                max(values, default=0.0),
                min(values) if n else None,
                "[]",
                "[]",
                json.dumps([]),
                "[]",
                "[]",
            )
        )
    random_rows = []
    for rank in range(60):
        c, p = rng.randrange(n_chunks), rng.randrange(chunk_len)
        w = window(c, p)
        active = sorted({f for i in w for f in range(N_LATENTS) if acts[c][i][f] > 0})
        random_rows.append((rank, c, p, p - w.start, json.dumps([chunks[c][i] for i in w]), json.dumps(active)))
    meta = {
        "run": str(run_dir),
        "n_latents": N_LATENTS,
        "n_tokens": n_tokens,
        "split": "eval",
        "settings": {"dense_threshold": 0.5},
        "quantile_levels": [0.5],
        "quantile_bands": ["0-25%"],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text("{}")
    write_database(
        run_dir / "features.sqlite",
        meta,
        features,
        contexts,
        text,
        ((t, f, a) for (t, f), a in feature_tokens.items()),
        random_contexts=random_rows,
    )
    return run_dir


def _field(text: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", text, re.MULTILINE)
    return m.group(1) if m else ""


def _words(excerpt: str) -> list[str]:
    return excerpt.replace("<<", " ").replace(">>", " ").split()


def _marked(excerpt: str) -> list[str]:
    return re.findall(r"<<(.*?)>>", excerpt)


class RuleModel:
    """A deterministic explainer and judge that follows RULES (see the module docstring)."""

    name = "rules"
    concurrency = 2

    def __init__(self, usage: Usage, wrong: str | None = None) -> None:
        self.usage = usage  # counts requests against --max-requests, as the real clients do
        self.wrong = wrong  # if set: the explanation given for every feature

    def answer(self, messages: list[dict[str, str]]) -> str:
        self.usage.take()
        text = messages[-1]["content"]
        if text.startswith("Excerpts:"):  # explain
            if self.wrong:
                return self.wrong
            marked = [t for line in text.splitlines() for t in _marked(line)]
            return next((name for name, rule in RULES.items() if marked and all(rule(t) for t in marked)), "nothing")
        rule = RULES.get(_field(text, "Feature"))
        excerpt = _field(text, "Excerpt")
        if rule is None:
            return "no"
        if "wrapped tokens ones" in text:  # fuzzing: are the marked tokens the rule's?
            return "yes" if all(rule(t) for t in _marked(excerpt)) else "no"
        return "yes" if any(rule(w) for w in _words(excerpt)) else "no"

    def chat(self, messages: list[dict[str, str]], max_tokens: int, first_line: bool = False) -> str:
        return self.answer(messages)

    def judge(self, questions: list[list[dict[str, str]]]) -> list[Answer]:
        """A sure yes or no: P(yes) is 1 or 0."""
        yes = [self.answer(q) == "yes" for q in questions]
        return [Answer(y, float(y)) for y in yes]
