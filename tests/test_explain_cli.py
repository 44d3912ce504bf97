"""`sparsecode explain` against a fake OpenAI-compatible server on loopback: rate limits are retried, and a refused
key, an unreachable endpoint or malformed replies end in one line with the finished features kept."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from explain_world import CAPS, DIGITS, RuleModel, write_world

from sparsecode.cli import main
from sparsecode.explain.llm import Usage

SECRET = "sk-test-0123456789-secret"


@contextmanager
def fake_api(behaviour):
    """A chat-completions endpoint whose reply to the n-th request (from 0) is ``behaviour(n, messages)``:
    (status, body, headers). Yields (base URL, list of the Authorization headers received)."""
    seen: list[str | None] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                n = len(seen)
                seen.append(self.headers.get("Authorization"))
            status, reply, headers = behaviour(n, body["messages"])
            data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def rules(n, messages):
    text = RuleModel(Usage()).answer(messages)
    return (
        200,
        {
            "choices": [{"message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1},
        },
        {},
    )


def _run(run, url, *extra):
    return main(
        [
            "explain",
            str(run),
            "--features",
            "0-2",
            "--llm",
            url,
            "--llm-model",
            "m",
            "--backoff",
            "0.01",
            "--test-examples",
            "2",
            "--quiet",
            *extra,
        ]
    )


def _explained(run):
    return dict(sqlite3.connect(run / "features.sqlite").execute("SELECT feature, text FROM explanations").fetchall())


def test_rate_limits_are_retried_and_the_key_is_sent_but_never_stored(tmp_path, capsys, monkeypatch):
    run = write_world(tmp_path / "run")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def limited(n, messages):
        if n < 3:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        return rules(n, messages)

    with fake_api(limited) as (url, seen):
        assert _run(run, url, "--price", "1,2") == 0
    out = capsys.readouterr().out
    assert _explained(run) == {DIGITS: "numbers", CAPS: "capitalised words"}
    assert "detection, mean balanced accuracy: explanations 1.000" in out and "$0.00" in out
    assert set(seen) == {f"Bearer {SECRET}"}
    assert SECRET.encode() not in (run / "features.sqlite").read_bytes()


def test_a_refused_key_stops_with_one_line_and_keeps_finished_features(tmp_path, capsys, monkeypatch):
    run = write_world(tmp_path / "run")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    per_feature = 1 + 4 + 4  # explanation, detection and fuzzing with 2 + 2 contexts each

    def expires(n, messages):
        if n >= per_feature:
            return 401, {"error": {"message": "Incorrect API key provided"}}, {}
        return rules(n, messages)

    with fake_api(expires) as (url, _):
        assert _run(run, url, "--concurrency", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "401" in err and "$OPENAI_API_KEY" in err
    assert SECRET not in err
    assert _explained(run) == {DIGITS: "numbers"}  # the feature finished before the key was refused is kept
    with fake_api(rules) as (url, _):  # and the next run carries on from there
        assert _run(run, url) == 0
    assert _explained(run) == {DIGITS: "numbers", CAPS: "capitalised words"}


def test_an_unreachable_endpoint_is_one_line(tmp_path, capsys):
    run = write_world(tmp_path / "run")
    with fake_api(rules) as (url, _):
        pass  # closed again: nothing listens on that port now
    assert _run(run, url) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach") and err.count("\n") == 0
    assert _explained(run) == {}


def test_malformed_replies_explain_nothing_and_say_so(tmp_path, capsys):
    run = write_world(tmp_path / "run")
    with fake_api(lambda n, m: (200, "<html>not json</html>", {})) as (url, _):
        assert _run(run, url) == 0
    out = capsys.readouterr().out
    assert "2 features got no usable explanation" in out and _explained(run) == {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--llm", "ftp://x"], "--llm must be local or an http(s) URL"),
        (["--llm", "http://127.0.0.1:9/v1"], "needs --llm-model"),
        (["--features", "5-2"], "not a list of feature ids"),
        (["--scorers", "vibes"], "explain.scorers must be one of"),
        (["--features", "7"], "no feature 7"),
        (["--price", "cheap"], "--price must be two numbers"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    run = write_world(tmp_path / "run")
    extra = [] if "--llm" in args else ["--llm", "http://127.0.0.1:9/v1", "--llm-model", "m"]
    assert main(["explain", str(run), *extra, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_database_without_random_contexts_asks_for_a_rebuild(tmp_path, capsys):
    run = write_world(tmp_path / "run")
    sqlite3.connect(run / "features.sqlite", isolation_level=None).execute("DROP TABLE random_contexts")
    assert main(["explain", str(run), "--llm", "http://127.0.0.1:9/v1", "--llm-model", "m"]) == 2
    assert "rebuild it with `sparsecode features" in capsys.readouterr().err
