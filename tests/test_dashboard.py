"""The dashboard through FastAPI's in-process client: JSON and HTML agree with the database, token text is
escaped, ids are validated, no request reaches files outside the run folder, and browsing never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from planted_run import APPLES, DEAD, DENSE, N_LATENTS, SCRIPT, SCRIPT_TOKEN

from sparsecode.errors import DataError


@pytest.fixture(scope="module")
def client(planted_features):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app

    with TestClient(create_app(planted_features)) as c:
        yield c


def test_feature_list_json_sorts_filters_and_pages(client):
    r = client.get("/features.json", params={"sort": "density", "order": "desc", "per_page": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == N_LATENTS and body["pages"] == 3 and len(body["features"]) == 3
    densities = [f["density"] for f in body["features"]]
    assert densities == sorted(densities, reverse=True) and body["features"][0]["id"] == DENSE
    everything = client.get("/features.json", params={"sort": "max_act", "order": "asc", "per_page": 500}).json()
    maxima = [f["max_act"] for f in everything["features"]]
    assert maxima == sorted(maxima) and everything["features"][0]["id"] == DEAD
    page2 = client.get("/features.json", params={"sort": "id", "order": "asc", "per_page": 3, "page": 2}).json()
    assert [f["id"] for f in page2["features"]] == [3, 4, 5]

    dead = client.get("/features.json", params={"filter": "dead"}).json()
    assert [f["id"] for f in dead["features"]] == [DEAD]
    dense = client.get("/features.json", params={"filter": "dense"}).json()
    assert DENSE in [f["id"] for f in dense["features"]]
    alive = client.get("/features.json", params={"filter": "alive", "per_page": 500}).json()
    assert alive["total"] == N_LATENTS - 1 and DEAD not in [f["id"] for f in alive["features"]]


def test_search_by_id_and_by_token_text(client):
    by_id = client.get("/features.json", params={"q": str(APPLES)}).json()
    assert [f["id"] for f in by_id["features"]] == [APPLES]
    by_token = client.get("/features.json", params={"q": "  APPLES "}).json()
    ids = [f["id"] for f in by_token["features"]]
    assert by_token["sort"] == "match" and APPLES in ids and SCRIPT not in ids and DEAD not in ids
    matches = [f["match_act"] for f in by_token["features"]]
    assert matches == sorted(matches, reverse=True) and all(m > 0 for m in matches)
    assert matches[ids.index(APPLES)] == pytest.approx(1.0, abs=1e-4)
    script = client.get("/features.json", params={"q": SCRIPT_TOKEN}).json()
    assert script["features"][0]["id"] == SCRIPT
    assert client.get("/features.json", params={"q": "no-such-token"}).json()["total"] == 0
    for not_an_id in ("²", "9" * 30):  # searched as token text, found nowhere
        assert client.get("/features.json", params={"q": not_an_id}).json()["total"] == 0
    r = client.get("/features", params={"q": str(APPLES)}, follow_redirects=False)  # an id opens the feature
    assert r.status_code in (302, 307) and r.headers["location"] == f"/features/{APPLES}"


def test_feature_json_matches_the_database(client, planted_features):
    import sqlite3

    f = client.get(f"/features/{APPLES}.json").json()
    con = sqlite3.connect(planted_features / "features.sqlite")
    fire_count, max_act = con.execute("SELECT fire_count, max_act FROM features WHERE id = ?", (APPLES,)).fetchone()
    assert f["id"] == APPLES and f["fire_count"] == fire_count and f["max_act"] == max_act
    assert f["contexts"]["top"] and all(c["tokens"][c["center"]]["text"] == " apples" for c in f["contexts"]["top"])
    assert f["promoted"][0]["text"] == " apples" and len(f["suppressed"]) == len(f["promoted"])
    assert sum(b["count"] for b in f["histogram"]) == fire_count
    assert set(f["quantiles"]) == {"0.01", "0.1", "0.25", "0.5", "0.75", "0.9", "0.99"}
    assert client.get(f"/features/{DEAD}.json").json()["contexts"] == {"top": [], "quantile": []}
    meta = client.get("/meta.json").json()
    assert meta["n_latents"] == N_LATENTS and meta["hook"] == "embeddings.word_embeddings"


def test_feature_page_shades_tokens(client):
    html = client.get(f"/features/{APPLES}").text
    assert f"Feature {APPLES}" in html
    assert 'class="tok center" style="--a:1.0" data-act="1">apples</span>' in html
    assert 'style="--a:0.0" data-act="0">' in html  # neighbours where it does not fire: unshaded


def test_token_text_is_escaped(client):
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for url in (f"/features/{SCRIPT}", f"/features?q={SCRIPT_TOKEN}", "/features?sort=id&order=asc"):
        html = client.get(url).text
        assert escaped in html, url
        assert "<script>alert" not in html, url
    data = client.get(f"/features/{SCRIPT}.json").json()  # JSON carries the text itself, correctly encoded
    assert data["contexts"]["top"][0]["tokens"][data["contexts"]["top"][0]["center"]]["text"] == " " + SCRIPT_TOKEN
    html = client.get("/features/" + "%3Cscript%3Ex").text  # echoed input is escaped too
    assert "<script>x" not in html


@pytest.mark.parametrize(
    "url, status",
    [
        ("/features/abc", 400),
        ("/features/-1.json", 400),
        ("/features/1e3", 400),
        ("/features/ 1", 400),
        ("/features/12345678901234567890", 400),
        (f"/features/{N_LATENTS}", 404),
        (f"/features/{N_LATENTS}.json", 404),
        ("/features.json?sort=nope", 400),
        ("/features.json?page=0", 400),
        ("/features.json?per_page=100000", 400),
        ("/features.json?order=sideways", 400),
        ("/features.json?filter=x", 400),
        ("/features.json?sort=match", 400),
        ("/features.json?page=%C2%B2", 400),
        ("/features/%D9%A3", 400),
        ("/nope", 404),
        ("/fires.json?text=" + "a" * 2001, 400),
    ],
)
def test_malformed_and_unknown_requests(client, url, status):
    r = client.get(url)
    assert r.status_code == status, (url, r.text[:200])
    if url.endswith(".json") or ".json?" in url:
        assert "error" in r.json()


@pytest.mark.parametrize(
    "path",
    [
        "/static/../config.json",
        "/static/..%2f..%2fconfig.json",
        "/static/%2e%2e/db.py",
        "/static/../../../../etc/passwd",
        "/features/..%2f..%2fconfig.json",
        "/features/%2e%2e%2fconfig.json",
        "//etc/passwd",
        "/static//etc/passwd",
        "/features.sqlite",
        "/config.json",
        "/sae.safetensors",
    ],
)
def test_requests_cannot_read_files(client, planted_features, path):
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    body = r.content
    assert b'"hook"' not in body and b"root:" not in body and b"SQLite format" not in body
    assert b"FeatureDB" not in body and b"safetensors" not in body.lower()


def test_static_files_are_served(client):
    assert client.get("/static/style.css").status_code == 200
    assert "text/css" in client.get("/static/style.css").headers["content-type"]


def test_what_fires_here(client):
    r = client.get("/fires.json", params={"text": "The apples were red. apples"})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert [t["text"] for t in tokens] == [" the", " apples", " were", " red", " .", " apples"]
    for t in tokens:
        fired = {f["id"] for f in t["features"]}
        assert (APPLES in fired) == (t["text"] == " apples") and DEAD not in fired
    html = client.get("/fires", params={"text": f"say {SCRIPT_TOKEN}"}).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html


def test_what_fires_here_without_a_model(planted_features, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app

    run = tmp_path / "run"
    shutil.copytree(planted_features, run)
    config = json.loads((run / "config.json").read_text())
    config["source"]["model"] = str(tmp_path / "model-that-was-deleted")
    (run / "config.json").write_text(json.dumps(config))
    with TestClient(create_app(run)) as c:
        r = c.get("/fires", params={"text": "apples"})
        assert r.status_code == 503 and "the model is not available" in r.text and "model-that-was-deleted" in r.text
        assert c.get("/fires.json", params={"text": "apples"}).json()["error"].startswith("the model is not available")
        assert c.get(f"/features/{APPLES}.json").status_code == 200  # browsing still works


def test_missing_or_broken_database(tmp_path):
    from sparsecode.dashboard import create_app

    with pytest.raises(DataError, match="sparsecode features"):
        create_app(tmp_path)
    (tmp_path / "features.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="not a readable feature database"):
        create_app(tmp_path)


def test_browsing_never_imports_torch(planted_features):
    """The browse routes run in a fresh interpreter where importing torch fails."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        from fastapi.testclient import TestClient
        from sparsecode.dashboard import create_app
        with TestClient(create_app({str(planted_features)!r})) as c:
            for url in ["/features", "/features.json?sort=density", "/features/1", "/features/1.json",
                        "/features?q=apples", "/meta.json", "/static/style.css", "/features/x"]:
                r = c.get(url)
                assert r.status_code in (200, 400), (url, r.status_code)
            r = c.get("/fires", params={{"text": "apples"}})
            assert r.status_code == 503 and "the model is not available" in r.text, r.text[:300]
        assert sys.modules["torch"] is None
        print("ok")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_what_fires_here_under_concurrent_requests(client):
    """64 requests, 8 at a time, at both forms of /fires over a shared model: no errors, and every answer is the
    one the same request gets alone (each request's forward pass is hooked for that request only)."""
    from concurrent.futures import ThreadPoolExecutor

    texts = ["The apples were red. apples", f"say {SCRIPT_TOKEN} twice {SCRIPT_TOKEN}", "sparse features are rare"]
    texts += [f"{n} apples on table {n}, and more words to make this text longer than the others" for n in range(5)]
    urls = [(form, text) for form in ("/fires.json", "/fires") for text in texts]
    alone = {(form, text): client.get(form, params={"text": text}) for form, text in urls}
    assert all(r.status_code == 200 for r in alone.values())

    def request(i: int) -> bool:
        form, text = urls[i % len(urls)]
        r = client.get(form, params={"text": text})
        same = r.json() == alone[form, text].json() if form.endswith(".json") else r.text == alone[form, text].text
        return r.status_code == 200 and same

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(request, range(64)))
    assert results.count(False) == 0
