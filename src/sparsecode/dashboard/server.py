"""Run the dashboard with uvicorn: in the foreground (`sparsecode serve`) or in a background thread on a free
loopback port (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from ..errors import ConfigError
from .app import create_app
from .guard import loopback_hosts


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the dashboard of ``run_dir`` until Ctrl-C."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    app = create_app(run_dir, allowed_hosts=loopback_hosts(host))
    sock = _bind(host, port)
    print(f"serving {run_dir} at http://{_url_host(host)}:{sock.getsockname()[1]}/  (Ctrl-C to stop)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@contextmanager
def background_server(run_dir: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """The dashboard of ``run_dir`` served from a thread on a free port; yields its base URL, stops on exit."""
    sock = _bind(host, 0)
    app = create_app(run_dir, allowed_hosts=loopback_hosts(host))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{_url_host(host)}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
