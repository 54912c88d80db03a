"""ASGI middleware for the API: X-Process-Time, HTTP Basic auth and the request-body limit.

With credentials, auth applies to every request the web UI does not serve: the API (``/sdapi/``),
the OpenAPI docs, routes extensions add, unknown paths.  The web UI, mounted at "/" on the same
app, has its own log-in (``--gradio-auth``, which defaults to the same credentials).  The body
limit applies to the API's paths; the body is read (and counted) here before the route sees it, so
an oversized upload is refused with a JSON 413 whether or not the client sent a Content-Length.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modules.frontends.auth_throttle import AuthThrottle
from modules.frontends.http_guard import read_body, replay, send_error

API_PREFIX = "/sdapi/"
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")
# Gradio embeds its API description (every endpoint, control label, checkpoint title) in the page even when
# it only shows the log-in form; the front end fetches it from /gradio_api/info (log-in required) when absent.
_EMBEDDED_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)


class ApiGuard:
    """Times every response; checks credentials outside the web UI and the body size on API paths."""

    def __init__(self, app: ASGIApp, *, credentials: dict[str, str], max_body_bytes: int, router: Router | None = None,
                 throttle: AuthThrottle | None = None):  # fmt: skip
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in credentials.items()]
        self.max_body_bytes = max_body_bytes
        self.router = router  # the app's routes: what a Mount (the web UI) serves keeps the UI's own log-in
        self.throttle = throttle or AuthThrottle()  # wrong passwords: logged and slowed per client address

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
        if self.credentials and self._guarded(scope) and not await self._checked_auth(scope, timed_send):
            return
        if not is_api:
            if self.credentials and path == "/" and scope.get("method") == "GET":
                await self._page_without_api_info(scope, receive, timed_send)
                return
            await self.app(scope, receive, timed_send)
            return
        body = await self._read_body(scope, receive, timed_send)
        if body is None:
            return
        await self.app(scope, replay(body, receive), timed_send)

    async def _page_without_api_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The web UI's page with the embedded API description left out (uncompressed, to edit it)."""
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"accept-encoding"]
        start: Message | None = None
        chunks: list[bytes] = []

        async def edited(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _EMBEDDED_API_INFO.sub(b"window.gradio_api_info = null;</script>", b"".join(chunks))
            MutableHeaders(scope=start)["content-length"] = str(len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(dict(scope, headers=headers), receive, edited)

    def _guarded(self, scope: Scope) -> bool:
        """Everything but what the mounted web UI serves (the first full route match is a Mount)."""
        path = scope.get("path", "")
        if path.startswith(API_PREFIX) or path.startswith(DOCS_PATHS) or self.router is None:
            return True
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return not isinstance(route, Mount)
        return True

    async def _checked_auth(self, scope: Scope, send: Send) -> bool:
        """True when the request's credentials are right; else answers 401 (or 429 while the client must wait)."""
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.throttle.wait_seconds(client)
        if wait > 0:
            await send_error(send, 429, f"too many failed log-ins; try again in {math.ceil(wait)} s", "TooManyRequests",
                        {"Retry-After": str(math.ceil(wait))})  # fmt: skip
            return False
        if self._authorized(scope):
            self.throttle.succeeded(client)
            return True
        if Headers(scope=scope).get("authorization"):  # a wrong password (no header at all is not a guess)
            self.throttle.failed(client, f"API log-in for {scope.get('path', '')[:100]}")
        await send_error(send, 401, "Incorrect or missing username and password (HTTP Basic auth)",
                    "Unauthorized", {"WWW-Authenticate": 'Basic realm="sdapi"'})  # fmt: skip
        return False

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
        return await read_body(receive, send, Headers(scope=scope), self.max_body_bytes)

