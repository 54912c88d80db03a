"""What the web UI, the HTTP API and the batch command ask the program to do: the only door front ends use.

``Service`` is created once by the composition root (``app.bootstrap.create_service``) and handed to
the UI, the API and the batch runner.  It owns the settings (persisted), the checkpoint list, the
model manager, the job worker and the caches.  Front ends ``check`` a request (refusals before
queueing), ``submit`` it (a Future) or ``generate`` it (wait); every generation goes through
``generation.processing.process`` on the worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.app import prompt_tokens
from modules.app.checks import check_request, memory_budget
from modules.app.cluster import JobRunner, SwitchedModel
from modules.app.extensions import ExtensionRegistry, Script
from modules.app.extra_networks import ExtraNetworkService, ExtraNetworksMixin
from modules.app.worker import Worker
from modules.core import images, infotext, samplers
from modules.core import settings as settings_module
from modules.core.errors import ValidationError
from modules.core.hooks import Hooks
from modules.core.request import GenerationRequest, GenerationResult
from modules.core.settings import Settings
from modules.generation.conditioning import ConditioningCache
from modules.generation.extras import ExtrasParams, ExtrasResult, Upscaling
from modules.generation.extras import run as run_extras
from modules.generation.processing import DepthCache, ProcessingContext, estimate_depth, process
from modules.models import optimizations, upscaling
from modules.models.checkpoints import CheckpointInfo, CheckpointRegistry
from modules.models.manager import LoadedModel, ModelManager

log = logging.getLogger(__name__)


class Service(ExtraNetworksMixin):
    def __init__(
        self,
        *,
        settings: Settings,
        settings_path: Path | None,
        registry: CheckpointRegistry,
        models: ModelManager,
        data_dir: Path,
        extensions: ExtensionRegistry | None = None,
        worker: Worker | None = None,
        upscalers: upscaling.UpscalerRegistry | None = None,
        jobs: JobRunner | None = None,
        extra_networks: ExtraNetworkService | None = None,  # LoRA, embeddings, VAE files, styles
    ):
        self._settings = settings
        self.jobs = jobs  # generation elsewhere (a Ray actor pool, --ray); None: on self.worker
        self.settings_path = settings_path
        self.registry = registry
        self.models = models
        self.data_dir = Path(data_dir)
        self.extensions = extensions or ExtensionRegistry([])
        self.hooks: Hooks = self.extensions
        self.conditioning = ConditioningCache()
        self.depth_cache = DepthCache(settings.depth_cache_size)
        self.worker = worker or Worker(lambda: self._settings.show_progress_every_n_steps)
        self.upscaler_registry = upscalers or upscaling.UpscalerRegistry(self.data_dir,
                                                                         device=getattr(models, "device", "cpu"))
        self._settings_lock = threading.Lock()
        self.load_error: str | None = None  # why the start-up checkpoint could not be loaded (shown by the UI)
        self.extra_networks = extra_networks or ExtraNetworkService(None, None, models, registry)
        models.on_loaded = lambda model: optimizations.apply(model, self._settings)

    # --- settings -------------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._settings

    def update_settings(self, values: dict[str, Any], *, may_raise_limits: bool = True) -> Settings:
        """Validate and apply `values`; ``sd_model_checkpoint`` switches the model (after the running job).

        A front end passes ``may_raise_limits=False`` for a caller without a log-in: raising a limit is a 403."""
        values = dict(values or {})
        settings_module.check_request_folders(values)
        self.extra_networks.check_settings(values)
        checkpoint = values.pop("sd_model_checkpoint", None)
        with self._settings_lock:
            self._settings.override(values)  # validated before the switch: a bad value changes nothing
            settings_module.check_limit_raise(self._settings, values, allowed=may_raise_limits)
        if checkpoint:
            self.select_checkpoint(checkpoint)  # waits for the running job; records the new checkpoint
        with self._settings_lock:  # applied to the settings as they are now: changes made meanwhile are kept
            new = self._settings.override(values)
            self._settings = new
            self.extensions.set_disabled(new.disabled_extensions)
            for model in self.models.loaded_models():
                optimizations.apply(model, new)
            self.models.set_keep_in_memory(new.sd_checkpoints_limit)
            self.models.set_keep_in_cpu(new.sd_checkpoints_keep_in_cpu)
            self.depth_cache.size = new.depth_cache_size
            self._save()
        return new

    def _save(self) -> None:
        if self.settings_path is None:
            return
        try:
            self._settings.save(self.settings_path)
        except OSError as e:
            log.error("could not save settings to %s: %s", self.settings_path, e)

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointInfo]:
        return self.registry.list()

    @property
    def checkpoint_folder(self) -> Path:
        """Where the user is told to put checkpoints (the first model folder)."""
        return self.registry.folders[0] if self.registry.folders else self.data_dir / "models" / "Stable-diffusion"

    def find_checkpoint(self, alias: str) -> CheckpointInfo:
        """A checkpoint by name, title or hash; CheckpointNotFoundError (404) or ValidationError (a path) otherwise."""
        return self.registry.get(alias)

    def loaded_titles(self) -> list[str]:
        """Titles of the checkpoints held in memory (switching to them is instant)."""
        return self.models.loaded_titles()

    @property
    def last_error(self) -> str | None:
        """The last checkpoint load failure (start-up or a switch), None once one loaded."""
        return self.load_error or self.models.last_error

    def refresh_checkpoints(self) -> list[CheckpointInfo]:
        return self.worker.run(lambda _: self.registry.refresh(), "refresh-checkpoints")

    def unhashed_checkpoints(self) -> list[CheckpointInfo]:
        """Listed, not hashed yet: each is hashed when first loaded."""
        return self.registry.unhashed()

    def select_checkpoint(self, alias: str) -> LoadedModel | SwitchedModel:
        """Switch the current model; waits for the running job, then loads (or reuses) the checkpoint."""
        info = self.registry.get(alias)  # unknown names fail here, before queueing
        if self.jobs is not None:
            loaded = self.jobs.select_checkpoint(info)  # every cluster worker, after its running job
        else:
            loaded = self.worker.run(lambda _: self.models.load(info), "load-checkpoint")
        self.load_error = None
        with self._settings_lock:
            self._settings = self._settings.override({"sd_model_checkpoint": loaded.info.title})
            self._save()
        return loaded

    def current_checkpoint(self) -> CheckpointInfo | None:
        if self.jobs is not None:
            return self.jobs.current_checkpoint()
        current = self.models.current
        return current.info if current else None

    def unload_checkpoint(self) -> None:
        self.worker.run(lambda _: self.models.unload(), "unload-checkpoint")

    def reload_checkpoint(self) -> LoadedModel:
        return self.worker.run(lambda _: self.models.reload(), "reload-checkpoint")

    # --- extensions -----------------------------------------------------------------------------
    def scripts(self, tab: str | None = None) -> list[Script]:
        """Selectable scripts (e.g. "X/Y/Z plot") offered in a tab (img2img, inpaint, txt2img)."""
        return self.extensions.scripts(tab)

    def extension_status(self) -> list[dict[str, Any]]:
        return self.extensions.status()

    def enabled_extension_names(self) -> list[str]:
        return [e.name for e in self.extensions.enabled()]

    def ui_sections(self, tab: str) -> list:
        """Extensions' control sections for a generation tab."""
        return self.extensions.ui_sections(tab)

    def app_started(self, app: Any) -> None:
        """Extensions' app-started hooks (their own routes), given the served app."""
        self.extensions.app_started(app)

    def ui_tabs(self) -> list:
        """Extensions' own top-level tabs."""
        return self.extensions.ui_tabs()

    # --- generation -----------------------------------------------------------------------------
    def context(self, control) -> ProcessingContext:
        return ProcessingContext(
            models=self.models,
            settings=self._settings,
            data_dir=self.data_dir,
            conditioning=self.conditioning,
            depth_cache=self.depth_cache,
            control=control,
            hooks=self.hooks,
            upscalers=self.upscaler_registry,
            extra=self.extra_networks.extra,
            styles=self.extra_networks.styles,
        )

    def check(self, request: GenerationRequest, *, template: bool = False) -> GenerationRequest:
        """Refuse a request before it is queued (sizes, ranges, sampler, schedule, checkpoint override)."""
        request = check_request(request, self._settings, self.registry, template=template,
                                budget=None if template else memory_budget(self.models.current, self.worker))  # fmt: skip
        if request.enable_hr and not request.is_img2img:
            self._check_hires(request)
        self.extra_networks.check(request, self._settings)
        return request

    def _check_hires(self, request: GenerationRequest) -> None:
        """Hires. fix's upscaler and sampler names, refused before queueing."""
        name = request.hr_upscaler or upscaling.DEFAULT_LATENT_MODE
        if name not in self.upscaler_registry.hires_names():
            raise ValidationError("hr_upscaler", f"unknown upscaler {name!r}; choose one of "
                                  f"{', '.join(self.upscaler_registry.hires_names())}")  # fmt: skip
        if request.hr_sampler_name not in (None, "", "Use same sampler"):
            try:
                samplers.find_sampler(request.hr_sampler_name, self._settings.default_sampler)
            except ValidationError as e:
                raise ValidationError("hr_sampler_name", e.message) from e

    def submit(self, request: GenerationRequest) -> Future:
        """Queue a request on the worker; the Future gives its GenerationResult (or raises its error)."""
        request = dataclasses.replace(request)
        if self.jobs is not None:
            return self.jobs.submit(request, self._settings)
        return self.worker.submit(lambda control: process(request, self.context(control)), "generate")

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Queue a request on the worker and wait for its result."""
        return self.submit(request).result()

    def close(self) -> None:
        """Stop the worker (after the running job); the service takes no jobs afterwards."""
        if self.jobs is not None:
            self.jobs.close()
        self.worker.stop()

    def interrupt(self) -> bool:
        return self.jobs.interrupt() if self.jobs is not None else self.worker.interrupt()

    def skip(self) -> bool:
        return self.jobs.skip() if self.jobs is not None else self.worker.skip()

    def cancel(self, future: Future) -> str:
        """Stop one submitted job (its client is gone): "cancelled" if queued, "interrupted" if running, or "done"."""
        return self.jobs.cancel(future) if self.jobs is not None else self.worker.cancel(future)

    def progress(self) -> dict[str, Any]:
        """A1111's /progress fields (the preview as a uint8 array, not yet encoded)."""
        if self.jobs is not None:
            return self.jobs.progress()
        control = self.worker.current_control()
        if control is None:
            state = self.worker.last_state()
            return {
                "active": False,
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": _state_dict(state, busy=False),
                "current_image": None,
                "textinfo": "",
                "queued": self.worker.pending,
            }
        done, eta = control.progress()
        state = control.snapshot()
        return {
            "active": True,
            "progress": done,
            "eta_relative": eta,
            "state": _state_dict(state, busy=True),
            "current_image": state.preview,
            "preview_id": state.preview_id,
            "textinfo": state.textinfo,
            "queued": self.worker.pending,
        }

    # --- upscalers and extras -------------------------------------------------------------------
    def upscalers(self) -> list[dict[str, Any]]:
        """The body of ``GET /sdapi/v1/upscalers`` from the service's registry (``--upscaler-dir`` included)."""
        return self.upscaler_registry.listing()

    @staticmethod
    def latent_upscale_modes() -> list[dict[str, str]]:
        """The body of ``GET /sdapi/v1/latent-upscale-modes``."""
        return upscaling.latent_modes()

    def upscaler_names(self) -> list[str]:
        return self.upscaler_registry.names()

    def hires_upscaler_names(self) -> list[str]:
        """Hires. fix's choices: the latent modes, then the upscalers."""
        return self.upscaler_registry.hires_names()

    def refresh_upscalers(self) -> list[str]:
        return [u.name for u in self.upscaler_registry.refresh()]

    def extras(self, items: list[tuple[str, bytes]], values: dict[str, Any], *, save: bool = False) -> ExtrasResult:
        """Postprocess (name, image bytes) pairs with A1111's extras fields (on the worker: models share the device)."""
        params = ExtrasParams.from_values(values)  # refused before queueing
        for name in (params.extras_upscaler_1, params.extras_upscaler_2):
            if name not in ("", "None"):
                self.upscaler_registry.get(name)
        s = self._settings
        folder = self.data_dir / s.outdir_extras_samples if save and s.samples_save else None

        def work(control) -> ExtrasResult:
            up = Upscaling(self.upscaler_registry, s.ESRGAN_tile, s.ESRGAN_tile_overlap, lambda: control.interrupted)
            return run_extras(items, params, up, s, save_to=folder)

        return self.worker.run(work, "extras")

    # --- what the app has, as A1111's listing endpoints name it ---------------------------------
    def realesrgan_models(self) -> list[dict[str, Any]]:
        """The upscaler files under models/RealESRGAN: ``{name, path, scale}``."""
        registry = self.upscaler_registry
        found = [u for u in registry.upscalers() if u.kind == "RealESRGAN"]
        return [{"name": u.name, "path": str(u.path), "scale": int(registry.scale_of(u) or 4)} for u in found]

    def unet_files(self) -> list[dict[str, str]]:
        """``/sdapi/v1/sd-modules``: separate UNet files (A1111's SD Unet option); this program has none."""
        return []

    def hypernetworks(self) -> list[dict[str, str]]:
        """Hypernetworks are not supported: always empty."""
        return []

    def face_restorers(self) -> list[dict[str, str]]:
        """Face restoration is out of scope: always empty."""
        return []

    def checkpoint_has_depth(self, alias: str | None = None) -> bool | None:
        """Whether the checkpoint a request would use (``alias``, else the current one) takes a depth map;
        None when that is not known before loading it (not the loaded one, or nothing loaded)."""
        current = self.models.current
        if current is None or (alias and alias not in current.info.aliases):
            return None
        return current.model.is_depth

    # --- depth and image info -------------------------------------------------------------------
    def estimate_depth(self, image: bytes) -> np.ndarray:
        """MiDaS depth of an image at its own size (rounded to multiples of 8), float32 in [0, 1], white = near."""

        return self.worker.run(lambda control: estimate_depth(self.context(control), image), "depth")

    @staticmethod
    def png_info(data: bytes) -> tuple[str, dict[str, str]]:
        text = images.read_infotext(data) or ""
        return text, (infotext.parse(text) if text else {})

    def token_count(self, text: str) -> tuple[int, int]:
        """The prompt counter's (tokens, limit in chunks of 75), with the loaded model's tokenizer."""
        model = self.models.current.model if self.models.current is not None else None
        return prompt_tokens.count_tokens(text, getattr(model, "tokenizer", None), self._settings.comma_padding_backtrack)

    def memory(self) -> dict[str, Any]:
        import psutil  # gradio depends on it

        proc = psutil.Process()
        vm = psutil.virtual_memory()
        out: dict[str, Any] = {
            "ram": {"free": vm.available, "used": proc.memory_info().rss, "total": vm.total},
            "cuda": {"error": "no CUDA device"},
        }
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            out["cuda"] = {
                "system": {"free": free, "used": total - free, "total": total},
                "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()},
            }
        return out

    def precision_info(self) -> dict[str, Any]:
        """What the weights run in (label, dtype per part, why: the CPU probe's figures or the flag)."""
        return self.models.precision_info()


def _state_dict(state, *, busy: bool) -> dict[str, Any]:
    return {
        "skipped": state.skipped,
        "interrupted": state.interrupted,
        "job": state.job if busy else "",
        "job_count": state.job_count if busy else 0,
        "job_timestamp": state.job_timestamp,
        "job_no": state.job_no if busy else 0,
        "sampling_step": state.sampling_step if busy else 0,
        "sampling_steps": state.sampling_steps if busy else 0,
    }
