"""Every dashboard route under concurrent requests: 200 of them, 16 at a time, on a real server; each answer equals
the one the same request gets alone (the model-backed /fires included: it once failed about half its requests as
soon as two arrived together). `python bench/serve_load.py` measures the latency of the same kind of mix."""

from __future__ import annotations

import http.client
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

from planted_run import N_LATENTS

TEXTS = ("In 1999 there were 42 apples.", "Never trust <script>alert(1)</script> here", "apples and oranges", "x")


def route_mix(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (method, path) pairs drawn over every route, malformed requests included."""
    rng = random.Random(seed)
    makers = [
        lambda: "/",
        lambda: f"/features?sort={rng.choice(['max_act', 'density', 'id'])}&filter={rng.choice(['all', 'dead'])}",
        lambda: f"/features.json?page={rng.randint(1, 3)}&per_page={rng.randint(1, 5)}",
        lambda: f"/features?q={quote(rng.choice(['apples', '3', 'zzz']))}",
        lambda: f"/features/{rng.randrange(N_LATENTS)}",
        lambda: f"/features/{rng.randrange(N_LATENTS)}.json",
        lambda: f"/features/{rng.choice(['99', 'x', '-1'])}",  # 404 / 400
        lambda: f"/fires?text={quote(rng.choice(TEXTS))}",
        lambda: f"/fires.json?text={quote(rng.choice(TEXTS))}",
        lambda: "/meta.json",
        lambda: "/static/app.js",
    ]
    return [("HEAD" if rng.random() < 0.1 else "GET", rng.choice(makers)()) for _ in range(n)]


def fetch(base: str, method: str, path: str, local: threading.local | None = None) -> tuple[int, bytes]:
    u = urlsplit(base)
    con = getattr(local, "con", None) if local is not None else None
    if con is None:
        con = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        if local is not None:
            local.con = con
    con.request(method, path)
    r = con.getresponse()
    return r.status, r.read()


def test_every_route_under_concurrent_requests(planted_features):
    from sparsecode.dashboard.server import background_server

    requests = route_mix(200, seed=0)
    with background_server(planted_features) as base:
        alone = {req: fetch(base, *req) for req in sorted(set(requests))}  # one at a time
        assert {status for status, _ in alone.values()} <= {200, 307, 400, 404}
        assert alone[("GET", "/fires.json?text=apples%20and%20oranges")][0] == 200
        local = threading.local()
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda req: fetch(base, *req, local=local), requests))
    wrong = [(req, got[0]) for req, got in zip(requests, together) if got != alone[req]]
    assert not wrong, f"{len(wrong)} of {len(requests)} answers differ from the same request alone: {wrong[:5]}"
