"""What every dashboard response goes through (an ASGI middleware, so routes added later are covered too):

- security headers: a Content-Security-Policy that allows only the dashboard's own scripts and no framing
  (``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for older browsers), ``X-Content-Type-Options:
  nosniff``, no referrer;
- a ``Host`` check when serving on a loopback address: a page on another site whose name an attacker re-points
  at 127.0.0.1 (DNS rebinding) sends its own name as the Host, and gets 400 instead of the run's data;
- HEAD answered like GET, without the body (FastAPI's GET routes alone would answer 405).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        (
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        ),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def loopback_hosts(host: str) -> list[str] | None:
    """The Host names a server bound to ``host`` answers: its loopback names when ``host`` is a loopback address or
    name, None (any) when it listens on other interfaces (the user chose to be reachable by other names)."""
    if host == "localhost":
        return list(LOOPBACK_NAMES)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return sorted({host, *LOOPBACK_NAMES}) if address.is_loopback else None


def _host_name(header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'localhost' -> 'localhost'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """Wraps the dashboard app; ``allowed_hosts`` None accepts any Host header."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed is not None:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if _host_name(host) not in self.allowed:
                await _refuse(send, f"unexpected Host header {host[:60]!r}; open the dashboard at its own address")
                return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}  # Content-Length stays that of the GET answer, as HTTP says
            await send(message)

        await self.app(scope, receive, send_guarded)


async def _refuse(send: Send, text: str) -> None:
    body = text.encode() + b"\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})
