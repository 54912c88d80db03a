"""Step 6 of a request, sampling: noise -> (img2img) noised init latent -> guided steps with depth -> latents.

Split by what each part is (k-diffusion's shape, so any sampler composes with any schedule):

* ``schedules``  sigma schedules as small pure functions, and the model's discrete sigmas
* ``k_samplers``, ``dpm_solver``, ``extra``  samplers as pure functions over a denoiser and sigmas
* ``denoiser``   the model as ``D(x, sigma) -> x0``: CFG + depth channel (here) + inpaint blend
* ``noise``      seeded start noise and per-step noise (per-image generators, Brownian trees)
* ``loop``       the diffusers-scheduler loop the timestep samplers (DDIM, PLMS, UniPC) run
* ``batch``      one batch of a ``Job``: strength -> steps, the sampler run, the step callback

The guidance itself is defined here: every sampler goes through ``predict_noise``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modules.models.sd_model import StableDiffusionModel


@dataclass
class Guidance:
    """Everything the UNet sees besides the noisy latent: contexts, depth, CFG scale, per-job speed options."""

    cond: torch.Tensor  # [B, T, C]
    uncond: torch.Tensor  # [B, T, C]
    depth: torch.Tensor | None  # [B, 1, h, w] in [-1, 1] for the depth model
    cfg_scale: float
    s_min_uncond: float = 0.0  # skip the negative prompt on odd steps below this sigma (A1111's NGMS)


@dataclass
class Inpaint:
    """Latent-space inpainting: `mask` 1 = regenerate; the rest follows the (re-noised) `init`."""

    init: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor


def predict_noise(
    model: StableDiffusionModel, x: torch.Tensor, t: torch.Tensor, g: Guidance, *, skip_uncond: bool = False
) -> torch.Tensor:
    """Classifier-free guidance with the depth map concatenated as the fifth channel (eps or v)."""
    return _guided(model, x, t, g, skip_uncond).float()


def _guided(model: StableDiffusionModel, x: torch.Tensor, t: torch.Tensor, g: Guidance, skip_uncond: bool):
    concat = [g.depth] if g.depth is not None else []
    if g.cfg_scale == 1.0 or skip_uncond:
        return model.apply_model(x, t, {"c_concat": concat, "c_crossattn": [g.cond]})
    both = {
        "c_concat": [torch.cat([g.depth, g.depth])] if concat else [],
        "c_crossattn": [torch.cat([g.uncond, g.cond])],
    }
    t = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.numel() > 1 else t  # per-image sigmas (k samplers)
    out = model.apply_model(torch.cat([x, x]), t, both)
    uncond, cond = out.chunk(2)
    return uncond + g.cfg_scale * (cond - uncond)


from modules.generation.sampling.batch import cheap_preview, denoise_batch, denoising_steps, step_callback  # noqa: E402
from modules.generation.sampling.loop import (  # noqa: E402
    blend_inpaint,
    build_scheduler,
    denoise,
    initial_latents,
    prepare_timesteps,
    sigma_at,
)
from modules.generation.sampling.noise import image_noise, slerp  # noqa: E402

__all__ = [
    "Guidance", "Inpaint", "blend_inpaint", "build_scheduler", "cheap_preview", "denoise", "denoise_batch",
    "denoising_steps", "image_noise", "initial_latents", "predict_noise", "prepare_timesteps", "sigma_at", "slerp",
    "step_callback",
]  # fmt: skip
