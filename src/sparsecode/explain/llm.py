"""Chat clients: an OpenAI-compatible HTTP API, or a transformers model in this process.

Both answer ``chat(messages, max_tokens) -> str`` (greedy: temperature 0), count requests against a budget and
add reported token usage to a shared tally. What ends a run is an ``LLMError`` (a one-line message: endpoint
unreachable, key refused, still rate limited after the retries); a reply that says nothing usable is the
caller's business (the prompt parsers return None).
"""

from __future__ import annotations

import inspect
import math
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, DataError, SparsecodeError
from .config import LLMConfig
from .prompts import Messages, parse_explanation, parse_yes_no

ANSWER_TOKENS = 4
TOP_LOGPROBS = 20
"""Log-probabilities asked for per answer token over HTTP (20 is the most OpenAI's API returns)."""
JUDGE_BATCH = 32
"""Questions the local judge answers in one forward pass (bounds the memory of a batch)."""


class LLMError(SparsecodeError):
    """The model cannot be asked any more in this run (the message says why and what to do)."""


class BudgetExhausted(Exception):
    """--max-requests requests have been sent."""


@dataclass
class Usage:
    """Requests sent and tokens reported so far (shared by the worker threads)."""

    max_requests: int | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self) -> None:
        """Count one request, or raise BudgetExhausted if the budget is spent."""
        with self.lock:
            if self.max_requests is not None and self.requests >= self.max_requests:
                raise BudgetExhausted
            self.requests += 1

    def add(self, prompt_tokens: Any, completion_tokens: Any) -> None:
        if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
            with self.lock:
                self.prompt_tokens += prompt_tokens
                self.completion_tokens += completion_tokens
                self.reported = True

    def cost(self, prices: tuple[float, float] | None) -> float | None:
        """USD so far at ``prices`` (per million prompt, completion tokens)."""
        if prices is None or not self.reported:
            return None
        return (self.prompt_tokens * prices[0] + self.completion_tokens * prices[1]) / 1e6


@dataclass(frozen=True)
class Answer:
    """A judge's answer to one yes/no question."""

    yes: bool | None
    """True for yes, False for no, None when the reply held neither."""
    p_yes: float | None = None
    """The model's probability of yes against no (its best-scoring spelling of each, renormalised over the two);
    None when the model does not expose it (an API that returns no log-probabilities)."""


class ChatClient(Protocol):
    name: str
    """Stored with every explanation and score (never a key or a URL's credentials)."""
    concurrency: int
    """Requests it may usefully have in flight."""

    def chat(self, messages: Messages, max_tokens: int, first_line: bool = False) -> str:
        """The model's reply (greedy); ``first_line``: only the reply's first line with a word in it is wanted, so a
        local model may stop generating after it."""
        ...

    def judge(self, questions: list[Messages]) -> list[Answer]:
        """The model's answer to each yes/no question (a feature's test set: the questions share a long prefix)."""
        ...


def open_client(config: LLMConfig, usage: Usage, stop: threading.Event | None = None) -> ChatClient:
    if config.llm == "local":
        return LocalChat(config.llm_model, config.device, usage)
    return HttpChat(config, usage, stop or threading.Event())


# -- HTTP ----------------------------------------------------------------------------------------------
class HttpChat:
    """POST {base}/chat/completions of an OpenAI-compatible API (vLLM, llama.cpp, Ollama, hosted APIs)."""

    def __init__(self, config: LLMConfig, usage: Usage, stop: threading.Event) -> None:
        import httpx

        self.url = config.llm.rstrip("/") + "/chat/completions"
        self.model = str(config.llm_model)
        self.name = self.model
        self.concurrency = config.concurrency
        self.config, self.usage, self.stop = config, usage, stop
        self.logprobs = True
        """Ask for log-probabilities (turned off for the run once the API refuses them with a 400)."""
        key = os.environ.get(config.api_key_env)
        self.client = httpx.Client(timeout=config.timeout, headers={"Authorization": f"Bearer {key}"} if key else {})

    def chat(self, messages: Messages, max_tokens: int, first_line: bool = False) -> str:
        return self._content(self._post(self._body(messages, max_tokens)))[0]

    def judge(self, questions: list[Messages]) -> list[Answer]:
        """One request per question; P(yes) from the first answer token's log-probabilities when the API returns
        them (asked for unless the API refused them once in this run)."""
        answers = []
        for messages in questions:
            body = self._body(messages, ANSWER_TOKENS)
            if self.logprobs:
                body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
            text, logprobs = self._content(self._post(body))
            answers.append(Answer(parse_yes_no(text), p_yes_from_logprobs(logprobs)))
        return answers

    def _body(self, messages: Messages, max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}

    def _post(self, body: dict[str, Any]) -> Any:
        """The 200 reply to ``body``, after the retries; raises LLMError when there is none."""
        import httpx

        cfg = self.config
        for attempt in range(cfg.retries + 1):
            last = attempt == cfg.retries
            self.usage.take()
            try:
                r = self.client.post(self.url, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out: may pass
                problem = f"cannot reach {self.url} ({type(e).__name__}: {_one_line(str(e))})"
                if last or (isinstance(e, httpx.ConnectError) and attempt >= 2):  # nobody listening: fail soon
                    raise LLMError(f"{problem} after {attempt} retries; is the server running? check --llm") from None
                self._wait(attempt, None)
                continue
            if r.status_code in (401, 403):
                raise LLMError(
                    f"{self.url} refused the request ({r.status_code}: {_api_message(r)}); check the API key in "
                    f"${cfg.api_key_env}"
                )
            if r.status_code == 429 or r.status_code >= 500:
                if last:
                    what = "rate limited (429)" if r.status_code == 429 else f"failing ({r.status_code})"
                    raise LLMError(
                        f"{self.url} is still {what} after {cfg.retries} retries ({_api_message(r)}); lower "
                        "--concurrency, raise --backoff or try later (finished features are kept)"
                    )
                self._wait(attempt, r.headers.get("retry-after"))
                continue
            if r.status_code == 400 and "logprobs" in body:  # an API without log-probabilities: ask without them
                self.logprobs = False
                return self._post({k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")})
            if r.status_code != 200:
                raise LLMError(
                    f"{self.url} answered {r.status_code} ({_api_message(r)}); check --llm (the API's base URL, "
                    "usually ending in /v1) and --llm-model"
                )
            return r
        raise AssertionError("unreachable")

    def _content(self, r: Any) -> tuple[str, Any]:
        """The reply's text ("" when the body is not a chat completion: counted as a malformed answer) and its
        log-probabilities (None when absent)."""
        try:
            data = r.json()
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return "", None
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            self.usage.add(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return (content if isinstance(content, str) else ""), choice.get("logprobs")

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        """Exponential back-off with jitter, or the server's Retry-After (seconds); returns early on stop."""
        delay = self.config.backoff * 2**attempt * (1 + 0.25 * random.random())
        try:
            delay = max(delay, float(retry_after)) if retry_after else delay
        except ValueError:
            pass
        self.stop.wait(min(delay, 300.0))


def p_yes_from_logprobs(logprobs: Any) -> float | None:
    """P(yes) against no from an OpenAI-style ``logprobs`` object: the top log-probabilities of the reply's first
    token that is not blank, best spelling of each word (yes, " Yes", ...). If only one word is among them, the
    other is taken as likely as it can be: no more than the least likely token listed, nor than the probability
    left over by all of them. None when neither is listed or the object is missing or malformed."""
    try:
        first = next(t for t in logprobs["content"] if str(t["token"]).strip())
        listed = {str(c["token"]): float(c["logprob"]) for c in [first, *(first.get("top_logprobs") or [])]}
    except (KeyError, TypeError, ValueError, StopIteration):
        return None
    best = {w: max((lp for t, lp in listed.items() if t.strip().lower() == w), default=None) for w in ("yes", "no")}
    if best["yes"] is None and best["no"] is None:
        return None
    left_over = 1 - sum(math.exp(lp) for lp in listed.values())
    floor = min(min(listed.values()), math.log(max(left_over, 1e-12)))
    yes, no = (floor if best[w] is None else best[w] for w in ("yes", "no"))
    return _sigmoid(yes - no)


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(text.split())[:limit]


def _api_message(r: Any) -> str:
    """The error message of an API reply, in one short line."""
    try:
        data = r.json()
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error") or data
    except (ValueError, AttributeError, KeyError, TypeError):
        message = r.text
    return _one_line(str(message)) or "no message"


# -- in-process ----------------------------------------------------------------------------------------
class LocalChat:
    """A transformers causal LM with a chat template, answering one request at a time (greedy decoding)."""

    concurrency = 1

    def __init__(self, path: str | None, device: str = "cpu", usage: Usage | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..device import check_device
        from ..sources.embedded import is_smollm2, smollm2_path
        from ..sources.hf import _dtype_kwarg, _quiet

        folder = smollm2_path() if path is None or is_smollm2(path) else path
        if not (Path(folder) / "config.json").is_file():
            raise ConfigError(f"--llm-model {folder}: not a transformers model folder (config.json is missing)")
        self.device = check_device(device)
        with _quiet():
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = (
                AutoModelForCausalLM.from_pretrained(folder, **{_dtype_kwarg(): torch.float32}).to(self.device).eval()
            )
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(f"{folder}: the tokenizer has no chat template; give an instruction-tuned model")
        # token ids that begin a yes or a no: the spellings a chat model starts its answer with
        self._answer_ids = {
            word: sorted(
                {self.tokenizer.encode(v, add_special_tokens=False)[0] for v in (word, word.title(), " " + word)}
            )
            for word in ("yes", "no")
        }
        # any id will do as padding (masked out); a tokenizer's pad id may be 0, so no `or` here
        pad = self.tokenizer.pad_token_id
        self._pad = pad if pad is not None else self.tokenizer.eos_token_id if self.tokenizer.eos_token_id else 0
        # transformers 5 renamed the KV cache argument and output past_key_values -> cache (the old name warns)
        self._cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.name = f"local:{Path(folder).name}"
        self.usage = usage or Usage()
        self.lock = threading.Lock()

    def _ids(self, messages: Messages) -> list[int]:
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return list(enc["input_ids"] if isinstance(enc, Mapping) else enc)

    def _prompt(self, messages: Messages) -> Any:
        import torch

        return torch.tensor([self._ids(messages)], device=self.device)  # (1, T)

    def judge(self, questions: list[Messages]) -> list[Answer]:
        """Greedy decoding's first token, restricted to the answers (the same answer whenever the model's top token
        is a yes or a no), for a batch of questions at once: their common prefix (the system prompt and the
        explanation) goes through the model once, and the rest of each question in one padded forward pass."""
        import torch

        for _ in questions:
            self.usage.take()
        prompts = [self._ids(q) for q in questions]
        margins: list[float] = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(prompts), JUDGE_BATCH):
                margins += self._margins(prompts[start : start + JUDGE_BATCH]).tolist()
        self.usage.add(sum(map(len, prompts)), len(prompts))
        return [Answer(m > 0, _sigmoid(m)) for m in margins]

    def _margins(self, prompts: list[list[int]]) -> Any:
        """Best yes logit minus best no logit after each prompt: the shared prefix once, then the prompts' tails
        padded on the left (between prefix and tail, masked out; positions continue from the prefix)."""
        import torch

        n = _common_prefix(prompts)
        if n == 0:  # nothing shared (no chat template does this): one at a time, no padding
            return torch.stack([self._margin_alone(p) for p in prompts])
        prefix = self.model(torch.tensor([prompts[0][:n]], device=self.device), use_cache=True, logits_to_keep=1)
        cache = getattr(prefix, self._cache_name)
        cache.batch_repeat_interleave(len(prompts))
        tails = [p[n:] for p in prompts]
        width = max(map(len, tails))
        ids = torch.full((len(tails), width), self._pad, dtype=torch.long)  # (B, W)
        mask = torch.ones((len(tails), n + width), dtype=torch.long)  # (B, n + W)
        for i, tail in enumerate(tails):
            ids[i, width - len(tail) :] = torch.tensor(tail)
            mask[i, n : n + width - len(tail)] = 0
        positions = (n - 1 + mask[:, n:].cumsum(1)).clamp(min=n)  # (B, W): a tail's tokens follow the prefix
        out = self.model(
            ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
            **{self._cache_name: cache},
            logits_to_keep=1,
        )
        return self._margin(out.logits[:, -1])  # (B,)

    def _margin(self, logits: Any) -> Any:
        """(B, vocab) -> (B,): best yes logit minus best no logit."""
        return logits[:, self._answer_ids["yes"]].amax(-1) - logits[:, self._answer_ids["no"]].amax(-1)

    def _margin_alone(self, prompt: list[int]) -> Any:
        import torch

        logits = self.model(torch.tensor([prompt], device=self.device)).logits[:, -1]  # (1, vocab)
        return self._margin(logits)[0]

    def p_yes_alone(self, messages: Messages) -> float:
        """P(yes) for one question in one plain forward pass (no cache, no padding), as the judge answered before
        it batched: the reference the batched judge is tested and timed against (tests, bench/explain_speed.py)."""
        import torch

        with self.lock, torch.inference_mode():
            margin = float(self._margin_alone(self._ids(messages)))
        return _sigmoid(margin)

    def chat(self, messages: Messages, max_tokens: int, first_line: bool = False) -> str:
        self.usage.take()
        reply = self.complete(messages, max_tokens, first_line)
        self.usage.add(reply.prompt_tokens, reply.completion_tokens)
        return reply.text

    def complete(
        self, messages: Messages, max_tokens: int, first_line: bool = False, top_logprobs: int | None = None
    ) -> Completion:
        """The reply to ``messages`` (greedy, at most ``max_tokens`` new tokens; with ``first_line``, stopped once a
        whole line with a word in it is out), with token counts and, if ``top_logprobs`` is given, each reply token's
        log-probability and the ``top_logprobs`` likeliest alternatives (of the distribution greedy decoding picked
        from). Not counted against a budget (the LLM server calls this)."""
        import torch

        with self.lock, torch.inference_mode():
            ids = self._prompt(messages)
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                repetition_penalty=1.3,  # greedy small models otherwise loop ("the the the ...")
                pad_token_id=self._pad,
                stopping_criteria=[_FirstLine(self.tokenizer, ids.shape[1])] if first_line else None,
                output_scores=top_logprobs is not None,
                return_dict_in_generate=True,
            )
        new = out.sequences[0, ids.shape[1] :]  # (new,)
        logprobs = None
        if top_logprobs is not None:
            logprobs = [self._token_logprobs(int(t), step[0], top_logprobs) for t, step in zip(new, out.scores)]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Completion(text, int(ids.shape[1]), int(new.shape[0]), logprobs)

    def _token_logprobs(self, token: int, scores: Any, k: int) -> dict[str, Any]:
        """OpenAI's shape of one reply token's log-probabilities, from that step's (vocab,) scores."""
        logp = scores.float().log_softmax(-1)
        top = logp.topk(k) if k else None
        alternatives = [] if top is None else zip(top.indices.tolist(), top.values.tolist())
        return {
            "token": self.tokenizer.decode([token]),
            "logprob": float(logp[token]),
            "top_logprobs": [{"token": self.tokenizer.decode([i]), "logprob": v} for i, v in alternatives],
        }


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None
    """Per reply token: {"token", "logprob", "top_logprobs": [{"token", "logprob"}, ...]} (OpenAI's shape)."""


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-min(max(x, -700.0), 700.0)))


def _common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token ids all ``prompts`` begin with, leaving each at least its last token."""
    n = min(map(len, prompts)) - 1
    for i in range(n):
        if len({p[i] for p in prompts}) > 1:
            return i
    return max(n, 0)


class _FirstLine:
    """Stops a generation once its text holds a whole line from which parse_explanation reads the explanation:
    what follows that line cannot change it."""

    def __init__(self, tokenizer: Any, start: int) -> None:
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        text = self.tokenizer.decode(input_ids[0, self.start :], skip_special_tokens=True)
        lines = text.rpartition("\n")[0]
        done = bool(lines) and parse_explanation(lines) is not None
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
