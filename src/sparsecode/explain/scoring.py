"""Test sets and scores: which contexts a judge sees for a feature, and what its answers add up to.

Detection: ``n`` contexts where the feature fires (held out from the explainer) and ``n`` where it does not (random
windows of the corpus in which it fires on no token); the judge says which contain the feature. Fuzzing: contexts
where the feature fires, half with its firing tokens marked and half with as many non-firing tokens marked; the
judge says which are marked correctly. Either way the classes are balanced, so chance is 0.5 in accuracy and
balanced accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .llm import Answer
from .prompts import render


@dataclass(frozen=True)
class Context:
    """One token window: display text of each token and the feature's activation on it (0 where it does not
    fire; all 0 for a negative)."""

    tokens: list[str]
    acts: list[float]

    @property
    def firing(self) -> set[int]:
        return {i for i, a in enumerate(self.acts) if a > 0}


@dataclass(frozen=True)
class Item:
    """One question for the judge: an excerpt and the answer that is right."""

    excerpt: str
    truth: bool


def detection_items(positives: list[Context], negatives: list[Context], n: int, rng: random.Random) -> list[Item]:
    """Up to ``n`` of each class (the same number of each), in a shuffled order."""
    k = min(n, len(positives), len(negatives))
    items = [Item(render(c.tokens), True) for c in rng.sample(positives, k)]
    items += [Item(render(c.tokens), False) for c in rng.sample(negatives, k)]
    rng.shuffle(items)
    return items


def fuzzing_items(positives: list[Context], n: int, rng: random.Random) -> list[Item]:
    """``n`` correctly and ``n`` wrongly marked excerpts (fewer if there are fewer usable contexts: a wrong marking
    needs as many non-firing tokens as firing ones), in a shuffled order."""
    usable = [c for c in positives if c.firing and len(c.tokens) >= 2 * len(c.firing)]
    picked = rng.sample(usable, min(2 * n, len(usable)))
    k = len(picked) // 2
    items = []
    for i, c in enumerate(picked[: 2 * k]):
        firing = c.firing
        if i < k:
            items.append(Item(render(c.tokens, firing), True))
        else:
            decoys = rng.sample(sorted(set(range(len(c.tokens))) - firing), len(firing))
            items.append(Item(render(c.tokens, set(decoys)), False))
    rng.shuffle(items)
    return items


@dataclass(frozen=True)
class Score:
    """A judge's answers to one test set, as a confusion matrix and the rates read from it."""

    tp: int
    fp: int
    tn: int
    fn: int
    unparsed: int
    """Answers with neither yes nor no: left out of the matrix, counted here."""
    auc: float | None = None
    """Area under the ROC curve of the judge's P(yes) over the test set: the chance that a context where the feature
    fires gets a higher P(yes) than one where it does not (ties count half). Threshold-free, so a judge that leans
    to "no" loses nothing by it; 0.5 is chance. None when some answer came without a P(yes)."""

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float | None:
        return (self.tp + self.tn) / self.n if self.n else None

    @property
    def balanced_accuracy(self) -> float | None:
        """Mean of the rates of right answers on each class (None unless both classes were answered)."""
        pos, neg = self.tp + self.fn, self.tn + self.fp
        if not pos or not neg:
            return None
        return (self.tp / pos + self.tn / neg) / 2

    @property
    def f1(self) -> float | None:
        """F1 of the "yes" answers; 0 when there are no true positives but something to find or claim."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else None


def score(items: list[Item], answers: list[Answer]) -> Score:
    """The confusion matrix of the ``answers`` (yes None: unparsed) against the items' truths, and their AUC."""
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "unparsed": 0}
    for item, answer in zip(items, answers, strict=True):
        if answer.yes is None:
            key = "unparsed"
        else:
            key = ("t" if answer.yes == item.truth else "f") + ("p" if answer.yes else "n")
        counts[key] += 1
    return Score(**counts, auc=auc([i.truth for i in items], [a.p_yes for a in answers]))


def auc(truths: list[bool], p_yes: list[float | None]) -> float | None:
    """ROC AUC of ``p_yes`` for the ``truths`` (Mann-Whitney: mean rank of the positives, ties at their mean rank);
    None unless every P(yes) is known and both classes are present."""
    if any(p is None for p in p_yes):
        return None
    n_pos = sum(truths)
    n_neg = len(truths) - n_pos
    if not n_pos or not n_neg:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(p_yes)
    rank_sum = sum(r for r, t in zip(ranks, truths) if t)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
