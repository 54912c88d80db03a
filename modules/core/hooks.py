"""The hook surface ``process`` calls; extensions implement it (see modules/app/extensions.py).

``Hooks`` is the do-nothing default.  Each method gets plain dataclasses and returns plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modules.core.request import GenerationRequest, GenerationResult, StepInfo


@dataclass
class ImageInfo:
    """One finished image, as hooks see it after generation (they may replace ``image``)."""

    image: np.ndarray  # uint8 HxWx3
    index: int  # position in the job
    seed: int
    prompt: str
    request: GenerationRequest
    depth_map: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScriptRunner:
    """What a selectable script gets to do its work with."""

    process: Callable[[GenerationRequest], GenerationResult]  # the normal pipeline for one request
    save_grid: Callable[[np.ndarray, GenerationRequest, str], str | None]  # (image, request, infotext) -> path
    interrupted: Callable[[], bool]
    # tools of the pipeline for scripts that work on pictures (SD upscale); None where not given
    upscale: Callable[[np.ndarray, str, float], np.ndarray] | None = None  # (image, upscaler, scale) -> image
    depth: Callable[[GenerationRequest, np.ndarray], np.ndarray | None] | None = None  # whole-picture map in [0, 1]
    save_image: Callable[[np.ndarray, GenerationRequest, str, int], str | None] | None = None  # (.., text, seed)
    upscalers: Callable[[], list[str]] = lambda: ["None"]  # the upscaler names, in the registry's order
    max_input_pixels: int = 8192 * 8192


class Hooks:
    """No extensions: every hook leaves things as they are."""

    def before_process(self, request: GenerationRequest) -> GenerationRequest:
        return request

    def on_step(self, info: StepInfo) -> Any | None:
        """Return a replacement latents tensor, or None."""
        return None

    def after_image(self, info: ImageInfo) -> np.ndarray | None:
        """Return a replacement image, or None."""
        return None

    def infotext_fields(self, request: GenerationRequest) -> dict[str, Any]:
        return {}

    def find_script(self, title: str) -> Any | None:
        """The selectable script called `title` (see modules/extensions.Script), or None."""
        return None

    def script_titles(self) -> list[str]:
        return []

    def take_warnings(self) -> list[str]:
        """Problems the hooks met during the job (e.g. an extension that raised), to report with the result."""
        return []
