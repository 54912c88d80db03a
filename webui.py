"""Composition root: settings -> checkpoints -> model manager -> FastAPI app (+ web UI), then serve.

Nothing else creates these objects; they are passed explicitly to whoever needs them.
"""

from __future__ import annotations

import html
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from modules import cmd_args, devices
from modules.checkpoints import CheckpointRegistry, HashCache
from modules.model_manager import ModelManager
from modules.settings import Settings

log = logging.getLogger("webui")


@dataclass
class App:
    """Everything the process serves with, built once."""

    args: object
    settings_path: Path
    settings: Settings
    registry: CheckpointRegistry
    models: ModelManager
    fastapi: FastAPI


def model_folders(args) -> list[Path]:
    folders = [Path(args.data_dir) / "models" / "Stable-diffusion"]
    if args.ckpt_dir:
        folders.append(Path(args.ckpt_dir))
    return folders


def create_app(args) -> App:
    data_dir = Path(args.data_dir)
    settings_path = data_dir / "config.json"
    settings = Settings.load(settings_path)
    device = devices.resolve_device(args.device)
    dtype = devices.resolve_dtype(device, args.precision, args.no_half)
    log.info("Device: %s", devices.describe(device, dtype))
    registry = CheckpointRegistry(model_folders(args), HashCache(data_dir / "cache.json"), hashing=not args.no_hashing)
    found = registry.refresh()
    log.info("Found %d checkpoint(s) in %s", len(found), ", ".join(map(str, registry.folders)))
    models = ModelManager(
        registry,
        device=device,
        dtype=dtype,
        allow_unsafe=args.disable_safe_unpickle,
        keep_in_memory=settings.sd_checkpoints_limit,
    )
    api = FastAPI(title="SD2 depth2img web UI", version="0.1.0")
    app = App(args, settings_path, settings, registry, models, api)
    api.add_api_route("/", lambda: HTMLResponse(placeholder_page(app)), methods=["GET"], include_in_schema=False)
    return app


def placeholder_page(app: App) -> str:
    items = "".join(f"<li>{html.escape(t)}</li>" for t in app.registry.titles()) or (
        "<li>none yet: put <code>512-depth-ema.ckpt</code> or <code>.safetensors</code> (with its .yaml) into "
        "<code>models/Stable-diffusion/</code></li>"
    )
    return f"<!doctype html><title>SD2 depth2img</title><h1>SD2 depth2img</h1><h2>Checkpoints</h2><ul>{items}</ul>"


def load_initial_model(app: App) -> None:
    """--ckpt, else the last used checkpoint; a failure is logged, the server still starts."""
    wanted = app.args.ckpt or app.settings.sd_model_checkpoint
    if not wanted:
        return
    try:
        if Path(wanted).is_file() and not app.registry.list():
            return
        app.models.load(wanted)
    except Exception as e:  # the UI shows the error; serving must not depend on it
        log.error("Could not load checkpoint %s: %s", wanted, e)


def main(argv: list[str] | None = None) -> int:
    args = cmd_args.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_grad_enabled(False)
    app = create_app(args)
    load_initial_model(app)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    log.info("Serving on http://%s:%d", host, args.port)
    uvicorn.run(app.fastapi, host=host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
