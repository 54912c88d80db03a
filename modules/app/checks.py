"""Checking a request before it is queued: the one place every front end's refusals come from.

Sizes and ranges against the effective settings (the request's overrides applied), the sampler and
its schedule type, and the checkpoint an override names.  A template (the batch command's and the
Batch tab's request, whose images are filled in per file) is checked without its images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modules.core import samplers
from modules.core.request import GenerationRequest
from modules.core.settings import Settings

if TYPE_CHECKING:  # the registry is passed in; importing it here would load torch for --help
    from modules.models.checkpoints import CheckpointRegistry


def check_request(request: GenerationRequest, settings: Settings, registry: CheckpointRegistry | None = None, *,
                  template: bool = False) -> GenerationRequest:  # fmt: skip
    """Raise a ValidationError / CheckpointNotFoundError naming what is wrong; returns the request normalised."""
    effective = settings.override(request.override_settings if isinstance(request.override_settings, dict) else {},
                                  strict=False)  # fmt: skip
    request.validate(max_pixels=effective.max_output_pixels, max_images=effective.max_batch_images,
                     template=template)  # fmt: skip
    spec = samplers.find_sampler(request.sampler_name, effective.default_sampler)
    samplers.resolve_schedule(spec, request.scheduler)
    checkpoint = request.override_settings.get("sd_model_checkpoint")
    if checkpoint and registry is not None:
        registry.get(checkpoint)
    return request
