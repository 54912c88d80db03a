"""The served application: one FastAPI app with the A1111 API (``--api``) and the Gradio UI mounted on it."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from modules.app.options import Options
from modules.app.service import Service


@dataclass
class App:
    """Everything the process serves with, built once."""

    options: Options
    service: Service
    fastapi: FastAPI

    @property
    def args(self) -> Options:  # the name extensions' app_started hooks have used
        return self.options


def create_app(service: Service, options: Options) -> App:
    """The FastAPI app for `service`: API routes and guards, extensions' routes, then the UI at "/"."""
    api = FastAPI(title="SD2 depth2img web UI", version="0.1.0")
    app = App(options, service, api)
    if options.api:
        from modules.frontends.api import mount_api

        mount_api(api, service, options)
    elif options.api_auth:  # no API, but the log-in still guards the docs and the extensions' routes
        from modules.frontends.api import guard_app

        guard_app(api, options)
    service.app_started(app)  # before the UI: its mount at "/" would shadow routes added after it
    if not options.nowebui:
        from modules.frontends.ui import mount_ui

        mount_ui(api, service, options)
    return app
