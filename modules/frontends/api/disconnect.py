"""Waiting for a job while watching its HTTP client: a client that is gone gets its job cancelled.

The generation routes are plain ``def`` (FastAPI runs them on its thread pool).  ``wait_for_client``
waits for the job's Future in short slices and between them asks the event loop whether the client
has disconnected (``Request.is_disconnected``, through ``anyio.from_thread``); when it has, the job is
cancelled if still queued, or interrupted if running (``Service.cancel``), instead of being run to the
end for nobody.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import anyio.from_thread
from starlette.requests import Request

from modules.app.service import Service
from modules.core.errors import UserError

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25


class ClientGone(UserError):
    """The client closed the connection before its job finished (nginx's 499; nobody reads the answer)."""

    status_code = 499


def client_gone(http: Request) -> bool:
    """Whether the client of `http` has disconnected (False where the event loop cannot be asked)."""
    try:
        return bool(anyio.from_thread.run(http.is_disconnected))
    except RuntimeError:  # not on one of anyio's worker threads
        return False


def wait_for_client(service: Service, future: Future, http: Request | None, poll: float = POLL_SECONDS) -> Any:
    """The Future's result; if the client of `http` goes away first, the job is stopped and ClientGone raised."""
    while True:
        try:
            return future.result(timeout=poll)
        except TimeoutError:
            pass
        if http is not None and client_gone(http):
            outcome = service.cancel(future)
            client = http.client.host if http.client else "unknown"
            log.warning("client %s went away during %s: job %s", client, http.url.path, outcome)
            raise ClientGone(f"the client went away; the job was {outcome}")
