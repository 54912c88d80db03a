"""What one request being run is made of: its context, its prepared inputs, its conditioning, its result.

Plain typed containers (no behaviour beyond timing); the steps of ``process`` live in ``inputs``,
``latents``, ``sampling`` and ``outputs`` and take a ``Job``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest, GenerationResult
from modules.core.samplers import SamplerSpec
from modules.core.settings import Settings
from modules.core.styles import StyleDatabase
from modules.generation.conditioning import ConditioningCache
from modules.models.extra_networks import ExtraNetworks
from modules.models.manager import LoadedModel, ModelManager
from modules.models.sd_model import StableDiffusionModel
from modules.models.upscaling import UpscalerRegistry

T = TypeVar("T")


class DepthCache:
    """MiDaS results and init latents per (model, image, size): re-runs with a new seed, prompt or
    strength skip MiDaS and the VAE encoder entirely."""

    def __init__(self, size: int = 16):
        self.size = size
        self._items: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: tuple, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = compute()
        with self._lock:
            self.misses += 1
            if self.size > 0:
                self._items[key] = value
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value


@dataclass
class ProcessingContext:
    """What ``process`` works with; built by the composition root (or a test), passed explicitly."""

    models: ModelManager
    settings: Settings
    data_dir: Path
    conditioning: ConditioningCache = field(default_factory=ConditioningCache)
    depth_cache: DepthCache = field(default_factory=DepthCache)
    control: JobControl = field(default_factory=JobControl)
    hooks: Hooks = field(default_factory=Hooks)
    upscalers: UpscalerRegistry | None = None  # hires. fix's and SD upscale's pixel upscalers
    extra: ExtraNetworks | None = None  # LoRA, embeddings, VAE files (None: none of them)
    styles: StyleDatabase | None = None  # styles.csv (None: no styles)


@dataclass
class PreparedImage:
    """One init image ready for the pipeline."""

    work: Image.Image  # W x H, what the VAE encodes (after masked-content fill)
    for_depth: Image.Image  # W x H, what MiDaS sees (before fill)
    original: np.ndarray  # what results are composited onto (W x H, or the full image for "only masked")
    overlay_mask: np.ndarray | None  # blurred mask at `original` size, 255 = generated
    work_mask: np.ndarray | None  # blurred mask at W x H
    paste_to: tuple[int, int, int, int] | None  # "only masked": x, y, w, h in `original`
    latent_source: Image.Image | None = None  # latent upscale: the image encoded at its own size
    depth_map: np.ndarray | None = None  # user depth map (float64) transformed like the image


@dataclass
class JobInputs:
    """The request's images after step 3: init images, the user's depth map, and what the depth came from."""

    prepared: list[PreparedImage]
    user_depth: np.ndarray | None  # the decoded map at its own size (None: MiDaS, or a model without depth)
    depth_label: str | None  # infotext "Depth source": "MiDaS", "uploaded map", None without depth


@dataclass
class PromptConditioning:
    """Prompt and negative prompt contexts, padded to the same length: [1, T, C] each."""

    cond: torch.Tensor
    uncond: torch.Tensor


@dataclass
class Job:
    """One request being run: what every batch of it shares."""

    ctx: ProcessingContext
    loaded: LoadedModel
    request: GenerationRequest
    settings: Settings
    sampler: SamplerSpec
    schedule: str
    inputs: JobInputs
    result: GenerationResult
    text: PromptConditioning | None = None
    text_key: str = ""  # what the conditioning depends on besides the checkpoint (networks, embeddings)
    vae_key: str = ""  # the VAE file in use and tiling, for the init-latent cache
    infotext: dict[str, str] = field(default_factory=dict)  # Lora hashes, TI hashes, VAE, Tiling
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def model(self) -> StableDiffusionModel:
        return self.loaded.model

    def timed(self, stage: str, fn: Callable[..., T], *args) -> T:
        """Run fn(*args), adding its seconds to `stage`."""
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
        return out
