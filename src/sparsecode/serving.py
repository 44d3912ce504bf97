"""Serving an ASGI app with uvicorn on a socket bound here: in the foreground until Ctrl-C, or from a background
thread on a free port (tests, benchmarks). Used by the dashboard (`sparsecode serve`) and the local LLM server
(`sparsecode llm serve`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from .errors import ConfigError


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port); a ConfigError naming the flags if it fails."""
    check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit this; without it, uvicorn on a pre-bound socket answers keep-alive requests
    # ~40 ms late (Nagle's algorithm meets the client's delayed ACK between the header and body writes)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host"
        ) from None
    sock.listen(128)
    return sock


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def base_url(host: str, sock: socket.socket) -> str:
    return f"http://{url_host(host)}:{sock.getsockname()[1]}"


def serve_forever(app: Any, sock: socket.socket) -> None:
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@contextmanager
def background(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """``app`` served from a thread on a free port of ``host``; yields its base URL, stops on exit."""
    sock = bind(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield base_url(host, sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
