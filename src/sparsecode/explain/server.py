"""An OpenAI-compatible chat API over a local transformers model (`sparsecode llm serve`).

    POST /v1/chat/completions   {"messages": [{"role", "content"}, ...], "max_tokens": N}: greedy reply + usage
                                (+ "logprobs": true, "top_logprobs": K: each reply token's log-probabilities)
    GET  /v1/models             the one model served

Enough of the API for `sparsecode explain --llm URL` and other OpenAI-style clients; any "model" value is
accepted (one model is served). Requests are answered one at a time.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .llm import LocalChat

MAX_TOKENS_LIMIT = 2048
DEFAULT_MAX_TOKENS = 256
MAX_TOP_LOGPROBS = 20


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def _messages(body: Any) -> list[dict[str, str]] | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            return None
        if not isinstance(m.get("content"), str):
            return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def create_llm_app(chat: LocalChat) -> FastAPI:
    app = FastAPI(title="sparsecode llm", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": chat.name, "object": "model", "owned_by": "sparsecode"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not JSON")
        messages = _messages(body)
        if messages is None:
            return _error(400, "messages must be a non-empty list of {role: system|user|assistant, content: text}")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            return _error(400, f"max_tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}")
        top = body.get("top_logprobs") if body.get("logprobs") is True else None
        top = 0 if body.get("logprobs") is True and top is None else top
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
            return _error(400, f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS}")
        from starlette.concurrency import run_in_threadpool

        reply = await run_in_threadpool(chat.complete, messages, max_tokens, False, top)
        logprobs = None if reply.logprobs is None else {"content": reply.logprobs}
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": chat.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "logprobs": logprobs,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
            }
        )

    return app
