"""The web UI: Gradio Blocks mounted at "/" on the same FastAPI app as the HTTP API.

``mount_ui(app, service, options)`` is called by ``frontends.server.create_app``.  The UI
builds ``GenerationRequest`` objects and calls the ``Service``; it never touches torch or models.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from modules.app.options import Options, parse_auth
from modules.app.service import Service
from modules.frontends.ui import extra_networks
from modules.frontends.ui.blocks import build_ui
from modules.frontends.ui.guard import GradioCallGuard
from modules.frontends.ui.handlers import UiHandlers
from modules.frontends.ui.outputs import OutputStore
from modules.frontends.ui.page_js import page_js
from modules.frontends.ui.render import CSS
from modules.frontends.ui.uploads import UploadFolder

__all__ = ["build_ui", "mount_ui", "make_handlers"]


def make_handlers(service: Service, output_dir: Path | None = None, *, may_raise_limits: bool = True) -> UiHandlers:
    """Handlers bound to `service`, writing the gallery's files into `output_dir` (a fresh temp folder if None)."""
    folder = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="sd2-depth-ui-"))
    return UiHandlers(service, OutputStore(folder), may_raise_limits=may_raise_limits)


def _on_network(options: Options) -> bool:
    return options.host not in ("127.0.0.1", "localhost", "::1")


def mount_ui(app: FastAPI, service: Service, options: Options) -> UploadFolder:
    """Build the Blocks for `service` and serve them at "/" on `app` (log-in from --gradio-auth).

    Uploads go to a folder of ours, swept of files older than --upload-ttl-minutes (returned, so that
    the server's guard can count uploads); unknown queue calls are a 404 (``GradioCallGuard``)."""
    uploads = UploadFolder.create(options.upload_ttl_minutes * 60)
    # the limits (max_output_pixels ...) are raised from the UI only by a logged-in user or on a server that
    # listens on this machine alone; on a network without --gradio-auth, config.json or a logged-in API call
    handlers = make_handlers(service, may_raise_limits=bool(options.gradio_auth) or not _on_network(options))
    blocks = build_ui(handlers)
    auth = parse_auth(options.gradio_auth)
    max_mb = options.max_body_mb
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=list(auth.items()) or None,
        auth_message="Log in to the Stable Diffusion depth2img web UI" if auth else None,
        allowed_paths=[str(handlers.store.folder)],
        max_file_size=f"{int(max_mb)}mb" if max_mb else None,
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        theme=gr.themes.Default(),
        css=CSS + extra_networks.CSS,
        js=page_js(getattr(options, "theme", "default")),
    )
    app.add_middleware(GradioCallGuard, known_fn=lambda index: index in blocks.fns,
                       max_body_bytes=int(max_mb * 2**20) if max_mb else 2**30)  # fmt: skip
    uploads.start()
    return uploads
