"""The dashboard shows `sparsecode explain`'s results: explanation and detection score in the list and on each
feature page (HTML and JSON), sortable by score, searchable by the explanation's words, escaped."""

from __future__ import annotations

import pytest
from explain_world import CAPS, DEAD, DIGITS, RuleModel, write_world

from sparsecode.explain import ExplainConfig, explain_run
from sparsecode.explain.llm import Usage


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app

    run = write_world(tmp_path_factory.mktemp("world") / "run")
    app = create_app(run)  # opened before anything is explained: the tables appear while it serves
    with TestClient(app) as c:
        assert c.get("/features.json").json()["features"][0]["explanation"] is None
        usage = Usage()
        explain_run(
            run, RuleModel(usage), usage, ExplainConfig(test_examples=4), features=[DIGITS, CAPS], progress=False
        )
        yield c


def _ids(body):
    return [f["id"] for f in body["features"]]


def test_list_shows_explanations_and_sorts_by_detection(client):
    body = client.get("/features.json", params={"sort": "id", "order": "asc"}).json()
    rows = {f["id"]: f for f in body["features"]}
    assert rows[DIGITS]["explanation"] == "numbers" and rows[DIGITS]["detection"] == 1.0
    assert rows[DIGITS]["detection_auc"] == 1.0 and rows[DEAD]["detection_auc"] is None
    assert rows[CAPS]["explanation"] == "capitalised words" and rows[DEAD]["explanation"] is None
    by_score = client.get("/features.json", params={"sort": "detection", "order": "asc"}).json()
    assert _ids(by_score)[-1] == DEAD  # unexplained last, in either direction
    html = client.get("/features").text
    assert "capitalised words" in html and 'data-sort="detection"' in html and "AUC 1</small>" in html


def test_search_by_words_of_the_explanation(client):
    assert _ids(client.get("/features.json", params={"q": "numbers"}).json()) == [DIGITS]
    assert _ids(client.get("/features.json", params={"q": " Words  CAPITALISED"}).json()) == [CAPS]
    assert _ids(client.get("/features.json", params={"q": "numbers words"}).json()) == []
    for wildcard in ("%", "_", "capital_sed"):  # LIKE wildcards are matched literally
        assert client.get("/features.json", params={"q": wildcard}).json()["total"] == 0


def test_feature_page_shows_the_scores_and_the_baseline(client):
    f = client.get(f"/features/{DIGITS}.json").json()["explanation"]
    assert f["text"] == "numbers" and f["explainer"] == "rules" and f["prompt_version"] == 1
    real, shuffled = f["scores"]["detection"]["real"], f["scores"]["detection"]["shuffled"]
    assert real["balanced_accuracy"] == 1.0 and (real["tp"], real["tn"]) == (4, 4)
    assert shuffled["explanation_of"] == CAPS and f["scores"]["fuzzing"]["real"]["f1"] == 1.0
    assert real["auc"] == 1.0 and shuffled["auc"] == pytest.approx(shuffled["balanced_accuracy"])
    html = client.get(f"/features/{DIGITS}").text
    assert '<th title="area under the ROC curve' in html and f"{shuffled['auc']:.2g} <small" in html
    assert "“numbers”" in html and 'href="/features/1">1</a>' in html
    assert client.get(f"/features/{DEAD}.json").json()["explanation"] is None


def test_explanations_are_escaped(tmp_path):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app

    run = write_world(tmp_path / "run")
    usage = Usage()
    explain_run(run, RuleModel(usage, wrong="<script>alert(1)</script>"), usage, features=[DIGITS], progress=False)
    with TestClient(create_app(run)) as c:
        for page in (f"/features/{DIGITS}", "/features"):
            html = c.get(page).text
            assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_scores_stored_before_the_auc_existed_show_without_it(tmp_path):
    """A database explained by an older sparsecode (no auc column) is still served, the AUC shown as missing."""
    import sqlite3

    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app

    run = write_world(tmp_path / "run")
    usage = Usage()
    explain_run(run, RuleModel(usage), usage, features=[DIGITS], progress=False)
    con = sqlite3.connect(run / "features.sqlite")
    con.execute("ALTER TABLE explanation_scores DROP COLUMN auc")
    con.commit()
    con.close()
    with TestClient(create_app(run)) as c:
        assert c.get("/features.json").json()["features"][0]["detection_auc"] is None
        assert c.get(f"/features/{DIGITS}.json").json()["explanation"]["scores"]["detection"]["real"]["auc"] is None
        assert "“numbers”" in c.get(f"/features/{DIGITS}").text
