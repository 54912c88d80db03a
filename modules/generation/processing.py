"""``process(request, context) -> GenerationResult``: the single entry point for UI, API, CLI, extensions.

Recipe for a request (each step in its own module):

1. Validate the request against the effective settings (per-request overrides on a copy).
2. Pick the checkpoint (``override_settings.sd_model_checkpoint``) and the sampler / schedule.
3. ``inputs``: the init images resized or cropped around the mask, mask blur and fill, the user's depth map.
4. ``latents``: depth (MiDaS through the model, cached, or the user's map), seeded noise, init latents.
5. Prompts -> conditioning (``conditioning``, cached per model and prompt; chunks, BREAK and emphasis).
6. ``sampling``: for each batch, the strength's timesteps and the CFG loop with the depth channel,
   the unmasked area blended back every step; ``hires``: txt2img's second pass (hires. fix); then
   the VAE decodes.
7. ``outputs``: crops pasted back, the original pixels outside the mask, infotext, saving, the grid.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from modules.core import images, memory, samplers
from modules.core.errors import UserError, ValidationError
from modules.core.hooks import ScriptRunner
from modules.core.progress import Stop
from modules.core.request import GenerationRequest, GenerationResult
from modules.core.settings import Settings
from modules.generation import hires, latents, networks, outputs, pixels, sampling, sd_upscale
from modules.generation.inputs import finish_image, prepare_inputs
from modules.generation.job import DepthCache, Job, ProcessingContext, PromptConditioning
from modules.models import midas, seamless
from modules.models.manager import LoadedModel

__all__ = ["DepthCache", "ProcessingContext", "estimate_depth", "process", "random_seed"]
T = TypeVar("T")


def random_seed() -> int:
    return random.randrange(4294967294)


def process(request: GenerationRequest, ctx: ProcessingContext) -> GenerationResult:
    """Run one request and return its images, depth maps and infotexts."""
    t_start = time.perf_counter()
    # 1. settings and validation
    settings = ctx.settings.override(request.override_settings, strict=False)
    if request.script_name:
        return _run_script(request, ctx, settings)
    request = ctx.hooks.before_process(request) or request
    request.validate(max_pixels=settings.max_output_pixels, max_images=settings.max_batch_images)
    choice = samplers.resolve(request.sampler_name, request.scheduler, settings.default_sampler)
    spec, schedule = choice.spec, choice.schedule
    # 2. the checkpoint (a per-request override is switched back afterwards unless told otherwise)
    return _with_checkpoint(
        request, ctx, lambda loaded: _run(start_job(request, ctx, settings, spec, schedule, loaded), t_start)
    )


def _with_checkpoint(request: GenerationRequest, ctx: ProcessingContext, work: Callable[[LoadedModel], T]) -> T:
    previous = ctx.models.current
    loaded = ctx.models.get(request.override_settings.get("sd_model_checkpoint") or None)
    try:
        return work(loaded)
    finally:
        restore = request.override_settings_restore_afterwards and previous is not None
        if restore and ctx.models.current is not None and ctx.models.current.info != previous.info:
            ctx.models.load(previous.info)


def _run_script(request: GenerationRequest, ctx: ProcessingContext, settings: Settings) -> GenerationResult:
    """A selectable script (X/Y/Z plot...) runs the job, calling the normal pipeline for each image it needs."""
    script = ctx.hooks.find_script(request.script_name)
    if script is None:
        known = ", ".join(ctx.hooks.script_titles()) or "none"
        raise ValidationError("script_name", f"script {request.script_name!r} not found; available: {known}")
    request.validate(max_pixels=settings.max_output_pixels, max_images=settings.max_batch_images)
    inner = dataclasses.replace(request, script_name=None, script_args={})

    def save_grid(image: np.ndarray, req: GenerationRequest, text: str) -> str | None:
        return outputs.write_grid(image, req, settings, ctx.data_dir, seed=req.seed, text=text, warnings=[])

    runner = ScriptRunner(lambda r: process(r, ctx), save_grid, lambda: ctx.control.interrupted,
                          **sd_upscale.runner_tools(ctx, settings))  # fmt: skip
    return _with_checkpoint(request, ctx, lambda _loaded: script.run(inner, dict(request.script_args), runner))


def start_job(request: GenerationRequest, ctx: ProcessingContext, settings: Settings, spec: samplers.SamplerSpec,
              schedule: str, loaded: LoadedModel) -> Job:  # fmt: skip
    """Steps 3 and 5: prepared init images and user depth map, and the (cached) prompt conditioning."""
    model = loaded.model
    if model.is_depth and not request.is_img2img and request.depth_map is None:
        raise UserError("the depth model needs an input image or a depth map")
    result = GenerationResult(
        model_name=Path(loaded.info.name).stem,
        model_hash=loaded.info.shorthash or "",
        width=request.width,
        height=request.height,
        job_timestamp=ctx.control.state.job_timestamp,
    )
    result.warnings.extend(samplers.resolve(request.sampler_name, request.scheduler, settings.default_sampler).warnings)
    request = networks.apply_styles(request, ctx, result.warnings)
    inputs = prepare_inputs(request, settings, depth_model=model.is_depth, enlarge=img2img_upscaler(ctx, settings))
    job = Job(ctx, loaded, request, settings, spec, schedule, inputs, result)
    job.timed("networks", networks.prepare, job)  # LoRA, VAE, embeddings: before the text encoder runs
    job.text = job.timed("text", prompt_conditioning, job)
    return job


def img2img_upscaler(ctx: ProcessingContext, settings: Settings) -> images.Enlarge | None:
    """Settings -> Upscaling -> Upscaler for img2img (A1111's ``upscaler_for_img2img``): init images made
    larger go through it; None (the default) or Lanczos keeps the plain Lanczos resize."""
    name = settings.upscaler_for_img2img
    if not name or name in ("None", "Lanczos") or ctx.upscalers is None:
        return None
    ctx.upscalers.get(name)  # an unknown name is refused before any work

    def enlarge(img, scale: float):
        return ctx.upscalers.upscale(img, name, size=(round(img.width * scale), round(img.height * scale)),
                                     tile=settings.ESRGAN_tile, overlap=settings.ESRGAN_tile_overlap,
                                     interrupted=lambda: ctx.control.interrupted)  # fmt: skip

    return enlarge


def prompt_conditioning(job: Job) -> PromptConditioning:
    """Prompt and negative prompt contexts (cached per model and text), padded to the same length."""
    return networks.conditioning(job)


def _run(job: Job, t_start: float) -> GenerationResult:
    """Every batch of the job (batch count x batch size images), then the grid."""
    request, control = job.request, job.ctx.control
    seed = request.seed if request.seed != -1 else random_seed()
    subseed = request.subseed if request.subseed != -1 else random_seed()
    control.begin(request.batch_size * request.n_iter, request.steps, "img2img" if request.is_img2img else "txt2img")
    with seamless.circular_padding(job.model, request.tiling):
        _run_batches(job, seed, subseed)
    result = job.result
    result.interrupted = control.interrupted
    outputs.save_grid(result, request, job.settings, job.ctx.data_dir)
    result.warnings.extend(job.ctx.hooks.take_warnings())
    job.timings["total"] = time.perf_counter() - t_start
    result.timings = job.timings
    return result


def _run_batches(job: Job, seed: int, subseed: int) -> None:
    request, control = job.request, job.ctx.control
    for batch_no in range(request.n_iter):
        if control.interrupted:
            break
        first = batch_no * request.batch_size
        idx = list(range(first, first + request.batch_size))
        seeds, subseeds = [seed + i for i in idx], [subseed + i for i in idx]
        control.begin_batch(first, request.steps)
        batch = generate_batch(job, idx, seeds, subseeds)
        if batch is None:
            continue  # skipped
        imgs, depth_maps, stopped = batch
        outputs.collect(job, idx, seeds, subseeds, imgs, depth_maps)
        control.finish_batch(first + len(imgs))
        if stopped is Stop.INTERRUPT:
            break


def generate_batch(job: Job, idx: list[int], seeds: list[int], subseeds: list[int]):
    """The images at job indices `idx`: (images, depth maps, why it stopped), None when skipped."""
    prepared = job.inputs.prepared
    preps = [prepared[i % len(prepared)] for i in idx] if prepared else [None] * len(idx)
    noise, gens = latents.batch_noise(job, seeds, subseeds)
    depth_cond, depth_display = job.timed("depth", latents.batch_depth, job, preps)
    init = job.timed("encode", latents.batch_init, job, preps) if job.request.is_img2img else None
    inpaint = None
    if init is not None and preps[0].work_mask is not None:
        init, inpaint = latents.latent_inpaint(job, preps, init, noise)
    memory.release_freed_memory()  # each stage's freed blocks are kept for reuse within it, not across
    first_job = hires.first_pass_job(job) if hires.wanted(job.request) else job
    out, stopped = job.timed("denoise", sampling.denoise_batch, first_job, idx, seeds, noise, gens, init, inpaint,
                             depth_cond)  # fmt: skip
    if stopped is None and hires.wanted(job.request):  # 6b. hires. fix: the second pass at the new size
        memory.release_freed_memory()
        out, depth_display, stopped = job.timed("hires", hires.second_pass, job, idx, seeds, gens, out)
    # Skip (stopped is Stop.SKIP): the image is finished at the current step and kept, as A1111 does
    if not torch.isfinite(out).all():
        raise UserError(
            "A tensor with all NaNs was produced. This happens with some models in half precision: "
            "turn on Settings -> Optimizations -> Upcast cross attention layer to float32, "
            "or restart with --no-half (or --precision full)."
        )
    memory.release_freed_memory()
    decoded = job.timed("decode", latents.decode, job, out)
    return [finish_image(img, p) for img, p in zip(decoded, preps, strict=True)], depth_display, stopped


def estimate_depth(ctx: ProcessingContext, image: bytes) -> np.ndarray:
    """MiDaS depth of an image at its own size (rounded to multiples of 8), float32 in [0, 1], white = near."""
    loaded = ctx.models.get()
    loaded.model.require_depth()  # a model without depth is refused before the image is decoded
    img = images.decode_image(image, "image", max_pixels=ctx.settings.max_input_pixels,
                              background=ctx.settings.img2img_background_color)  # fmt: skip
    raw = loaded.model.raw_depth(pixels.to_tensor(img))
    return midas.depth_for_display(raw, (img.height, img.width))
