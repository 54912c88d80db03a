"""What the web UI, the HTTP API and the batch CLI ask the program to do, in one place.

``Service`` is created once by the composition root (``webui.create_app``) and handed to the UI and
the API.  It owns the settings (persisted), the checkpoint list, the model manager, the job worker
and the caches; every generation goes through ``processing.process`` on the worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules import depth, images, infotext, optimizations
from modules import settings as settings_module
from modules.checkpoints import CheckpointInfo, CheckpointRegistry
from modules.conditioning import ConditioningCache
from modules.extensions import ExtensionRegistry, Script
from modules.hooks import Hooks
from modules.model_manager import LoadedModel, ModelManager
from modules.processing import DepthCache, ProcessingContext, process
from modules.request import GenerationRequest, GenerationResult
from modules.settings import Settings
from modules.worker import Worker

log = logging.getLogger(__name__)


class Service:
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
    ):
        self._settings = settings
        self.settings_path = settings_path
        self.registry = registry
        self.models = models
        self.data_dir = Path(data_dir)
        self.extensions = extensions or ExtensionRegistry([])
        self.hooks: Hooks = self.extensions
        self.conditioning = ConditioningCache()
        self.depth_cache = DepthCache(settings.depth_cache_size)
        self.worker = worker or Worker(lambda: self._settings.show_progress_every_n_steps)
        self._settings_lock = threading.Lock()
        models.on_loaded = lambda model: optimizations.apply(model, self._settings)

    # --- settings -------------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._settings

    def update_settings(self, values: dict[str, Any]) -> Settings:
        """Validate and apply `values`; ``sd_model_checkpoint`` switches the model (after the running job)."""
        values = dict(values or {})
        settings_module.check_request_folders(values)
        checkpoint = values.pop("sd_model_checkpoint", None)
        with self._settings_lock:
            self._settings.override(values)  # validated before the switch: a bad value changes nothing
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

    def refresh_checkpoints(self) -> list[CheckpointInfo]:
        return self.worker.run(lambda _: self.registry.refresh(), "refresh-checkpoints")

    def select_checkpoint(self, alias: str) -> LoadedModel:
        """Switch the current model; waits for the running job, then loads (or reuses) the checkpoint."""
        info = self.registry.get(alias)  # unknown names fail here, before queueing
        loaded = self.worker.run(lambda _: self.models.load(info), "load-checkpoint")
        with self._settings_lock:
            self._settings = self._settings.override({"sd_model_checkpoint": loaded.info.title})
            self._save()
        return loaded

    def current_checkpoint(self) -> CheckpointInfo | None:
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
        )

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Queue a request on the worker and wait for its result."""
        request = dataclasses.replace(request)
        return self.worker.run(lambda control: process(request, self.context(control)), "generate")

    def interrupt(self) -> bool:
        return self.worker.interrupt()

    def skip(self) -> bool:
        return self.worker.skip()

    def progress(self) -> dict[str, Any]:
        """A1111's /progress fields (the preview as a uint8 array, not yet encoded)."""
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

    # --- depth and image info -------------------------------------------------------------------
    def estimate_depth(self, image: bytes) -> np.ndarray:
        """MiDaS depth of an image at its own size (rounded to multiples of 8), float32 in [0, 1], white = near."""

        def job(_control):
            loaded = self.models.get()
            loaded.model.require_depth()  # a model without depth is refused before the image is decoded
            img = images.decode_image(image, "image", max_pixels=self._settings.max_input_pixels,
                                      background=self._settings.img2img_background_color)  # fmt: skip
            raw = loaded.model.raw_depth(images.to_tensor(img))
            return depth.depth_for_display(raw, (img.height, img.width))

        return self.worker.run(job, "depth")

    @staticmethod
    def png_info(data: bytes) -> tuple[str, dict[str, str]]:
        text = images.read_infotext(data) or ""
        return text, (infotext.parse(text) if text else {})

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
