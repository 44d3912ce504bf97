"""`sparsecode explain` end to end through real HTTP: `sparsecode llm serve`'s app on a loopback port, backed by
the embedded SmolLM2-135M-Instruct in this process, explains and scores features of a tiny planted run."""

from __future__ import annotations

import shutil
import sqlite3

import httpx
import pytest
from planted_run import APPLES, SCRIPT

from sparsecode.cli import main


@pytest.fixture(scope="module")
def smollm2_chat(smollm2_models):
    from sparsecode.explain.llm import LocalChat

    return LocalChat(None)


def test_explain_and_score_over_http_with_the_local_model(smollm2_chat, planted_features, tmp_path, capsys):
    from sparsecode.explain.server import create_llm_app
    from sparsecode.serving import background

    run = tmp_path / "run"
    shutil.copytree(planted_features, run)
    args = ["explain", str(run), "--features", f"{SCRIPT},{APPLES}", "--explain-examples", "3", "--test-examples", "2"]
    args += ["--scorers", "detection", "--quiet"]
    with background(create_llm_app(smollm2_chat)) as url:
        models = httpx.get(f"{url}/v1/models").json()
        assert models["data"][0]["id"] == "local:SmolLM2-135M-Instruct"
        bad = httpx.post(f"{url}/v1/chat/completions", json={"messages": "hi"})
        assert bad.status_code == 400 and "messages must be" in bad.json()["error"]["message"]
        hi = [{"role": "user", "content": "hi"}]
        bad = httpx.post(f"{url}/v1/chat/completions", json={"messages": hi, "logprobs": True, "top_logprobs": 99})
        assert bad.status_code == 400 and "top_logprobs must be" in bad.json()["error"]["message"]
        assert main([*args, "--llm", f"{url}/v1", "--llm-model", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert "explained 2 of 2 chosen features with smollm2" in out and "prompt +" in out  # usage was reported
    con = sqlite3.connect(run / "features.sqlite")
    explanations = {f: (text, model, version) for f, text, model, version in con.execute("SELECT * FROM explanations")}
    assert set(explanations) == {SCRIPT, APPLES}
    assert all(text.strip() and model == "smollm2" and version == 1 for text, model, version in explanations.values())
    # the server returned log-probabilities, so each score has an AUC of the judge's P(yes)
    assert all(0 <= auc <= 1 for (auc,) in con.execute("SELECT auc FROM explanation_scores"))
    rows = con.execute("SELECT feature, baseline, explanation_of, tp + fp + tn + fn + unparsed FROM explanation_scores")
    scores = {(f, b): (of, asked) for f, b, of, asked in rows}
    # each feature: as many contexts where it fires (held out from the explainer: at most 2) as where it does not,
    # asked about with its own explanation and with the other's
    held_out = {
        f: con.execute(
            "SELECT COUNT(*) FROM contexts WHERE feature = ? AND (kind = 'quantile' OR rank >= 3)", (f,)
        ).fetchone()[0]
        for f in (SCRIPT, APPLES)
    }
    asked = {f: 2 * min(2, held_out[f]) for f in held_out}
    assert min(asked.values()) >= 2
    assert scores == {
        (SCRIPT, 0): (SCRIPT, asked[SCRIPT]),
        (SCRIPT, 1): (APPLES, asked[SCRIPT]),
        (APPLES, 0): (APPLES, asked[APPLES]),
        (APPLES, 1): (SCRIPT, asked[APPLES]),
    }


def test_the_batched_judge_answers_as_one_question_at_a_time(smollm2_chat, planted_features):
    """On real prompts of a planted feature: P(yes) of the batched judge (shared prefix once, tails padded) is the
    one-forward-pass-per-question P(yes), and so are the answers."""
    import random

    from sparsecode.explain.prompts import detection_messages
    from sparsecode.explain.scoring import detection_items
    from sparsecode.explain.store import ExplainStore

    store = ExplainStore(planted_features / "features.sqlite")
    top, quantile = store.contexts(APPLES)
    items = detection_items(top + quantile, store.negatives(APPLES), 4, random.Random(0))
    store.close()
    questions = [detection_messages("fruit, apples", item.excerpt) for item in items]
    assert len(questions) >= 4 and len({len(item.excerpt) for item in items}) > 1  # padding is exercised
    alone = [smollm2_chat.p_yes_alone(q) for q in questions]
    batched = smollm2_chat.judge(questions)
    assert [a.p_yes for a in batched] == pytest.approx(alone, abs=1e-4)
    assert [a.yes for a in batched] == [p > 0.5 for p in alone]


def test_the_explanation_is_the_same_when_generation_stops_after_its_first_line(smollm2_chat, planted_features):
    from sparsecode.explain.prompts import explain_messages, parse_explanation, render
    from sparsecode.explain.store import ExplainStore

    store = ExplainStore(planted_features / "features.sqlite")
    top, _ = store.contexts(SCRIPT)
    store.close()
    messages = explain_messages([render(c.tokens, c.firing) for c in top])
    whole, short = smollm2_chat.chat(messages, 24), smollm2_chat.chat(messages, 24, first_line=True)
    assert parse_explanation(short) == parse_explanation(whole) and whole.startswith(short)
