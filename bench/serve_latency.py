"""Latency of the feature dashboard under a bounded burst of concurrent requests on loopback.

Starts `sparsecode serve RUN` in a subprocess on a free port (or targets a running server with --url), then sends
--requests requests from --concurrency threads (one keep-alive connection each), a fixed mix of browse pages:
feature pages (HTML 40%, JSON 20%), list pages (HTML 20%, JSON 10%, random sort/filter/page) and token searches
(10%). Reports p50/p90/p99/max latency, throughput and errors (non-200 answers and failed connections).

    python bench/serve_latency.py --run runs/demo [--requests 2000] [--concurrency 32] [--seed 0]
    python bench/serve_latency.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlparse

SEARCH_WORDS = ("the", "value", "function", "class", "return", "if", "list", "error", "name", "string")


def request_mix(n: int, n_latents: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    paths = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            paths.append(f"/features/{rng.randrange(n_latents)}")
        elif kind < 0.6:
            paths.append(f"/features/{rng.randrange(n_latents)}.json")
        elif kind < 0.9:
            sort = rng.choice(["max_act", "density", "mean_act", "id"])
            filt = rng.choice(["all", "all", "alive", "dense", "dead"])
            suffix = ".json" if kind >= 0.8 else ""
            paths.append(
                f"/features{suffix}?sort={sort}&order={rng.choice(['asc', 'desc'])}&filter={filt}"
                f"&page={rng.randint(1, 5)}"
            )
        else:
            paths.append(f"/features?q={quote(rng.choice(SEARCH_WORDS))}")
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "sparsecode", "serve", run, "--port", str(port)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start within 60 s")


def run_burst(url: str, paths: list[str], concurrency: int) -> tuple[list[float], dict[str, int], float]:
    u = urlparse(url)
    local = threading.local()
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def one(path: str) -> float | None:
        con = getattr(local, "con", None)
        if con is None:
            con = local.con = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        start = time.perf_counter()
        try:
            con.request("GET", path)
            resp = con.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            local.con = None
            with lock:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return None
        elapsed = time.perf_counter() - start
        if status != 200:
            with lock:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            return None
        return elapsed

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, paths))
    wall = time.perf_counter() - start
    return [r for r in results if r is not None], errors, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", help="run folder with features.sqlite: start `sparsecode serve` on it")
    target.add_argument("--url", help="base URL of a running dashboard on loopback, e.g. http://127.0.0.1:8000")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=50, help="requests sent first and not counted")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        raise SystemExit("--requests must be in 1..100000 and --concurrency in 1..256 (a bounded burst)")

    proc = None
    if args.run:
        proc, url = start_server(args.run)
    else:
        url = args.url.rstrip("/")
        if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url must point at a loopback address")
    try:
        con = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=30)
        con.request("GET", "/meta.json")
        meta = json.loads(con.getresponse().read())
        con.close()
        paths = request_mix(args.warmup + args.requests, int(meta["n_latents"]), args.seed)
        run_burst(url, paths[: args.warmup], args.concurrency)
        latencies, errors, wall = run_burst(url, paths[args.warmup :], args.concurrency)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    ms = sorted(1000 * x for x in latencies)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) >= 2 else ms * 99
    print(
        f"dashboard {url}: {meta['n_latents']} features; {args.requests} requests, {args.concurrency} concurrent "
        f"(mix: feature HTML 40%, feature JSON 20%, list HTML 20%, list JSON 10%, token search 10%)"
    )
    print(f"  latency p50 {q[49]:.1f} ms   p90 {q[89]:.1f} ms   p99 {q[98]:.1f} ms   max {ms[-1]:.1f} ms")
    print(
        f"  throughput {args.requests / wall:.0f} req/s over {wall:.1f} s;  errors {sum(errors.values())}"
        + (f" {errors}" if errors else "")
    )


if __name__ == "__main__":
    main()
