"""Run the dashboard with uvicorn: in the foreground (`sparsecode serve`) or in a background thread on a free
loopback port (tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..serving import background, base_url, bind, check_port, serve_forever
from .app import create_app
from .guard import loopback_hosts


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the dashboard of ``run_dir`` until Ctrl-C."""
    check_port(port)
    app = create_app(run_dir, allowed_hosts=loopback_hosts(host))
    sock = bind(host, port)
    print(f"serving {run_dir} at {base_url(host, sock)}/  (Ctrl-C to stop)", flush=True)
    serve_forever(app, sock)


@contextmanager
def background_server(run_dir: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """The dashboard of ``run_dir`` served from a thread on a free port; yields its base URL, stops on exit."""
    with background(create_app(run_dir, allowed_hosts=loopback_hosts(host)), host) as url:
        yield url
