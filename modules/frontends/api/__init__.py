"""The AUTOMATIC1111-compatible HTTP API under ``/sdapi/v1/`` (``--api``, or ``--nowebui`` for the API only).

Scripts, Blender add-ons and bots written for A1111 (e.g. the ``webuiapi`` package) work unchanged:
same paths, field names, defaults and response shapes; errors are 4xx with a JSON ``detail``.
Additions in the same style: ``depth_image`` / ``depth_invert`` on txt2img and img2img,
``depth_images`` in their responses, and ``POST /sdapi/v1/depth``.  Every generation goes through
``service.generate`` (the one job worker), exactly like the web UI.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from modules.app.options import Options, parse_auth
from modules.app.service import Service
from modules.frontends.auth_throttle import AuthThrottle

from .middleware import ApiGuard
from .routes import build_controlnet_router, build_router, validation_error

log = logging.getLogger(__name__)

__all__ = ["guard_app", "mount_api"]


def mount_api(app: FastAPI, service: Service, options: Options, throttle: AuthThrottle | None = None) -> None:
    """Add the /sdapi/v1 routes, HTTP Basic auth (--api-auth), the body limit (--max-body-mb) and timing."""
    app.include_router(build_router(service, options))
    app.include_router(build_controlnet_router(service))
    app.add_exception_handler(RequestValidationError, validation_error)
    credentials, max_body = guard_app(app, options, throttle)
    log.info(
        "API at /sdapi/v1 (docs at /docs)%s; request bodies up to %g MiB",
        f", HTTP Basic auth for {len(credentials)} user(s)" if credentials else "",
        max_body / 2**20,
    )


def guard_app(app: FastAPI, options: Options, throttle: AuthThrottle | None = None) -> tuple[dict[str, str], int]:
    """HTTP Basic auth for every route the web UI does not serve, the API's body limit, and timing."""
    credentials = parse_auth(options.api_auth)
    max_body = int(options.max_body_mb * 2**20)
    app.add_middleware(ApiGuard, credentials=credentials, max_body_bytes=max_body, router=app.router,
                       throttle=throttle)  # fmt: skip
    return credentials, max_body
