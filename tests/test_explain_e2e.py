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
        assert main([*args, "--llm", f"{url}/v1", "--llm-model", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert "explained 2 of 2 chosen features with smollm2" in out and "prompt +" in out  # usage was reported
    con = sqlite3.connect(run / "features.sqlite")
    explanations = {f: (text, model, version) for f, text, model, version in con.execute("SELECT * FROM explanations")}
    assert set(explanations) == {SCRIPT, APPLES}
    assert all(text.strip() and model == "smollm2" and version == 1 for text, model, version in explanations.values())
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
