"""Hires. fix, the second pass of a txt2img job (A1111's ``sample_hr_pass``).

1. The first pass runs at width x height as usual (its progress counted as part of both passes).
2. Upscale to ``hires_size``: a latent mode (``Latent``, ``Latent (bicubic)``, ...) resizes the latents;
   any other upscaler (``Lanczos``, an ESRGAN file...) works on the decoded image, re-encoded by the VAE.
   A1111's truncation (``hr_resize_x`` and ``hr_resize_y`` of another aspect) crops around the centre.
3. With the depth model, the user's depth map at the new size (stretched like the first pass, cropped
   like the latents).
4. img2img at the new size: ``hr_second_pass_steps`` (0: ``steps``) steps exactly, ``denoising_strength``,
   the hires prompts, sampler, schedule and CFG scale (each falling back to the first pass's); noise
   drawn on from each image's seeded generator, as A1111's ``rng.next()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.core import samplers
from modules.core.errors import UserError
from modules.core.progress import Stop
from modules.core.request import GenerationRequest, HiresSize, hires_size
from modules.generation import latents, networks, pixels, sampling
from modules.generation.job import Job, PromptConditioning
from modules.models.upscaling import DEFAULT_LATENT_MODE, is_latent_mode, upscale_latent

SAME = ("", "Use same sampler", "Use same scheduler")


def wanted(request: GenerationRequest) -> bool:
    return bool(request.enable_hr) and not request.is_img2img


def size_of(request: GenerationRequest) -> HiresSize:
    return hires_size(request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)


def upscaler_name(request: GenerationRequest) -> str:
    return request.hr_upscaler or DEFAULT_LATENT_MODE


def steps_of(request: GenerationRequest) -> int:
    """Steps the second pass runs (exactly, as A1111: the schedule is stretched to steps / strength)."""
    if request.denoising_strength <= 0:
        return 0
    return request.hr_second_pass_steps or request.steps


class PassProgress:
    """The job's control with steps offset, so that progress runs once over both passes."""

    def __init__(self, control: Any, offset: int, total: int):
        self._control, self._offset, self._total = control, offset, total

    def step(self, step: int, total: int, make_preview=None) -> Stop | None:
        return self._control.step(self._offset + step, self._total, make_preview)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._control, name)


def first_pass_job(job: Job) -> Job:
    """The job whose progress counts the first pass as the first part of both passes."""
    first = job.request.steps
    control = PassProgress(job.ctx.control, 0, first + steps_of(job.request))
    return dataclasses.replace(job, ctx=dataclasses.replace(job.ctx, control=control))


def second_pass(job: Job, idx: list[int], seeds: list[int], gens: list[torch.Generator],
                first: torch.Tensor) -> tuple[torch.Tensor, list, Stop | None]:  # fmt: skip
    """First-pass latents -> (second-pass latents, depth maps to show, why it stopped)."""
    request, model = job.request, job.model
    size = size_of(request)
    hr_job = second_pass_job(job, size)
    init = job.timed("hires upscale", upscale, job, first, size)
    depth_cond, display = hires_depth(hr_job, len(idx), size)
    c, h, w = init.shape[1:]
    noise = torch.stack([torch.randn((c, h, w), generator=g) for g in gens]).to(model.device)
    out, stopped = denoise(hr_job, idx, seeds, noise, gens, init, depth_cond)
    return out, display, stopped


def second_pass_job(job: Job, size: HiresSize) -> Job:
    """The job as the second pass sees it: the final size, the hires steps, prompts, sampler and CFG."""
    r = job.request
    width, height = size.final
    sampler_name = r.hr_sampler_name if r.hr_sampler_name not in (None, *SAME) else job.sampler.name
    spec = samplers.find_sampler(sampler_name, job.settings.default_sampler)
    schedule = samplers.resolve_schedule(spec, r.hr_scheduler if r.hr_scheduler not in (None, *SAME) else job.schedule)
    hr_request = dataclasses.replace(
        r, width=width, height=height, steps=steps_of(r), sampler_name=spec.name, scheduler=schedule,
        prompt=r.hr_prompt or r.prompt, negative_prompt=r.hr_negative_prompt or r.negative_prompt,
        cfg_scale=r.cfg_scale if r.hr_cfg is None else r.hr_cfg,
    )  # fmt: skip
    first = r.steps
    control = PassProgress(job.ctx.control, first, first + hr_request.steps)
    hr_job = dataclasses.replace(job, request=hr_request, sampler=spec, schedule=schedule,
                                 ctx=dataclasses.replace(job.ctx, control=control))  # fmt: skip
    if hr_request.prompt != r.prompt or hr_request.negative_prompt != r.negative_prompt:
        hr_job.text = conditioning(hr_job)
    return hr_job


def conditioning(job: Job) -> PromptConditioning:
    """The second pass's prompts, encoded as the first pass's are (tags removed, embeddings in)."""
    return networks.conditioning(job)


# --- 2. upscale -----------------------------------------------------------------------------------


def crop_latents(x: torch.Tensor, size: HiresSize) -> torch.Tensor:
    """A1111's truncation: ``truncate`` latent pixels off, split around the centre."""
    tx, ty = size.truncate
    if tx == 0 and ty == 0:
        return x
    h, w = x.shape[-2:]
    return x[:, :, ty // 2 : h - (ty + 1) // 2, tx // 2 : w - (tx + 1) // 2]


def upscale(job: Job, first: torch.Tensor, size: HiresSize) -> torch.Tensor:
    """The first pass's latents at the second pass's size (latent mode, or pixels and the VAE)."""
    name = upscaler_name(job.request)
    up_w, up_h = size.upscale
    if is_latent_mode(name):
        return crop_latents(upscale_latent(first, (up_h // 8, up_w // 8), name), size)
    registry = job.ctx.upscalers
    if registry is None:
        raise UserError(f"hires. fix upscaler {name!r}: no upscalers are available here; use a latent mode")
    decoded = latents.decode(job, first)
    s = job.settings
    encoded = []
    for img in decoded:
        big = registry.upscale(img, name, size=(up_w // 8 * 8, up_h // 8 * 8), tile=s.ESRGAN_tile,
                               overlap=s.ESRGAN_tile_overlap, interrupted=lambda: job.ctx.control.interrupted)  # fmt: skip
        z = latents.vae_call(job, lambda x: job.model.encode_first_stage(x).mean, pixels.to_tensor(big))
        encoded.append(crop_latents(z.float() * job.model.scale_factor, size))
    return torch.cat(encoded).to(first.device)


# --- 3. depth -------------------------------------------------------------------------------------


def depth_at(user_depth: np.ndarray, request: GenerationRequest, size: HiresSize) -> np.ndarray:
    """The user's map as the second pass's image: stretched to the upscale size, cropped as the latents."""
    up_w, up_h = size.upscale[0] // 8 * 8, size.upscale[1] // 8 * 8
    img = Image.fromarray(user_depth.astype(np.float32), mode="F").resize((up_w, up_h), Image.Resampling.BICUBIC)
    left, top = size.truncate[0] // 2 * 8, size.truncate[1] // 2 * 8
    width, height = size.final
    return np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.float64)


def hires_depth(hr_job: Job, count: int, size: HiresSize) -> tuple[torch.Tensor | None, list]:
    """Depth conditioning and display maps at the new size (None for models without depth)."""
    if not hr_job.model.is_depth:
        return None, [None] * count
    user = hr_job.inputs.user_depth
    if user is None:
        raise UserError("the depth model needs an input image or a depth map")
    r = hr_job.request
    cond, display = latents.user_depth_conditioning(depth_at(user, r, size), r, (r.height // 8, r.width // 8))
    return cond.repeat(count, 1, 1, 1).to(hr_job.model.device), [display.numpy()] * count


# --- 4. img2img at the new size -------------------------------------------------------------------

FROM_LATENTS = b"hires. fix: img2img from the upscaled latents"  # marks the second pass as img2img; never decoded


def denoise(job: Job, idx: list[int], seeds: list[int], noise: torch.Tensor, gens: list[torch.Generator],
            init: torch.Tensor, depth_cond: torch.Tensor | None) -> tuple[torch.Tensor, Stop | None]:  # fmt: skip
    """The second pass through the job's sampler: img2img from ``init``, exactly ``request.steps`` steps."""
    as_img2img = dataclasses.replace(job.request, init_images=[FROM_LATENTS], mask=None, initial_noise_multiplier=1.0)
    settings = job.settings.override({"img2img_fix_steps": True}, strict=False)
    img2img_job = dataclasses.replace(job, request=as_img2img, settings=settings)
    return sampling.denoise_batch(img2img_job, idx, seeds, noise, gens, init, None, depth_cond)
