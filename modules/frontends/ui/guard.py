"""Gradio's queue calls checked before Gradio sees them: an unknown ``fn_index`` is a 404, not a bare 500.

``POST .../queue/join`` names the event handler by ``fn_index``; Gradio looks it up without a check
and answers an unknown one with an internal error.  ``GradioCallGuard`` reads the (small) JSON body,
and answers ``{"detail": ..., "error": ...}`` (the API's error shape) when the index is not one of the
Blocks' handlers; anything else goes on to Gradio unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from modules.frontends.http_guard import read_body, replay, send_error

JOIN_SUFFIX = "/queue/join"
MAX_JOIN_BYTES = 64 * 2**20


class GradioCallGuard:
    def __init__(self, app: ASGIApp, *, known_fn: Callable[[int], bool], max_body_bytes: int = MAX_JOIN_BYTES):
        self.app = app
        self.known_fn = known_fn
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith(JOIN_SUFFIX):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, send, Headers(scope=scope), self.max_body_bytes)
        if body is None:
            return
        problem = self._problem(body)
        if problem is not None:
            await send_error(send, *problem, {})
            return
        await self.app(scope, replay(body, receive), send)

    def _problem(self, body: bytes) -> tuple[int, str, str] | None:
        try:
            payload = json.loads(body)
        except ValueError:
            return 422, "the body is not JSON", "ValidationError"
        if not isinstance(payload, dict):
            return 422, "the body must be a JSON object", "ValidationError"
        fn_index = payload.get("fn_index")
        if fn_index is None:
            return None  # named by api_name / trigger: Gradio checks those itself
        if isinstance(fn_index, bool) or not isinstance(fn_index, int):
            return 422, "fn_index must be a whole number", "ValidationError"
        if not self.known_fn(fn_index):
            return 404, f"no event handler with fn_index {fn_index}", "UnknownFunction"
        return None
