"""Checking a request before it is queued: the one place every front end's refusals come from.

Sizes and ranges against the effective settings (the request's overrides applied), the sampler and
its schedule type, and the checkpoint an override names.  A template (the batch command's and the
Batch tab's request, whose images are filled in per file) is checked without its images.

Memory admission: a job's peak is estimated from the costs measured in BENCHMARKS.md (section 4)
and refused with the largest size that would fit when the free RAM (or VRAM) cannot hold it.  The
peak of a generation is the VAE decode of its batch: 512x512 x 4 peaked at 14,501 MiB with the
real SD2 model against 7,453 MiB for 512x512 x 1 (the whole run), so each output pixel of a batch
costs (14,501 - 7,453) MiB / (3 x 512 x 512) = 9,400 bytes in float32 with SD2's VAE, whose widest
full- or half-resolution level has 256 channels (activations scale with the channel count and the
dtype).  One 2048x2048 image: 36.7 GiB.  The weights are already resident (memory-mapped) and are
not counted again: ``memory.spare_bytes`` leaves them out of what is free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modules.core import memory, samplers
from modules.core.errors import UserError
from modules.core.request import GenerationRequest
from modules.core.settings import Settings

if TYPE_CHECKING:  # the registry is passed in; importing it here would load torch for --help
    from modules.models.checkpoints import CheckpointRegistry


SD2_BYTES_PER_PIXEL = 9_400  # float32, per output pixel per image of a batch (BENCHMARKS.md 4; see above)
SD2_VAE_WIDTH = 256  # channels of SD2's VAE at half resolution (ch 128 x ch_mult 2), the width that figure has
HEADROOM_BYTES = 512 * 2**20  # kept free besides the estimate (the allocator's slack, the job's small tensors)
GiB = 2**30


class InsufficientMemoryError(UserError):
    """A request whose estimated peak does not fit in the memory free now; says the largest that would."""

    status_code = 413


@dataclass(frozen=True)
class MemoryBudget:
    """What one job may take: `available` bytes of `where`, at `bytes_per_pixel` per output pixel and image."""

    available: int
    bytes_per_pixel: float
    where: str = "RAM"

    @classmethod
    def for_vae(cls, available: int, block_out_channels: tuple[int, ...] | list[int], dtype_bytes: int = 4,
                where: str = "RAM") -> MemoryBudget:  # fmt: skip
        """The budget for a VAE of these widths (as diffusers' ``block_out_channels`` / LDM's ch x ch_mult)."""
        width = max(list(block_out_channels)[:2])
        return cls(available, SD2_BYTES_PER_PIXEL * width / SD2_VAE_WIDTH * dtype_bytes / 4, where)

    def peak_bytes(self, width: int, height: int, batch_size: int) -> int:
        return int(self.bytes_per_pixel * width * height * batch_size) + HEADROOM_BYTES

    def largest_side(self, batch_size: int, aspect: float = 1.0) -> int:
        """The largest width (a multiple of 8, height = width / aspect) whose peak fits; 0 if none."""
        pixels = (self.available - HEADROOM_BYTES) / (self.bytes_per_pixel * max(1, batch_size))
        if pixels <= 0:
            return 0
        return int(math.sqrt(pixels * aspect)) // 8 * 8


def memory_budget(loaded: Any, worker: Any = None) -> MemoryBudget | None:
    """The budget for the loaded model (a ``LoadedModel``) on its device; None when it cannot be told.

    While the `worker` runs a job, the RAM it had to spare after its last job (the running job's memory
    comes back before a queued one starts); otherwise what is spare now."""
    model = getattr(loaded, "model", None)
    vae = getattr(model, "vae", None)
    if vae is None:
        return None
    try:
        channels = tuple(vae.config.block_out_channels)
        param = next(vae.parameters())
    except (AttributeError, StopIteration, TypeError):
        return None
    if param.device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(param.device)
        return MemoryBudget.for_vae(int(free), channels, param.element_size(), "GPU memory")
    spare = memory.spare_bytes()
    if worker is not None and getattr(worker, "busy", False) and getattr(worker, "idle_spare", None) is not None:
        spare = max(spare or 0, worker.idle_spare)
    return None if spare is None else MemoryBudget.for_vae(spare, channels, param.element_size(), "RAM")


def output_size(request: GenerationRequest) -> tuple[int, int]:
    """The size the VAE decodes at: hires. fix's final size when it runs, else width x height."""
    if getattr(request, "enable_hr", False) and not request.is_img2img:
        from modules.core.request import hires_size  # with hires. fix only

        return hires_size(request.width, request.height, request.hr_scale, request.hr_resize_x,
                          request.hr_resize_y).final  # fmt: skip
    return request.width, request.height


def check_memory(request: GenerationRequest, budget: MemoryBudget) -> None:
    """Refuse (413) a request whose estimated peak is above the budget, naming the largest size that fits."""
    width, height = output_size(request)
    need = budget.peak_bytes(width, height, request.batch_size)
    if need <= budget.available:
        return
    side = budget.largest_side(request.batch_size, width / height)
    fits = f"at most {side}x{side * height // width // 8 * 8}" if side >= 64 else "no size at all"
    by_batch = int((budget.available - HEADROOM_BYTES) // max(1, budget.bytes_per_pixel * width * height))
    batch = f", or batch size {by_batch} at {width}x{height}" if 1 <= by_batch < request.batch_size else ""
    raise InsufficientMemoryError(
        f"{width}x{height} x batch size {request.batch_size} needs about {need / GiB:.1f} GiB of {budget.where} "
        f"(the VAE decode), {max(0, budget.available) / GiB:.1f} GiB are free: {fits} fits at batch size "
        f"{request.batch_size}{batch} (batch count runs one batch at a time)"
    )


def check_request(request: GenerationRequest, settings: Settings, registry: CheckpointRegistry | None = None, *,
                  template: bool = False, budget: MemoryBudget | None = None) -> GenerationRequest:  # fmt: skip
    """Raise a ValidationError / CheckpointNotFoundError naming what is wrong; returns the request normalised.

    With a `budget`, a request whose estimated peak does not fit is an ``InsufficientMemoryError``."""
    effective = settings.override(request.override_settings if isinstance(request.override_settings, dict) else {},
                                  strict=False)  # fmt: skip
    request.validate(max_pixels=effective.max_output_pixels, max_images=effective.max_batch_images,
                     template=template)  # fmt: skip
    spec = samplers.find_sampler(request.sampler_name, effective.default_sampler)
    samplers.resolve_schedule(spec, request.scheduler)
    checkpoint = request.override_settings.get("sd_model_checkpoint")
    if checkpoint and registry is not None:
        registry.get(checkpoint)
    if budget is not None:
        check_memory(request, budget)
    return request
