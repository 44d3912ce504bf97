"""Chat clients: an OpenAI-compatible HTTP API, or a transformers model in this process.

Both answer ``chat(messages, max_tokens) -> str`` (greedy: temperature 0), count requests against a budget and
add reported token usage to a shared tally. What ends a run is an ``LLMError`` (a one-line message: endpoint
unreachable, key refused, still rate limited after the retries); a reply that says nothing usable is the
caller's business (the prompt parsers return None).
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, DataError, SparsecodeError
from .config import LLMConfig
from .prompts import Messages, parse_yes_no

ANSWER_TOKENS = 4


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


class ChatClient(Protocol):
    name: str
    """Stored with every explanation and score (never a key or a URL's credentials)."""
    concurrency: int
    """Requests it may usefully have in flight."""

    def chat(self, messages: Messages, max_tokens: int) -> str: ...

    def judge(self, messages: Messages) -> bool | None:
        """The model's yes (True) / no (False) answer to a question; None if it gave neither."""
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
        key = os.environ.get(config.api_key_env)
        self.client = httpx.Client(timeout=config.timeout, headers={"Authorization": f"Bearer {key}"} if key else {})

    def chat(self, messages: Messages, max_tokens: int) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
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
            if r.status_code != 200:
                raise LLMError(
                    f"{self.url} answered {r.status_code} ({_api_message(r)}); check --llm (the API's base URL, "
                    "usually ending in /v1) and --llm-model"
                )
            return self._content(r)
        raise AssertionError("unreachable")

    def judge(self, messages: Messages) -> bool | None:
        return parse_yes_no(self.chat(messages, ANSWER_TOKENS))

    def _content(self, r: Any) -> str:
        """The reply's text; "" when the body is not a chat completion (counted as a malformed answer)."""
        try:
            data = r.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return ""
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            self.usage.add(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return content if isinstance(content, str) else ""

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        """Exponential back-off with jitter, or the server's Retry-After (seconds); returns early on stop."""
        delay = self.config.backoff * 2**attempt * (1 + 0.25 * random.random())
        try:
            delay = max(delay, float(retry_after)) if retry_after else delay
        except ValueError:
            pass
        self.stop.wait(min(delay, 300.0))


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
        self.name = f"local:{Path(folder).name}"
        self.usage = usage or Usage()
        self.lock = threading.Lock()

    def _prompt(self, messages: Messages) -> Any:
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        return (ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids).to(self.device)  # (1, T)

    def judge(self, messages: Messages) -> bool | None:
        """Greedy decoding's first token, restricted to the answers: one forward pass instead of a generation
        (the same answer whenever the model's top token is a yes or a no)."""
        import torch

        self.usage.take()
        with self.lock, torch.inference_mode():
            ids = self._prompt(messages)
            logits = self.model(ids).logits[0, -1]  # (vocab,)
        self.usage.add(int(ids.shape[1]), 1)
        yes, no = (logits[self._answer_ids[k]].max() for k in ("yes", "no"))
        return bool(yes > no)

    def chat(self, messages: Messages, max_tokens: int) -> str:
        self.usage.take()
        text, prompt_tokens, completion_tokens = self.complete(messages, max_tokens)
        self.usage.add(prompt_tokens, completion_tokens)
        return text

    def complete(self, messages: Messages, max_tokens: int) -> tuple[str, int, int]:
        """The reply to ``messages`` (greedy, at most ``max_tokens`` new tokens), with the prompt's and the reply's
        token counts. Not counted against a budget (the LLM server calls this)."""
        import torch

        with self.lock, torch.inference_mode():
            ids = self._prompt(messages)
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                repetition_penalty=1.3,  # greedy small models otherwise loop ("the the the ...")
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )  # (1, T + new)
        new = out[0, ids.shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(ids.shape[1]), int(new.shape[0])
