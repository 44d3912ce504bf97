"""The dashboard on a causal-LM run: each feature page steers (baseline vs steered text, as `sparsecode steer`
gives it) and shows its measured ablation effect; /fires names each feature's top tokens; every model-backed
route answers 64 concurrent requests (8 at a time) exactly as it answers each alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from lm_runs import write_run

from sparsecode.interventions.ablate import ablate_features
from sparsecode.interventions.steer import steer_text
from sparsecode.io import write_json
from sparsecode.run import load_run


@pytest.fixture(scope="module")
def lm_client(tmp_path_factory, tiny_gpt2_dir):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app
    from sparsecode.features import FeaturesConfig, build_features

    run_dir = write_run(tmp_path_factory.mktemp("dash-lm") / "run", tiny_gpt2_dir, hook="transformer.h.1")
    build_features(run_dir, FeaturesConfig(top_n=4, n_samples=6), progress=False)
    write_json(run_dir / "ablation.json", ablate_features(load_run(run_dir), [0, 1], max_tokens=150, progress=False))
    with TestClient(create_app(run_dir)) as c:
        yield c, run_dir


def _live(client) -> int:
    rows = client.get("/features.json", params={"sort": "density", "order": "desc", "per_page": 1}).json()
    return rows["features"][0]["id"]


def test_feature_page_steers_and_shows_its_ablation(lm_client):
    client, run_dir = lm_client
    fid = _live(client)
    r = client.get(f"/features/{fid}.json", params={"prompt": "the cat sat on", "strength": "6"})
    assert r.status_code == 200
    s = r.json()["steering"]
    expected = steer_text(load_run(run_dir), fid, 6.0, "the cat sat on", max_new_tokens=24)
    assert (s["baseline"], s["steered"]) == (expected["baseline"], expected["steered"])
    assert s["steered"] != s["baseline"]
    html = client.get(f"/features/{fid}", params={"prompt": "the cat sat on", "strength": "6"}).text
    assert "steered" in html and s["steered"].split()[0] in html
    page0 = client.get("/features/0.json").json()
    assert page0["ablation"]["feature"] == 0 and "steering" not in page0
    assert "CE increase" in client.get("/features/0").text
    assert client.get(f"/features/{fid}.json", params={"prompt": "x", "strength": "lots"}).status_code == 400
    out = client.get(f"/features/{fid}.json", params={"prompt": "x", "strength": "1e9"})
    assert out.status_code == 400


def test_fires_names_top_tokens(lm_client):
    client, _ = lm_client
    top = client.get("/fires.json", params={"text": "Line 4 says the cat sat on mat number 12"}).json()["top_features"]
    assert top and all(isinstance(t["top_tokens"], list) for t in top) and any(t["top_tokens"] for t in top)
    html = client.get("/fires", params={"text": "Line 4 says the cat sat on mat number 12"}).text
    assert "chip-tokens" in html


def test_model_backed_routes_under_concurrent_requests(lm_client):
    client, _ = lm_client
    fid = _live(client)
    urls = [
        (f"/features/{fid}.json", {"prompt": p, "strength": st})
        for p in ("the cat", "dogs bark at")
        for st in ("3", "-2")
    ]
    urls += [(f"/features/{fid}", {"prompt": "the cat", "strength": "3"})]
    urls += [("/fires.json", {"text": t}) for t in ("the cat sat", "Line 7 says dogs bark")]
    urls += [("/fires", {"text": "the cat sat"})]

    def body(url: str, r) -> object:
        if not url.endswith(".json"):
            return r.text
        out = r.json()
        out.get("steering", {}).pop("seconds", None)  # wall-clock timings: the only part that differs by design
        return out

    alone = {i: client.get(u, params=p) for i, (u, p) in enumerate(urls)}
    assert all(r.status_code == 200 for r in alone.values())
    expected = {i: body(urls[i][0], r) for i, r in alone.items()}

    def request(i: int) -> bool:
        k = i % len(urls)
        url, params = urls[k]
        r = client.get(url, params=params)
        return r.status_code == 200 and body(url, r) == expected[k]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(request, range(64)))
    assert results.count(False) == 0


def test_encoder_feature_page_steers_the_embedding(planted_features):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app

    with TestClient(create_app(planted_features)) as client:
        s = client.get("/features/1.json", params={"prompt": "there were apples", "strength": "5"}).json()["steering"]
    assert s["cosine"] < 1.0 and s["shift_towards"]


def test_attribution_page_shows_the_graph_attribute_wrote(tmp_path, tiny_gpt2_dir):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app
    from sparsecode.features import FeaturesConfig, build_features
    from sparsecode.interventions.circuit import attribute_prompt, write_graph

    up = write_run(tmp_path / "h0", tiny_gpt2_dir, hook="transformer.h.0")
    down = write_run(tmp_path / "h1", tiny_gpt2_dir, hook="transformer.h.1", seed=1)
    build_features(up, FeaturesConfig(top_n=2, n_samples=6), progress=False)
    with TestClient(create_app(up)) as client:
        empty = client.get("/attribution.json").json()
        assert empty["graph"] is None and "sparsecode attribute" in empty["how"]
        assert "No attribution graph" in client.get("/attribution").text
        assert client.get("/attribution.png").status_code == 404

        result, info = attribute_prompt([load_run(up), load_run(down)], "the cat sat on", " the", top=4)
        _, png_path = write_graph(result, info, up / "attribution")
        got = client.get("/attribution.json").json()["graph"]
        assert got["metric"] == result.metric and got["sites"] == ["transformer.h.0", "transformer.h.1"]
        written = {(n.site, n.latent, n.attribution) for n in result.nodes}
        assert {(n["site"], n["latent"], n["attribution"]) for n in got["nodes"]} == written
        assert all(n["here"] == (n["site"] == "transformer.h.0") for n in got["nodes"])
        assert len(got["edges"]) == len(result.edges) > 0  # strongest first
        assert [abs(e["weight"]) for e in got["edges"]] == sorted((abs(e.weight) for e in result.edges), reverse=True)
        assert client.get("/attribution.png").content == png_path.read_bytes()
        html = client.get("/attribution").text
        here = next(n for n in result.nodes if n.site == "transformer.h.0")
        assert 'src="/attribution.png"' in html and f'href="/features/{here.latent}"' in html
