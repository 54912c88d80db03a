"""The served application: one FastAPI app with the A1111 API (``--api``) and the Gradio UI mounted on it."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from modules.app.options import Options
from modules.app.service import Service
from modules.frontends.auth_throttle import AuthThrottle
from modules.frontends.http_guard import BodyLimits, HostPolicy, HttpGuard, OriginPolicy


@dataclass
class App:
    """Everything the process serves with, built once."""

    options: Options
    service: Service
    fastapi: FastAPI

    @property
    def args(self) -> Options:  # the name extensions' app_started hooks have used
        return self.options


def create_app(service: Service, options: Options, *, throttle: AuthThrottle | None = None) -> App:
    """The FastAPI app for `service`: API routes and guards, extensions' routes, then the UI at "/".

    Outermost of all, ``HttpGuard``: Host allow-list, Origin checks, CORS, methods and body limits for
    every route (API, web UI, docs, extensions).  `throttle` slows wrong passwords (a clock for tests)."""
    api = FastAPI(title="SD2 depth2img web UI", version="0.1.0")
    app = App(options, service, api)
    throttle = throttle or AuthThrottle()
    if options.api:
        from modules.frontends.api import mount_api

        mount_api(api, service, options, throttle)
    elif options.api_auth:  # no API, but the log-in still guards the docs and the extensions' routes
        from modules.frontends.api import guard_app

        guard_app(api, options, throttle)
    service.app_started(app)  # before the UI: its mount at "/" would shadow routes added after it
    on_upload = None
    if not options.nowebui:
        from modules.frontends.ui import mount_ui

        on_upload = mount_ui(api, service, options).maybe_sweep
    api.add_middleware(  # added last: the outermost layer
        HttpGuard,
        hosts=HostPolicy.build(server_name=options.server_name, listen=options.listen,
                               allowed_hosts=options.allowed_hosts),  # fmt: skip
        origins=OriginPolicy.build(options.cors_allow_origins),
        limits=BodyLimits(int(options.max_body_mb * 2**20), options.max_upload_files),
        throttle=throttle,
        on_upload=on_upload,
    )
    return app
