"""The composition root: options -> settings -> checkpoints -> model manager -> extensions -> Service.

Nothing else creates these objects; they are passed explicitly to whoever needs them.  The web UI
(``webui.main``) and the batch command both build their Service here.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

import torch

from modules.app.cluster import JobRunner
from modules.app.extensions import BUILTIN_DIR, ExtensionRegistry
from modules.app.extra_networks import ExtraNetworkService, create_extra
from modules.app.options import Options
from modules.app.service import Service
from modules.core import memory
from modules.core.errors import UserError
from modules.core.settings import Settings
from modules.core.styles import StyleDatabase
from modules.models import devices, precision
from modules.models.checkpoints import CheckpointInfo, CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from modules.models.upscaling import UpscalerRegistry

log = logging.getLogger("webui")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx", "gradio", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Should have ta>=t0")  # torchsde, harmless at the schedule's ends


def prepare_process(log_level: str) -> None:
    """Once per process, before the Service: logging, and no autograd (inference only)."""
    configure_logging(log_level)
    torch.set_grad_enabled(False)


def create_service(options: Options) -> Service:
    data_dir = Path(options.data_dir)
    settings_path = data_dir / "config.json"
    settings = Settings.load(settings_path)
    if not options.malloc_default:
        memory.retain_freed_memory()  # before the worker thread exists (one arena for all threads)
    device = devices.resolve_device(options.device)
    dtype = devices.resolve_dtype(device, options.precision, options.no_half)
    log.info("Device: %s", devices.describe(device, dtype))
    offload_mode = devices.offload_mode(device, options.medvram, options.lowvram)
    plan = precision.plan_for(device, options.precision, options.no_half, cpu_bf16=options.cpu_bf16)
    registry = CheckpointRegistry(options.model_folders(), HashCache(data_dir / "cache.json"),
                                  hashing=not options.no_hashing, allow_links_out=options.allow_symlinks_out,
                                  lazy=True)  # fmt: skip
    found = registry.refresh()
    log.info("Found %d checkpoint(s) in %s", len(found), ", ".join(map(str, registry.folders)))
    models = ModelManager(
        registry,
        device=device,
        dtype=dtype,
        allow_unsafe=options.disable_safe_unpickle,
        keep_in_memory=settings.sd_checkpoints_limit,
        keep_in_cpu=settings.sd_checkpoints_keep_in_cpu,
        offload_mode=offload_mode,
        precision=plan,
    )
    extensions = ExtensionRegistry.load([BUILTIN_DIR, data_dir / "extensions"], settings.disabled_extensions)
    upscalers = UpscalerRegistry(data_dir, options.upscaler_dir or (), device=device,
                                 allow_unsafe=options.disable_safe_unpickle)  # fmt: skip
    log.info("Found %d upscaler(s)", len(upscalers.refresh()))
    extra = create_extra(data_dir, lora_dir=options.lora_dir, embeddings_dir=options.embeddings_dir,
                         vae_dir=options.vae_dir, checkpoint_dirs=registry.folders,
                         allow_unsafe=options.disable_safe_unpickle)  # fmt: skip
    return Service(
        settings=settings,
        settings_path=settings_path,
        registry=registry,
        models=models,
        data_dir=data_dir,
        extensions=extensions,
        upscalers=upscalers,
        jobs=_cluster(options, settings, registry) if options.ray else None,
        extra_networks=ExtraNetworkService(extra, StyleDatabase(data_dir / "styles.csv"), models, registry),
    )


def create_worker_service(options: Options) -> Service:
    """A cluster worker's own Service (built inside its Ray actor from the driver's options); never saves config.json."""
    prepare_process(options.log_level)
    service = create_service(options)
    service.settings_path = None  # the driver owns the settings; each job brings them
    return service


def _cluster(options: Options, settings: Settings, registry: CheckpointRegistry) -> JobRunner:
    """--ray: the pool of Ray workers (Ray is imported only here); a refusal is one line and exit status 2."""
    from modules.app.cluster import ClusterError
    from modules.app.cluster.start import start_pool

    try:
        first = _first_checkpoint(options, settings, registry)
        checkpoint = registry.with_hash(first) if first else None  # the workers compare their copy's sha256
        return start_pool(options, create_worker_service, checkpoint)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def _first_checkpoint(options: Options, settings: Settings, registry: CheckpointRegistry) -> CheckpointInfo | None:
    """The checkpoint the cluster's workers load at start: --ckpt, the last used one, else the first found."""
    for alias in (options.ckpt, settings.sd_model_checkpoint):
        if alias:
            try:
                return registry.get(alias)
            except UserError:
                continue
    found = registry.list()
    return found[0] if found else None


def load_initial_model(service: Service, options: Options) -> None:
    """--ckpt, else the last used checkpoint, else the first one found (as A1111 does).

    If the wanted checkpoint is gone (renamed, deleted) or does not load, the same file name under a new hash
    is tried, then each checkpoint found in order: the first that loads is used, and the log and the UI
    (``service.load_error``) say which one and why.  Serving goes on whatever happens.
    """
    wanted = options.ckpt or service.settings.sd_model_checkpoint
    found = [info.title for info in service.checkpoints()]
    if not found and not wanted:
        log.info("No checkpoint yet: put one into %s", service.checkpoint_folder)
        return
    candidates = list(dict.fromkeys([c for c in (wanted, _without_hash(wanted)) if c] + found))
    first_error: str | None = None
    tried: set[str] = set()
    for title in candidates:
        try:
            filename = service.find_checkpoint(title).filename
            if filename in tried:
                continue
            tried.add(filename)
            loaded = service.select_checkpoint(title)
        except Exception as e:  # the UI shows service.last_error; serving must not depend on it
            log.error("Could not load checkpoint %s: %s", title, e)
            first_error = first_error or f"{title}: {e}"
            continue
        if first_error is not None:
            service.load_error = f"{first_error}; loaded {loaded.info.title} instead"
            log.warning("Checkpoint %s could not be loaded; loaded %s instead", wanted, loaded.info.title)
        return
    service.load_error = first_error


def _without_hash(title: str | None) -> str | None:
    """'name.safetensors [0123456789]' -> 'name.safetensors' (the same file after its contents changed)."""
    return re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", title) if title else None
