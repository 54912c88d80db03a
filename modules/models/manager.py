"""The one owner of loaded weights: which checkpoint is loaded, on which device and dtype.

Load / switch / unload / reload go through here, under a lock.  Up to ``keep_in_memory``
checkpoints stay loaded (A1111's ``sd_checkpoints_limit``), most recently used first, so switching
back is instant.  Only the composition root creates a ModelManager.

Files changing under the program: each loaded model remembers its file's ``FileStamp`` as it was
read, and ``get`` / ``load`` (before every job and every switch) compare it with the file's stamp now,
one ``stat``.  A changed file is hashed again and loaded again; if it is no longer a valid checkpoint
(truncated, half copied) the job is refused with a CheckpointError saying so, and the next job tries
the file again.  The old weights are never used for a changed file.  The weights themselves are read
into memory of their own (``safe_load``), so a file truncated even in the middle of a job cannot
crash the process.  A deleted file keeps serving the weights that were read (they are what its hash
names), with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modules.core.errors import CheckpointError, NoModelLoadedError, UserError
from modules.models import checkpoints, offload
from modules.models.checkpoints import CheckpointInfo, CheckpointRegistry, FileStamp
from modules.models.precision import PrecisionPlan
from modules.models.sd_model import StableDiffusionModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    info: CheckpointInfo
    model: StableDiffusionModel
    load_seconds: float
    stamp: FileStamp | None = None  # the file as it was read

    @property
    def key(self) -> str:
        """Identity of these weights, for caches (depth maps, prompt conditioning)."""
        return self.info.sha256 or f"{self.info.filename}:{self.stamp}"


class ModelManager:
    def __init__(
        self,
        registry: CheckpointRegistry,
        *,
        device: torch.device,
        dtype: torch.dtype,
        allow_unsafe: bool = False,
        keep_in_memory: int = 1,
        offload_mode: str = "none",
        keep_in_cpu: bool = True,
        on_loaded: Callable[[StableDiffusionModel], None] | None = None,
        precision: PrecisionPlan | None = None,
    ):
        self.registry = registry
        self.device = device
        self.dtype = dtype
        # Per-component dtypes (``precision.plan_for``): every checkpoint loaded here gets them, once, at
        # load; a switch to a model kept in memory keeps its weights as they are. None: `dtype` for all.
        self.precision = precision
        self.allow_unsafe = allow_unsafe
        self.keep_in_memory = max(1, keep_in_memory)
        if offload_mode not in offload.MODES:
            raise ValueError(f"unknown offload mode {offload_mode!r}; expected one of {offload.MODES}")
        self.offload_mode = offload_mode  # med/low: weights in RAM, each part moved to `device` to run
        self.keep_in_cpu = keep_in_cpu  # on a GPU, the loaded models other than the current one wait in RAM
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # filename -> model, most recent last
        self._current: LoadedModel | None = None
        self._lock = threading.RLock()
        self.last_error: str | None = None
        self.on_loaded = on_loaded  # e.g. apply the speed options of the current settings
        self._changed: CheckpointInfo | None = None  # the current model's file changed and did not load again
        self._warned_missing: set[str] = set()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def precision_label(self) -> str:
        """What the current model's weights are in ('bf16', 'bf16 UNet', 'fp32', 'fp16'), else what the plan gives."""
        current = self._current
        if current is not None:
            return current.model.precision_label
        if self.precision is not None:
            return self.precision.label
        return PrecisionPlan.uniform(self.dtype).label

    def precision_info(self) -> dict:
        """For the settings page and /sdapi/v1/cmd-flags: the label in use, the plan and the probe's figures."""
        plan = self.precision or PrecisionPlan.uniform(self.dtype, "no plan given: one dtype for all")
        return {**plan.as_dict(), "label": self.precision_label}

    def load(self, alias: str | CheckpointInfo) -> LoadedModel:
        """Make `alias` the current model, loading it unless it is already in memory (and its file unchanged)."""
        info = alias if isinstance(alias, CheckpointInfo) else self.registry.get(alias)
        with self._lock:
            cached = self._loaded.get(info.filename)
            if cached is not None:
                verified = self._verified(cached)
                if verified is cached:
                    self._loaded.move_to_end(info.filename)
                    self._make_current(cached)
                    self._changed = None
                return verified
            return self._load_file(info)

    def _load_file(self, info: CheckpointInfo) -> LoadedModel:
        t0 = time.perf_counter()
        offloaded = self.offload_mode != "none"
        previous = self._current
        if previous is not None:
            self._park(previous.model)  # room on the GPU before the new weights arrive
        try:
            info = self._up_to_date(info)
            model = checkpoints.load_model(
                info.filename,
                info.config,
                device="cpu" if offloaded else self.device,
                dtype=self.dtype,
                allow_unsafe=self.allow_unsafe,
                precision=self.precision,
            )
            _check_unchanged(info)
        except Exception as e:
            self.last_error = f"{info.title}: {e}"
            if previous is not None:
                self._place(previous)  # it stays the current model, where it computes
            raise
        if offloaded:
            offload.enable(model, self.offload_mode, self.device)
        if self.on_loaded is not None:
            self.on_loaded(model)
        loaded = LoadedModel(info, model, time.perf_counter() - t0, info.stamp)
        self._loaded[info.filename] = loaded
        self._make_current(loaded)
        self.last_error = None
        self._changed = None
        self._warned_missing.discard(info.filename)
        self._evict()
        log.info("Loaded %s in %.1fs", info.title, loaded.load_seconds)
        return loaded

    def _up_to_date(self, info: CheckpointInfo) -> CheckpointInfo:
        """`info` hashed again if its file changed since it was listed, so the hash names the bytes loaded."""
        try:
            now = FileStamp.of(info.filename)
        except OSError as e:
            raise CheckpointError(f"{info.name}: {e.strerror or e}; press refresh to update the list") from e
        if now == info.stamp and info.stamp is not None:
            return self.registry.with_hash(info)  # a lazily listed checkpoint is hashed when first loaded
        return self.registry.rehash(info)

    def _verified(self, loaded: LoadedModel) -> LoadedModel:
        """`loaded` while its file is as it was read; else the file loaded again, or a CheckpointError."""
        try:
            now = FileStamp.of(loaded.info.filename)
        except FileNotFoundError:
            if loaded.info.filename not in self._warned_missing:
                self._warned_missing.add(loaded.info.filename)
                log.warning("%s was deleted or moved; the weights read from it stay in use", loaded.info.title)
            return loaded
        except OSError:
            now = None
        if now == loaded.stamp:
            return loaded
        what = loaded.stamp.differences(now) if loaded.stamp and now else "it cannot be read"
        log.warning("%s changed on disk since it was loaded (%s); loading it again", loaded.info.title, what)
        self._loaded.pop(loaded.info.filename, None)
        if self._current is loaded:
            self._current = None
            self._changed = loaded.info
        return self._load_changed(loaded.info)

    def _load_changed(self, info: CheckpointInfo) -> LoadedModel:
        """A checkpoint whose file changed after it was loaded, loaded again; refused while it is not valid."""
        try:
            return self._load_file(self.registry.rehash(info))
        except UserError as e:
            self._changed = info
            self.last_error = (
                f"{info.name} changed on disk since it was loaded and cannot be loaded again: {e}. The old weights "
                "are not used: wait until the file is complete, or pick another checkpoint"
            )
            raise CheckpointError(self.last_error) from e

    def _make_current(self, loaded: LoadedModel) -> None:
        previous = self._current
        if previous is not None and previous is not loaded:
            self._park(previous.model)
        self._place(loaded)
        self._current = loaded

    def _place(self, loaded: LoadedModel) -> None:
        """A model onto the device it computes on (back from RAM after a switch)."""
        model = loaded.model
        if model.offloader is None and not _same_device(model.device, self.device):
            t0 = time.perf_counter()
            model.to(self.device, self.dtype)
            log.info("Moved %s to %s in %.1fs", loaded.info.title, self.device, time.perf_counter() - t0)

    def _park(self, model: StableDiffusionModel) -> None:
        """A model that stops being current: its weights off the GPU if so configured."""
        if model.offloader is not None:
            model.offloader.release()  # its part on the GPU back to RAM
        elif self.keep_in_cpu and self.device.type != "cpu" and model.device.type != "cpu":
            model.to("cpu", self.dtype)

    def set_keep_in_cpu(self, on: bool) -> None:
        with self._lock:
            self.keep_in_cpu = on
            for loaded in self._loaded.values():
                if loaded is not self._current:
                    if on:
                        self._park(loaded.model)
                    else:
                        self._place(loaded)

    def _evict(self) -> None:
        while len(self._loaded) > self.keep_in_memory:
            filename, old = self._loaded.popitem(last=False)
            log.info("Unloaded %s (checkpoint limit %d)", old.info.title, self.keep_in_memory)

    def set_keep_in_memory(self, n: int) -> None:
        with self._lock:
            self.keep_in_memory = max(1, n)
            self._evict()

    def get(self, alias: str | None = None) -> LoadedModel:
        """The model for a request: `alias` if given, else the current one, else the first checkpoint found."""
        with self._lock:
            if alias:
                info = self.registry.get(alias)
                if self._current is None or self._current.info.filename != info.filename:
                    return self.load(info)
                return self._verified(self._current)
            if self._current is not None:
                return self._verified(self._current)
            if self._changed is not None:
                return self._load_changed(self._changed)
            items = self.registry.list() or self.registry.refresh()
            if not items:
                raise NoModelLoadedError(
                    "no checkpoint is available: put 512-depth-ema.ckpt or .safetensors (and optionally its .yaml) "
                    "into models/Stable-diffusion/ and press refresh"
                )
            return self.load(items[0])

    def unload(self) -> None:
        with self._lock:
            self._loaded.clear()
            self._current = None
            self._changed = None
        log.info("Unloaded all checkpoints")

    def reload(self) -> LoadedModel:
        """Load the current checkpoint again from disk (after the file changed)."""
        with self._lock:
            if self._current is None:
                return self.get()
            info = self._current.info
            self._loaded.pop(info.filename, None)
            fresh = next((i for i in self.registry.refresh() if i.filename == info.filename), info)
            return self.load(fresh)

    def loaded_models(self) -> list[StableDiffusionModel]:
        with self._lock:
            return [m.model for m in self._loaded.values()]

    def loaded_titles(self) -> list[str]:
        with self._lock:
            return [m.info.title for m in self._loaded.values()]


def _check_unchanged(info: CheckpointInfo) -> None:
    """The file still as it was before it was read (else what was read may be half old, half new)."""
    try:
        now = FileStamp.of(info.filename)
    except OSError as e:
        raise CheckpointError(f"{info.name} disappeared while it was being read: {e.strerror or e}") from e
    if now != info.stamp:
        raise CheckpointError(
            f"{info.name} changed while it was being read ({info.stamp.differences(now) if info.stamp else 'new'});"
            " try again once the copy or download has finished"
        )


def _same_device(a: torch.device, b: torch.device) -> bool:
    """'cuda' and 'cuda:0' are the same device for a model (the index is filled in when tensors go there)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)
