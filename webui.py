"""Composition root: settings -> checkpoints -> model manager -> service -> FastAPI app (+ web UI), then serve.

Nothing else creates these objects; they are passed explicitly to whoever needs them.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI

from modules import cmd_args, devices, memory
from modules.checkpoints import CheckpointRegistry, HashCache
from modules.extensions import BUILTIN_DIR, ExtensionRegistry
from modules.model_manager import ModelManager
from modules.service import Service
from modules.settings import Settings

log = logging.getLogger("webui")


@dataclass
class App:
    """Everything the process serves with, built once."""

    args: object
    service: Service
    fastapi: FastAPI


def model_folders(args) -> list[Path]:
    folders = [Path(args.data_dir) / "models" / "Stable-diffusion"]
    if args.ckpt_dir:
        folders.append(Path(args.ckpt_dir))
    return folders


def create_service(args) -> Service:
    data_dir = Path(args.data_dir)
    settings_path = data_dir / "config.json"
    settings = Settings.load(settings_path)
    if not getattr(args, "malloc_default", False):
        memory.retain_freed_memory()  # before the worker thread exists (one arena for all threads)
    device = devices.resolve_device(args.device)
    dtype = devices.resolve_dtype(device, args.precision, args.no_half)
    log.info("Device: %s", devices.describe(device, dtype))
    offload_mode = devices.offload_mode(device, getattr(args, "medvram", False), getattr(args, "lowvram", False))
    registry = CheckpointRegistry(model_folders(args), HashCache(data_dir / "cache.json"), hashing=not args.no_hashing)
    found = registry.refresh()
    log.info("Found %d checkpoint(s) in %s", len(found), ", ".join(map(str, registry.folders)))
    models = ModelManager(
        registry,
        device=device,
        dtype=dtype,
        allow_unsafe=args.disable_safe_unpickle,
        keep_in_memory=settings.sd_checkpoints_limit,
        keep_in_cpu=settings.sd_checkpoints_keep_in_cpu,
        offload_mode=offload_mode,
    )
    extensions = ExtensionRegistry.load([BUILTIN_DIR, data_dir / "extensions"], settings.disabled_extensions)
    return Service(
        settings=settings,
        settings_path=settings_path,
        registry=registry,
        models=models,
        data_dir=data_dir,
        extensions=extensions,
    )


def create_app(args) -> App:
    service = create_service(args)
    api = FastAPI(title="SD2 depth2img web UI", version="0.1.0")
    app = App(args, service, api)
    if args.api:
        from modules.api import mount_api

        mount_api(api, service, args)
    elif args.api_auth:  # no API, but the log-in still guards the docs and the extensions' routes
        from modules.api import guard_app

        guard_app(api, args)
    service.extensions.app_started(app)  # before the UI: its mount at "/" would shadow routes added after it
    if not args.nowebui:
        from modules.ui import mount_ui

        mount_ui(api, service, args)
    return app


def load_initial_model(app: App) -> None:
    """--ckpt, else the last used checkpoint, else the first one found (as A1111 does).

    A failure is logged and shown in the UI (models.last_error); serving goes on.
    """
    service = app.service
    wanted = app.args.ckpt or service.settings.sd_model_checkpoint
    if not wanted:
        found = service.checkpoints()
        if not found:
            log.info("No checkpoint yet: put one into %s", service.registry.folders[0])
            return
        wanted = found[0].title
    try:
        service.select_checkpoint(wanted)
    except Exception as e:  # the UI shows models.last_error; serving must not depend on it
        service.models.last_error = f"{wanted}: {e}"
        log.error("Could not load checkpoint %s: %s", wanted, e)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx", "gradio", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Should have ta>=t0")  # torchsde, harmless at the schedule's ends


def main(argv: list[str] | None = None) -> int:
    args = cmd_args.parse_args(argv)
    configure_logging(args.log_level)
    torch.set_grad_enabled(False)
    app = create_app(args)
    load_initial_model(app)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    log.info("Serving on http://%s:%d%s", host, args.port, "" if args.nowebui else " (web UI at /)")
    uvicorn.run(app.fastapi, host=host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
