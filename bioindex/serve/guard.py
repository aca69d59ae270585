"""What stands between the app and whoever reaches the server: one ASGI middleware that
checks the Host header, the bearer token and the body size (chunked bodies included), and
puts security headers on every answer. Refusals are JSON `{"error": …}` like every other
error of the API."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Collection
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "bioindex_token"
# The page's script and style are files of its own; inline styles stay (attributes).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")  # fmt: skip
# Swagger UI and ReDoc start from an inline script FastAPI writes.
DOCS_CSP = PAGE_CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "img-src 'self' data: blob:", "img-src 'self' data: blob:; worker-src 'self' blob:")
DOCS_PATHS = ("/docs", "/redoc")
OPEN_PATHS = ("/", "/page.js", "/favicon.ico")  # the page itself asks for the token
DRAIN_BYTES = 32 << 20
DRAIN_SECONDS = 10.0


class _TooLarge(Exception):
    pass


class Guard:
    def __init__(self, app: Any, *, hosts: Collection[str], token: str | None,
                 max_body: int) -> None:  # fmt: skip
        self.app = app
        self.hosts = {h.lower().strip("[]") for h in hosts}
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}  # fmt: skip
        path = scope.get("path", "")
        secured = _with_headers(send, DOCS_CSP if path.startswith(DOCS_PATHS) else PAGE_CSP)
        if _host_name(headers.get("host", "")) not in self.hosts:
            await _refuse(secured, 400, "unknown Host header (this server answers to "
                                        f"{', '.join(sorted(self.hosts))})")  # fmt: skip
            return
        if self.token and path not in OPEN_PATHS and not self._authorised(headers):
            await _refuse(secured, 401, "this server needs its token: send 'Authorization: "
                                        "Bearer TOKEN'")  # fmt: skip
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await _refuse(secured, 413, f"body larger than {self.max_body} bytes")
            return
        state = {"seen": 0, "over": False, "started": False}

        async def limited() -> Message:
            """`receive` that cuts a body (chunked or not) once it passes the limit."""
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_body:
                    state["over"] = True
                    raise _TooLarge
            return message

        async def sending(message: Message) -> None:
            if state["over"] and not state["started"]:
                return  # the app's answer to a cut-off body (FastAPI says 400) is replaced
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await secured(message)

        try:
            await self.app(scope, limited, sending)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _drain(receive)
            await _refuse(secured, 413, f"body larger than {self.max_body} bytes")

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            given = given[7:].strip()
        else:
            cookie = SimpleCookie()
            try:
                cookie.load(headers.get("cookie", ""))
            except Exception:  # noqa: BLE001 - a malformed cookie is no token
                return False
            given = unquote(cookie[TOKEN_COOKIE].value) if TOKEN_COOKIE in cookie else ""
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _with_headers(send: Send, csp: str) -> Send:
    extra = [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
             (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]  # fmt: skip

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused body, up to DRAIN_BYTES for DRAIN_SECONDS: a
    server that closes with unread bytes resets the connection, and the client never sees
    the 413 (a slightly too large upload deserves its message; a flood gets cut off)."""
    async def drop() -> None:
        left = DRAIN_BYTES
        while left > 0:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            left -= len(message.get("body", b""))

    try:
        await asyncio.wait_for(drop(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        pass


async def _refuse(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
