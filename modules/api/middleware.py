"""ASGI middleware for the API: X-Process-Time, HTTP Basic auth and the request-body limit.

Auth and the body limit apply to the API's paths only (``/sdapi/``, and the OpenAPI docs when
auth is on); the web UI mounted on the same app has its own log-in (``--gradio-auth``).  The body
is read (and counted) here before the route sees it, so an oversized upload is refused with a
JSON 413 whether or not the client sent a Content-Length.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_PREFIX = "/sdapi/"
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


class ApiGuard:
    """Times every response; on API paths checks credentials and the body size before the route runs."""

    def __init__(self, app: ASGIApp, *, credentials: dict[str, str], max_body_bytes: int):
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in credentials.items()]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Process-Time", f"{time.perf_counter() - start:.4f}")
            await send(message)

        path = scope.get("path", "")
        is_api = path.startswith(API_PREFIX)
        is_docs = path.startswith(DOCS_PATHS)
        if self.credentials and (is_api or is_docs) and not self._authorized(scope):
            await _json(timed_send, 401, "Incorrect or missing username and password (HTTP Basic auth)",
                        "Unauthorized", {"WWW-Authenticate": 'Basic realm="sdapi"'})  # fmt: skip
            return
        if not is_api:
            await self.app(scope, receive, timed_send)
            return
        body = await self._read_body(scope, receive, timed_send)
        if body is None:
            return
        await self.app(scope, _replay(body, receive), timed_send)

    def _authorized(self, scope: Scope) -> bool:
        """HTTP Basic credentials, compared in constant time against every configured user."""
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        ok = False
        for known_user, known_password in self.credentials:
            ok |= secrets.compare_digest(user, known_user) & secrets.compare_digest(password, known_password)
        return ok

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 (too large) / when the client went away."""
        limit = self.max_body_bytes
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, limit, int(length))
            return None
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await _too_large(send, limit, None)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the buffered body to the app once, then passes on (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _too_large(send: Send, limit: int, length: int | None) -> None:
    size = f"{length / 2**20:.1f} MiB" if length is not None else "more than that"
    await _json(send, 413, f"request body too large: {size}; the limit is {limit / 2**20:g} MiB (--max-body-mb)",
                "RequestTooLarge", {"Connection": "close"})  # fmt: skip


async def _json(send: Send, status: int, detail: str, error: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail, "error": error}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
