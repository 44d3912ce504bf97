"""`sparsecode explain` against a fake OpenAI-compatible server on loopback: rate limits are retried, and a refused
key, an unreachable endpoint or malformed replies end in one line with the finished features kept."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from explain_world import CAPS, DIGITS, RuleModel, write_world

from sparsecode.cli import main
from sparsecode.explain.llm import Usage, p_yes_from_logprobs

SECRET = "sk-test-0123456789-secret"


@contextmanager
def fake_api(behaviour, with_body=False):
    """A chat-completions endpoint whose reply to the n-th request (from 0) is ``behaviour(n, messages)`` (with
    ``with_body``: ``behaviour(n, messages, request body)``): (status, body, headers). Yields (base URL, list of the
    Authorization headers received)."""
    seen: list[str | None] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                n = len(seen)
                seen.append(self.headers.get("Authorization"))
            status, reply, headers = behaviour(n, body["messages"], *([body] if with_body else []))
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


def _scores(run):
    con = sqlite3.connect(run / "features.sqlite")
    rows = con.execute("SELECT feature, scorer, baseline, balanced_accuracy, auc FROM explanation_scores")
    return {(f, s, b): (bal, auc) for f, s, b, bal, auc in rows}


def with_logprobs(n, messages, body):
    """The rule model's answers, with the log-probabilities of "Yes" and "No" for the first token when asked."""
    status, reply, headers = rules(n, messages)
    text = reply["choices"][0]["message"]["content"]
    if body.get("logprobs") and body["max_tokens"] < 10:  # a judge question
        yes, no = (-0.05, -3.0) if text == "yes" else (-3.5, -0.03)
        top = [{"token": "Yes", "logprob": yes}, {"token": " No", "logprob": no}, {"token": "The", "logprob": -6.0}]
        first = {"token": "Yes" if text == "yes" else " No", "logprob": max(yes, no), "top_logprobs": top}
        reply["choices"][0]["logprobs"] = {"content": [{"token": "\n", "logprob": -9.0, "top_logprobs": []}, first]}
    return status, reply, headers


def test_auc_from_the_endpoints_log_probabilities_or_empty_and_said_so(tmp_path, capsys):
    with_lp, without, refusing = (write_world(tmp_path / name) for name in ("lp", "plain", "refusing"))
    with fake_api(with_logprobs, with_body=True) as (url, _):
        assert _run(with_lp, url) == 0
    scores = _scores(with_lp)
    assert all(scores[(f, s, 0)] == (1.0, 1.0) for f in (DIGITS, CAPS) for s in ("detection", "fuzzing"))
    assert all(auc == pytest.approx(bal) for bal, auc in scores.values())  # two-valued P(yes): AUC = balanced acc.
    out = capsys.readouterr().out
    assert "AUC 1.000" in out and "no AUC" not in out

    with fake_api(rules) as (url, _):  # an API that ignores the request for log-probabilities
        assert _run(without, url) == 0
    assert {auc for _, auc in _scores(without).values()} == {None}
    out = capsys.readouterr().out
    assert "detection: no AUC for 2 of 2 scored features (the judge gave no P(yes)" in out

    asked: list[bool] = []

    def no_logprobs(n, messages, body):
        asked.append("logprobs" in body)
        return (400, {"error": {"message": "logprobs not supported"}}, {}) if "logprobs" in body else rules(n, messages)

    with fake_api(no_logprobs, with_body=True) as (url, _):  # one that refuses them: asked once, then not again
        assert _run(refusing, url, "--concurrency", "1") == 0
    assert asked.count(True) == 1 and {auc for _, auc in _scores(refusing).values()} == {None}
    assert _explained(refusing) == {DIGITS: "numbers", CAPS: "capitalised words"}


def test_p_yes_from_log_probabilities():
    def lp(*pairs, chosen=0):
        top = [{"token": t, "logprob": v} for t, v in pairs]
        return {"content": [{**top[chosen], "top_logprobs": top}]}

    assert p_yes_from_logprobs(lp(("Yes", -0.5), ("No", -1.5), (" yes", -3.0))) == pytest.approx(1 / (1 + math.exp(-1)))
    # only one word listed: the other at most as likely as the least likely token listed (or what is left over)
    assert p_yes_from_logprobs(lp(("No", -0.5), ("The", -2.5))) == pytest.approx(1 / (1 + math.exp(2)))
    left_over = 1 - math.exp(-0.5) - 2 * math.exp(-2.0)  # 0.123: less than the least likely token listed
    assert p_yes_from_logprobs(lp(("No", -0.5), ("The", -2.0), ("A", -2.0))) == pytest.approx(
        1 / (1 + math.exp(-0.5 - math.log(left_over)))
    )
    assert p_yes_from_logprobs(lp(("Maybe", -0.1), ("The", -2.1))) is None
    assert p_yes_from_logprobs(None) is None and p_yes_from_logprobs({"content": []}) is None
    alone = p_yes_from_logprobs({"content": [{"token": "yes", "logprob": -0.2}]})  # no alternatives listed
    assert alone == pytest.approx(math.exp(-0.2))  # no has at most the probability yes leaves
