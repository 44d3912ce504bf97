"""Load on every dashboard route at once, the model-backed "what fires here?" included: p50/p99 latency per route
kind and overall, throughput, errors.

Starts `sparsecode serve RUN` in a subprocess on a free loopback port (see serve_latency.py, which measures the
browse pages alone), sends --requests requests from --concurrency threads (one keep-alive connection each): feature
pages and lists (HTML and JSON), token searches, /fires and /fires.json on short texts, /meta.json, static files and
HEAD requests. Without --run it serves a small run it builds first under --workdir: the tiny planted-feature run of
the tests (a 2-layer, 32-wide random BERT with MiniLM's tokenizer; seconds to build).

    python bench/serve_load.py [--run runs/demo] [--requests 1000] [--concurrency 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlparse

from serve_latency import start_server

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "In 1999 there were 42 apples and 7 oranges on the table.",
    "def f(x): return x + 1",
    "Sparse autoencoders find linear features in superposition.",
)
KINDS = {  # kind -> share of the requests
    "feature": 0.25,
    "list": 0.2,
    "search": 0.1,
    "fires": 0.25,
    "meta/static": 0.1,
    "head": 0.1,
}


def request_mix(n: int, n_latents: int, seed: int) -> list[tuple[str, str, str]]:
    """(kind, method, path) triples in the shares of KINDS."""
    rng = random.Random(seed)
    out = []
    for kind in rng.choices(list(KINDS), weights=list(KINDS.values()), k=n):
        fid = rng.randrange(n_latents)
        path = {
            "feature": f"/features/{fid}" + rng.choice(["", ".json"]),
            "list": f"/features{rng.choice(['', '.json'])}?sort={rng.choice(['max_act', 'density', 'id'])}"
            f"&page={rng.randint(1, 3)}",
            "search": f"/features?q={quote(rng.choice(['the', 'apple', 'return', 'x']))}",
            "fires": f"/fires{rng.choice(['', '.json'])}?text={quote(rng.choice(TEXTS))}",
            "meta/static": rng.choice(["/meta.json", "/static/style.css", "/static/app.js"]),
            "head": rng.choice([f"/features/{fid}", "/features", "/meta.json"]),
        }[kind]
        out.append((kind, "HEAD" if kind == "head" else "GET", path))
    return out


def run_burst(url: str, requests: list[tuple[str, str, str]], concurrency: int):
    u = urlparse(url)
    local = threading.local()

    def one(req: tuple[str, str, str]) -> tuple[str, float, str | None]:
        kind, method, path = req
        con = getattr(local, "con", None) or http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        local.con = con
        start = time.perf_counter()
        try:
            con.request(method, path)
            resp = con.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as e:
            local.con = None
            return kind, time.perf_counter() - start, type(e).__name__
        return kind, time.perf_counter() - start, None if resp.status == 200 else f"HTTP {resp.status}"

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, requests))
    return results, time.perf_counter() - start


def build_planted_run(workdir: Path) -> Path:
    """The tests' planted-feature run with its feature database (see tests/planted_run.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from faults import write_tiny_bert
    from planted_run import write_corpus, write_model, write_planted_run

    from sparsecode.features import FeaturesConfig, build_features

    run = workdir / "run"
    if (run / "features.sqlite").is_file():
        return run
    workdir.mkdir(parents=True, exist_ok=True)
    model = write_model(write_tiny_bert(workdir / "tiny_bert"), workdir / "model")
    write_planted_run(run, model, write_corpus(workdir / "corpus"))
    build_features(run, FeaturesConfig(top_n=5), progress=False)
    return run


def percentiles(seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    if not ms:
        return "no successful requests"
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) >= 2 else ms * 99
    return f"p50 {q[49]:7.1f} ms   p99 {q[98]:7.1f} ms   max {ms[-1]:7.1f} ms   ({len(ms)} requests)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder with features.sqlite (default: build the small planted run)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "sparsecode-serve-load"))
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=50, help="requests sent first and not counted")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        raise SystemExit("--requests must be in 1..100000 and --concurrency in 1..256 (a bounded burst)")
    run = args.run or str(build_planted_run(Path(args.workdir)))

    proc, url = start_server(run)
    try:
        con = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=60)
        con.request("GET", "/meta.json")
        n_latents = int(json.loads(con.getresponse().read())["n_latents"])
        con.close()
        mix = request_mix(args.warmup + args.requests, n_latents, args.seed)
        run_burst(url, mix[: args.warmup], args.concurrency)
        results, wall = run_burst(url, mix[args.warmup :], args.concurrency)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    errors: dict[str, int] = {}
    for _, _, err in results:
        if err:
            errors[err] = errors.get(err, 0) + 1
    print(f"dashboard of {run}: {n_latents} features; {args.requests} requests, {args.concurrency} concurrent")
    for kind in KINDS:
        print(f"  {kind:12s} {percentiles([t for k, t, e in results if k == kind and e is None])}")
    print(f"  {'all':12s} {percentiles([t for _, t, e in results if e is None])}")
    print(
        f"  throughput {args.requests / wall:.0f} req/s over {wall:.1f} s;  errors {sum(errors.values())}"
        + (f" {errors}" if errors else "")
    )
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
