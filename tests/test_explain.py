"""`sparsecode explain`: the scorer's arithmetic on features with exact firing rules, resuming, and bad input."""

from __future__ import annotations

import random
import sqlite3

import pytest
from explain_world import CAPS, DIGITS, RuleModel, write_world

from sparsecode.explain import ExplainConfig, explain_run
from sparsecode.explain.llm import Answer, Usage
from sparsecode.explain.prompts import parse_explanation, parse_yes_no, render
from sparsecode.explain.scoring import Item, auc, score


@pytest.fixture
def world(tmp_path):
    return write_world(tmp_path / "run")


def _scores(run, baseline=0):
    con = sqlite3.connect(run / "features.sqlite")
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT * FROM explanation_scores WHERE baseline = ?", (baseline,)).fetchall()
    return {(r["feature"], r["scorer"]): dict(r) for r in rows}


def _explanations(run):
    con = sqlite3.connect(run / "features.sqlite")
    return {f: (t, m, v) for f, t, m, v in con.execute("SELECT * FROM explanations")}


def test_correct_explanations_score_one_and_shuffled_ones_chance(world):
    usage = Usage()
    result = explain_run(
        world, RuleModel(usage), usage, ExplainConfig(test_examples=8), features=[0, 1, 2], progress=False
    )
    assert result["chosen"] == 2 and result["explained"] == 2  # the dead latent has nothing to explain
    assert _explanations(world) == {DIGITS: ("numbers", "rules", 1), CAPS: ("capitalised words", "rules", 1)}
    real = _scores(world)
    for f in (DIGITS, CAPS):
        for scorer in ("detection", "fuzzing"):
            s = real[(f, scorer)]
            assert (s["tp"], s["fp"], s["tn"], s["fn"], s["unparsed"]) == (8, 0, 8, 0, 0), (f, scorer)
            assert s["accuracy"] == s["balanced_accuracy"] == s["f1"] == 1.0
    shuffled = _scores(world, baseline=1)
    assert shuffled[(DIGITS, "detection")]["explanation_of"] == CAPS
    assert shuffled[(CAPS, "detection")]["explanation_of"] == DIGITS
    # the other rule: every context it fires in is a positive, and the negatives sometimes hold the other rule's token
    for f in (DIGITS, CAPS):
        s = shuffled[(f, "detection")]
        assert s["tp"] + s["fn"] == s["tn"] + s["fp"] == 8
        assert s["balanced_accuracy"] < 0.9
    summary = result["scores"]["detection"]
    assert summary["real"]["balanced_accuracy"] == 1.0 and summary["shuffled"]["n"] == 2
    # the rule judge's P(yes) is 1 or 0: the right rule ranks every firing context first (AUC 1), and a sure
    # yes/no judge's AUC is its balanced accuracy (the ROC curve has one corner)
    assert all(real[(f, s)]["auc"] == 1.0 for f in (DIGITS, CAPS) for s in ("detection", "fuzzing"))
    assert all(s["auc"] == pytest.approx(s["balanced_accuracy"]) for s in shuffled.values())
    assert summary["real"]["auc"] == 1.0 and summary["real"]["n_auc"] == 2


def test_a_wrong_explanation_scores_chance(world):
    usage = Usage()
    explain_run(
        world,
        RuleModel(usage, wrong="words about the weather"),
        usage,
        ExplainConfig(test_examples=8, baseline=False),
        features=[DIGITS],
        progress=False,
    )
    s = _scores(world)[(DIGITS, "detection")]
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (0, 0, 8, 8)
    assert s["accuracy"] == s["balanced_accuracy"] == 0.5 and s["f1"] == 0.0
    assert s["auc"] == 0.5  # P(yes) 0 everywhere: every pair tied


def test_interrupted_by_the_request_budget_resumes_to_the_same_result(tmp_path):
    whole, parts = write_world(tmp_path / "whole"), write_world(tmp_path / "parts")
    usage = Usage()
    explain_run(whole, RuleModel(usage), usage, features=[DIGITS, CAPS], progress=False)
    budget = Usage(max_requests=usage.requests // 3)
    first = explain_run(parts, RuleModel(budget), budget, features=[DIGITS, CAPS], progress=False)
    assert first["stopped"] == "max-requests" and first["explained"] < 2
    second = Usage()
    explain_run(parts, RuleModel(second), second, features=[DIGITS, CAPS], progress=False)
    assert _scores(parts) == _scores(whole) and _scores(parts, 1) == _scores(whole, 1)
    assert _explanations(parts) == _explanations(whole)
    assert budget.requests + second.requests < usage.requests + usage.requests // 3 + 50  # finished work not redone
    third = Usage()
    explain_run(parts, RuleModel(third), third, features=[DIGITS, CAPS], progress=False)
    assert third.requests == 0  # everything done: nothing asked again


def test_score_arithmetic_and_parsers():
    items = [Item("a", True), Item("b", True), Item("c", False), Item("d", False), Item("e", False)]
    s = score(items, [Answer(True), Answer(None), Answer(True), Answer(False), Answer(False)])
    assert (s.tp, s.fn, s.fp, s.tn, s.unparsed) == (1, 0, 1, 2, 1)
    assert s.accuracy == 0.75 and s.balanced_accuracy == pytest.approx((1 + 2 / 3) / 2) and s.f1 == pytest.approx(2 / 3)
    assert parse_yes_no("Yes, it is.") is True and parse_yes_no("no") is False and parse_yes_no("maybe") is None
    assert parse_explanation('Label: "numbers"  # [x]') == "numbers" and parse_explanation(" \n* \n") is None
    assert render([" the", " 12", " cats"], {1}) == "the <<12>> cats"


def test_auc_arithmetic_and_chance():
    # positives 0.9, 0.8, 0.3 against negatives 0.5, 0.3: of 6 pairs 4 won, 1 tied, 1 lost -> 4.5 / 6
    assert auc([True, True, True, False, False], [0.9, 0.8, 0.3, 0.5, 0.3]) == pytest.approx(0.75)
    assert auc([True, False], [0.2, 0.7]) == 0.0 and auc([True, False], [0.7, 0.7]) == 0.5
    assert auc([True, False], [0.9, None]) is None and auc([True, True], [0.1, 0.2]) is None
    # a judge whose P(yes) ignores the truth: 0.5 up to sampling noise (s.e. ~0.006 with 2000 + 2000)
    rng = random.Random(0)
    truths = [i % 2 == 0 for i in range(4000)]
    assert abs(auc(truths, [rng.random() for _ in truths]) - 0.5) < 0.03
    # and one that follows the truth with noise ranks better: P(positive > negative) = P(N(1, 2) > 0) = 0.76
    noisy = [(1.0 if t else 0.0) + rng.gauss(0, 1) for t in truths]
    assert auc(truths, noisy) == pytest.approx(0.760, abs=0.03)


def test_a_database_scored_before_the_auc_existed_gets_the_column(world):
    usage = Usage()
    explain_run(world, RuleModel(usage), usage, ExplainConfig(baseline=False), features=[DIGITS], progress=False)
    con = sqlite3.connect(world / "features.sqlite")
    con.execute("ALTER TABLE explanation_scores DROP COLUMN auc")  # as an older sparsecode left it
    con.commit()
    explain_run(world, RuleModel(usage), usage, ExplainConfig(baseline=False), features=[DIGITS, CAPS], progress=False)
    assert _scores(world)[(DIGITS, "detection")]["auc"] is None  # kept as it was, not made up
    assert _scores(world)[(CAPS, "detection")]["auc"] == 1.0


def test_summary_means_standard_errors_and_paired_differences(world):
    from sparsecode.explain.scoring import Score
    from sparsecode.explain.store import ExplainStore

    store = ExplainStore(world / "features.sqlite")
    # balanced accuracies 1, 0.5, 0.75 for the real explanations (AUC on two of them), 0.5 for each shuffled one
    real = [Score(4, 0, 4, 0, 0, auc=1.0), Score(2, 2, 2, 2, 0, auc=0.5), Score(4, 2, 2, 0, 0)]
    for f, s in enumerate(real):
        store.save(f, (f"rule {f}", "m"), {"detection": s}, False, f, "m", 1)
        store.save(f, None, {"detection": Score(0, 0, 4, 4, 1, auc=0.5)}, True, (f + 1) % 3, "m", 1)
    store.save(9, ("everywhere", "m"), {"detection": Score(0, 0, 0, 0, 0)}, False, 9, "m", 1)  # no test set
    summary = store.summary()["detection"]
    store.close()
    r, b, d = summary["real"], summary["shuffled"], summary["paired"]
    assert (r["n"], r["n_scored"]) == (4, 3) and r["balanced_accuracy"] == pytest.approx(0.75)  # no score: left out
    assert r["balanced_accuracy_se"] == pytest.approx(0.25 / 3**0.5)  # sample s.d. 0.25 over sqrt(3)
    assert r["auc"] == 0.75 and r["n_auc"] == 2 and r["auc_se"] == pytest.approx(0.25)
    assert r["yes_rate"] == pytest.approx((4 + 4 + 6) / 24) and b["yes_rate"] == 0.0  # unparsed answers left out
    assert b["balanced_accuracy"] == 0.5 and b["balanced_accuracy_se"] == 0.0
    assert (r["contexts"], r["contexts_min"]) == (6, 0) and (b["contexts"], b["contexts_min"]) == (8, 8)
    assert (d["n"], d["higher"], d["equal"], d["lower"]) == (3, 2, 1, 0)
    assert d["balanced_accuracy"] == pytest.approx(0.25) and d["balanced_accuracy_se"] == pytest.approx(0.25 / 3**0.5)
    assert d["auc"] == pytest.approx(0.25) and d["n_auc"] == 2
