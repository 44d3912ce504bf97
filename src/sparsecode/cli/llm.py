"""serve a local language model as an OpenAI-compatible chat API
`sparsecode llm serve` loads a transformers causal LM (default: the embedded SmolLM2-135M-Instruct) and answers
POST /v1/chat/completions, so that `sparsecode explain --llm URL` (or any OpenAI-style client) can use it over HTTP.
Greedy decoding, one request at a time. See docs/explain.md.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsecode llm serve                                   # SmolLM2-135M-Instruct at http://127.0.0.1:8001/v1
  sparsecode llm serve --llm-model path/to/instruct-model --port 8080
  sparsecode explain runs/demo --llm http://127.0.0.1:8001/v1 --llm-model smollm2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["serve"], help="what to do: serve (the only action)")
    p.add_argument(
        "--llm-model",
        metavar="PATH",
        help="transformers model folder with a chat template (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8001, help="port")
    p.add_argument("--device", default="cpu", help="torch device of the model")


def run(args: argparse.Namespace) -> int:
    from ..explain.llm import LocalChat
    from ..explain.server import create_llm_app
    from ..serving import base_url, bind, check_port, serve_forever

    check_port(args.port)
    chat = LocalChat(args.llm_model, args.device)
    sock = bind(args.host, args.port)
    print(f"serving {chat.name} at {base_url(args.host, sock)}/v1  (Ctrl-C to stop)", flush=True)
    serve_forever(create_llm_app(chat), sock)
    return 0
