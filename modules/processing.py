"""``process(request, context) -> GenerationResult``: the single entry point for UI, API, CLI, extensions.

Recipe for a request:

1. Validate the request against the effective settings (per-request overrides on a copy).
2. Pick the checkpoint (``override_settings.sd_model_checkpoint``) and the sampler / schedule.
3. Prepare the init images: resize mode or the "only masked" crop, mask blur, masked-content fill.
4. Depth: MiDaS through the model contract (cached per image and model) or the user's depth map.
5. Prompts -> conditioning (cached per model and prompt; chunks, BREAK and emphasis).
6. For each batch: seeds -> noise; init latents; timesteps for the denoising strength; denoise with
   CFG and the depth channel, blending the unmasked area back every step; decode.
7. Paste "only masked" crops back, composite the original pixels outside the mask, write the
   infotext, save atomically, make the grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

import numpy as np
import torch
from PIL import Image

from modules import depth, images, infotext, masking, memory, pipeline, samplers
from modules.conditioning import ConditioningCache, pad_to_same_length
from modules.errors import UserError, ValidationError
from modules.fileio import atomic_write_bytes
from modules.hooks import Hooks, ImageInfo, ScriptRunner
from modules.model_manager import LoadedModel, ModelManager
from modules.progress import JobControl
from modules.request import GenerationRequest, GenerationResult, InpaintArea, MaskedContent, ResizeMode, StepInfo
from modules.settings import Settings

log = logging.getLogger(__name__)


class DepthCache:
    """MiDaS results and init latents per (model, image, size): re-runs with a new seed, prompt or
    strength skip MiDaS and the VAE encoder entirely."""

    def __init__(self, size: int = 16):
        self.size = size
        self._items: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: tuple, compute) -> tuple[torch.Tensor, torch.Tensor]:
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
    spec = samplers.find_sampler(request.sampler_name, settings.default_sampler)
    schedule = samplers.resolve_schedule(spec, request.scheduler)
    # 2. the checkpoint (a per-request override is switched back afterwards unless told otherwise)
    return _with_checkpoint(
        request, ctx, lambda loaded: _process_with(request, ctx, settings, spec, schedule, loaded, t_start)
    )


def _with_checkpoint(request: GenerationRequest, ctx: ProcessingContext, work):
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
        return _write_grid(image, req, settings, ctx.data_dir, seed=req.seed, text=text, warnings=[])

    runner = ScriptRunner(lambda r: process(r, ctx), save_grid, lambda: ctx.control.interrupted)
    return _with_checkpoint(request, ctx, lambda _loaded: script.run(inner, dict(request.script_args), runner))


@dataclass
class Job:
    """One request being run: what every batch of it shares."""

    ctx: ProcessingContext
    loaded: LoadedModel
    request: GenerationRequest
    settings: Settings
    spec: samplers.SamplerSpec
    schedule: str
    prepared: list[PreparedImage]
    user_depth: np.ndarray | None
    cond: torch.Tensor
    uncond: torch.Tensor
    result: GenerationResult
    depth_label: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def model(self):
        return self.loaded.model

    def timed(self, stage: str, fn, *args):
        """Run fn(*args), adding its seconds to `stage`."""
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
        return out


def _process_with(request, ctx, settings, spec, schedule, loaded, t_start) -> GenerationResult:
    job = _start_job(request, ctx, settings, spec, schedule, loaded)
    seed = request.seed if request.seed != -1 else random_seed()
    subseed = request.subseed if request.subseed != -1 else random_seed()
    ctx.control.begin(
        request.batch_size * request.n_iter, request.steps, "img2img" if request.is_img2img else "txt2img"
    )
    for batch_no in range(request.n_iter):
        if ctx.control.interrupted:
            break
        first = batch_no * request.batch_size
        idx = list(range(first, first + request.batch_size))
        seeds, subseeds = [seed + i for i in idx], [subseed + i for i in idx]
        ctx.control.begin_batch(first, request.steps)
        batch = run_batch(job, idx, seeds, subseeds)
        if batch is None:
            continue  # skipped
        imgs, depth_maps, stopped = batch
        _collect(job, idx, seeds, subseeds, imgs, depth_maps)
        ctx.control.finish_batch(first + len(imgs))
        if stopped == "interrupt":
            break
    result = job.result
    result.interrupted = ctx.control.interrupted
    _save_grid(result, request, settings, ctx.data_dir)
    result.warnings.extend(ctx.hooks.take_warnings())
    job.timings["total"] = time.perf_counter() - t_start
    result.timings = job.timings
    return result


def _start_job(request, ctx, settings, spec, schedule, loaded) -> Job:
    """Steps 3 and 5: prepared init images and user depth map, and the (cached) prompt conditioning."""
    model = loaded.model
    if model.is_depth and not request.is_img2img and request.depth_map is None:
        raise UserError("the depth model needs an input image or a depth map")
    prepared = [prepare_image(request, data, i, settings) for i, data in enumerate(request.init_images)]
    user_depth = _user_depth(request, settings) if request.depth_map is not None and model.is_depth else None
    for p in prepared:
        if user_depth is not None:
            p.depth_map = transform_like(user_depth, request, p)
    result = GenerationResult(
        model_name=Path(loaded.info.name).stem,
        model_hash=loaded.info.shorthash or "",
        width=request.width,
        height=request.height,
        job_timestamp=ctx.control.state.job_timestamp,
    )
    depth_label = ("uploaded map" if user_depth is not None else "MiDaS") if model.is_depth else None
    job = Job(ctx, loaded, request, settings, spec, schedule, prepared, user_depth, None, None, result, depth_label)
    job.cond, job.uncond = job.timed("text", _prompt_conditioning, job)
    return job


def _prompt_conditioning(job: Job) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and negative prompt contexts (cached per model and text), padded to the same length."""
    s, cache, key = job.settings, job.ctx.conditioning, job.loaded.key
    args = {"clip_skip": s.CLIP_stop_at_last_layers, "emphasis": s.emphasis, "backtrack": s.comma_padding_backtrack}
    cond = cache.get(key, job.model, job.request.prompt, **args)
    uncond = cache.get(key, job.model, job.request.negative_prompt, **args)
    return pad_to_same_length(cond, uncond, cache.get(key, job.model, "", **args))


def _collect(job: Job, idx: list[int], seeds: list[int], subseeds: list[int], imgs, depth_maps) -> None:
    """Step 7 for one batch: after-image hooks, infotext, saving, into the result."""
    request, result, hooks = job.request, job.result, job.ctx.hooks
    for j, (img, dmap) in enumerate(zip(imgs, depth_maps, strict=True)):
        info = ImageInfo(img, idx[j], seeds[j], request.prompt, request, dmap)
        replaced = hooks.after_image(info)
        img = info.image if replaced is None else replaced
        text = infotext.build(
            request, prompt=request.prompt, negative_prompt=request.negative_prompt, seed=seeds[j],
            subseed=subseeds[j], sampler=job.spec.name, schedule=job.schedule, model_name=result.model_name,
            model_hash=result.model_hash or None, clip_skip=job.settings.CLIP_stop_at_last_layers,
            depth_source=job.depth_label, extra=hooks.infotext_fields(request),
        )  # fmt: skip
        result.images.append(img)
        result.infotexts.append(text)
        result.seeds.append(seeds[j])
        result.subseeds.append(subseeds[j])
        result.prompts.append(request.prompt)
        result.negative_prompts.append(request.negative_prompt)
        if dmap is not None:
            result.depth_maps.append(dmap)
        _save(result, request, job.settings, job.ctx.data_dir, img, dmap, seeds[j], text)


# --- step 3: images ---------------------------------------------------------------------------------


def prepare_image(request: GenerationRequest, data: bytes, index: int, settings: Settings) -> PreparedImage:
    """Decode, then resize (or crop around the mask), blur the mask, fill masked content."""
    field = f"init_images[{index}]"
    img = images.decode_image(data, field, max_pixels=settings.max_input_pixels,
                              background=settings.img2img_background_color)  # fmt: skip
    w, h = request.width, request.height
    if request.mask is None:
        work = images.resize_image(request.resize_mode, img, w, h)
        source = _latent_source(request, img)
        return PreparedImage(work, work, np.asarray(work), None, None, None, source)

    mask = masking.decode_mask(request.mask, img.size, invert=bool(request.inpainting_mask_invert),
                               max_pixels=settings.max_input_pixels)  # fmt: skip
    if not mask.any():
        raise ValidationError("mask", "the mask is empty (nothing is marked to repaint)")
    mask = masking.blur(mask, request.mask_blur_x, request.mask_blur_y)
    if request.inpaint_full_res == InpaintArea.ONLY_MASKED:
        region = masking.crop_region(mask, request.inpaint_full_res_padding)
        x1, y1, x2, y2 = masking.expand_to_aspect(region, w, h, img.width, img.height)
        crop = img.crop((x1, y1, x2, y2)).resize((w, h), images.LANCZOS)
        work_mask = np.asarray(Image.fromarray(mask).crop((x1, y1, x2, y2)).resize((w, h), images.LANCZOS))
        prepared = PreparedImage(crop, crop, np.asarray(img), mask, work_mask, (x1, y1, x2 - x1, y2 - y1))
    else:
        work = images.resize_image(request.resize_mode, img, w, h)
        work_mask = np.asarray(images.resize_image(request.resize_mode, Image.fromarray(mask), w, h))
        overlay = np.clip(work_mask.astype(np.float32) * 2, 0, 255).astype(np.uint8)  # A1111's whole-picture overlay
        prepared = PreparedImage(work, work, np.asarray(work), overlay, work_mask, None, _latent_source(request, img))
    if request.inpainting_fill == MaskedContent.FILL:
        prepared.work = Image.fromarray(masking.fill(np.asarray(prepared.work), work_mask))
    return prepared


def _latent_source(request: GenerationRequest, img: Image.Image) -> Image.Image | None:
    """For latent upscale: the image at its own size rounded to multiples of 8 (encoded, then upscaled).

    Sides under 64 px are stretched to 64: the VAE's normalisation layers need a few latent pixels.
    """
    if request.resize_mode != ResizeMode.LATENT_UPSCALE:
        return None
    w, h = max(64, img.width // 8 * 8), max(64, img.height // 8 * 8)
    return img.resize((w, h), images.LANCZOS) if (w, h) != img.size else img


def _user_depth(request: GenerationRequest, settings: Settings) -> np.ndarray:
    limit = settings.max_input_pixels
    arr = depth.decode_depth_map(request.depth_map, "depth_image", max_pixels=limit)
    if arr.shape[0] * arr.shape[1] > limit:  # formats only OpenCV reads are checked after decoding
        raise ValidationError(
            "depth_image", f"depth map is {arr.shape[1]}x{arr.shape[0]}, above the limit of {limit} pixels"
        )
    return arr


def transform_like(depth_arr: np.ndarray, request: GenerationRequest, prepared: PreparedImage | None) -> np.ndarray:
    """The user's depth map put through the same geometry as its image (resize mode or mask crop)."""
    img = Image.fromarray(depth_arr.astype(np.float32), mode="F")
    if prepared is not None and prepared.paste_to is not None:
        full_h, full_w = prepared.original.shape[:2]
        img = img.resize((full_w, full_h), Image.Resampling.BICUBIC)
        x, y, w, h = prepared.paste_to
        img = img.crop((x, y, x + w, y + h)).resize((request.width, request.height), Image.Resampling.BICUBIC)
    else:
        img = images.resize_image(request.resize_mode, img, request.width, request.height)
    return np.asarray(img, dtype=np.float64)


# --- step 4: depth ----------------------------------------------------------------------------------


def depth_for(ctx: ProcessingContext, loaded: LoadedModel, request: GenerationRequest, prepared: PreparedImage | None,
              user_depth: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(conditioning [1,1,h,w] in [-1,1], display [H,W] in [0,1]) for one image."""
    model = loaded.model
    latent_hw = (request.height // model.vae_scale, request.width // model.vae_scale)
    if user_depth is not None:
        arr = prepared.depth_map if prepared is not None else transform_like(user_depth, request, None)
        raw = depth.depth_map_tensor(arr, invert=request.depth_invert)
        cond = depth.to_latent_conditioning(raw, latent_hw)
        display = torch.from_numpy(depth.depth_for_display(raw, (request.height, request.width)))
        return cond, display
    pixels = images.to_tensor(prepared.for_depth)
    key = (loaded.key, hashlib.sha256(pixels.numpy().tobytes()).hexdigest(), latent_hw)

    def compute():
        raw = model.raw_depth(pixels)
        cond = depth.to_latent_conditioning(raw, latent_hw)
        return cond.cpu(), torch.from_numpy(depth.depth_for_display(raw, (request.height, request.width)))

    return ctx.depth_cache.get_or_compute(key, compute)


# --- step 6: one batch ------------------------------------------------------------------------------


def run_batch(job: Job, idx: list[int], seeds: list[int], subseeds: list[int]):
    """Generate the images at job indices `idx`: (images, depth maps, why it stopped), None when skipped."""
    request, model = job.request, job.model
    preps = [job.prepared[i % len(job.prepared)] for i in idx] if job.prepared else [None] * len(idx)
    noise, gens = _batch_noise(job, seeds, subseeds)
    depth_cond, depth_display = job.timed("depth", _batch_depth, job, preps)
    init = job.timed("encode", _batch_init, job, preps) if request.is_img2img else None
    inpaint = None
    if init is not None and preps[0].work_mask is not None:
        init, inpaint = _latent_inpaint(job, preps, init, noise)
    memory.release_freed_memory()  # each stage's freed blocks are kept for reuse within it, not across
    latents, stopped = job.timed("denoise", _denoise_batch, job, idx, seeds, noise, gens, init, inpaint, depth_cond)
    if stopped == "skip":
        return None
    if not torch.isfinite(latents).all():
        raise UserError(
            "A tensor with all NaNs was produced. This happens with some models in half precision: "
            "turn on Settings -> Optimizations -> Upcast cross attention layer to float32, "
            "or restart with --no-half (or --precision full)."
        )
    memory.release_freed_memory()
    decoded = job.timed("decode", _vae_call, job, model.decode_first_stage, latents)
    return [_finish(img, p) for img, p in zip(images.to_uint8(decoded), preps, strict=True)], depth_display, stopped


def _latent_shape(job: Job) -> tuple[int, int, int]:
    scale = job.model.vae_scale
    return job.model.latent_channels, job.request.height // scale, job.request.width // scale


def _batch_noise(job: Job, seeds: list[int], subseeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Per-image seeded noise (A1111's convention) and the generators that go on drawing step noise."""
    request, scale = job.request, job.model.vae_scale
    resize_from = None
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        resize_from = (request.seed_resize_from_h // scale, request.seed_resize_from_w // scale)
    pairs = [
        pipeline.image_noise(_latent_shape(job), s, ss, request.subseed_strength, resize_from)
        for s, ss in zip(seeds, subseeds, strict=True)
    ]
    return torch.stack([n for n, _ in pairs]).to(job.model.device), [g for _, g in pairs]


def _batch_depth(job: Job, preps: list) -> tuple[torch.Tensor | None, list]:
    """The depth conditioning of the batch and the maps to show (None for models without depth)."""
    if not job.model.is_depth:
        return None, [None] * len(preps)
    pairs = [depth_for(job.ctx, job.loaded, job.request, p, job.user_depth) for p in preps]
    return torch.cat([c for c, _ in pairs]).to(job.model.device), [d.numpy() for _, d in pairs]


def _batch_init(job: Job, preps: list[PreparedImage]) -> torch.Tensor:
    return torch.cat([_cached_init_latent(job, p) for p in preps]).to(job.model.device)


def _cached_init_latent(job: Job, p: PreparedImage) -> torch.Tensor:
    """The init latent is the VAE posterior's mean: exact to reuse for the same image and model, so
    re-runs with a new seed, prompt or strength (and later batches of one job) skip the VAE encoder."""
    source = p.latent_source if p.latent_source is not None else p.work
    pixels = np.ascontiguousarray(np.asarray(source))
    key = ("init-latent", job.loaded.key, tuple(sorted(job.model.optimizations.items())), pixels.shape,
           hashlib.sha256(pixels.tobytes()).hexdigest(), (p.work.height, p.work.width))  # fmt: skip
    return job.ctx.depth_cache.get_or_compute(key, lambda: _encode(job, p).cpu())


def _latent_inpaint(job: Job, preps, init: torch.Tensor, noise: torch.Tensor):
    """The latent mask (1 = regenerate) and the masked-content mode applied to the init latent."""
    lat_mask = torch.cat([masking.latent_mask(p.work_mask, _latent_shape(job)[1:]) for p in preps])
    lat_mask = lat_mask.to(job.model.device)
    if job.request.inpainting_fill == MaskedContent.LATENT_NOISE:
        init = init * (1 - lat_mask) + noise * lat_mask
    elif job.request.inpainting_fill == MaskedContent.LATENT_NOTHING:
        init = init * (1 - lat_mask)
    return init, pipeline.Inpaint(init=init, mask=lat_mask, noise=noise)


def _denoise_batch(job: Job, idx, seeds, noise, gens, init, inpaint, depth_cond):
    """Scheduler and timesteps for the strength, the starting latents, then the sampling loop."""
    request, settings, spec, model = job.request, job.settings, job.spec, job.model
    device = model.device
    scheduler = samplers.build_scheduler(spec, job.schedule, model.betas_f64, model.parameterization, seed=seeds[0])
    total, run = pipeline.denoising_steps(request.steps, request.denoising_strength, img2img=request.is_img2img,
                                          fix_steps=settings.img2img_fix_steps)  # fmt: skip
    if run == 0:
        return init, None
    timesteps = pipeline.prepare_timesteps(scheduler, total, run, device)
    multiplier = request.initial_noise_multiplier
    if multiplier is None:
        multiplier = settings.initial_noise_multiplier
    from_noise = not request.is_img2img or request.denoising_strength >= 1.0
    latents = pipeline.initial_latents(scheduler, noise, init, timesteps, from_noise=from_noise,
                                       noise_multiplier=multiplier)  # fmt: skip
    batch = len(idx)
    guidance = pipeline.Guidance(
        cond=job.cond.expand(batch, -1, -1).to(device),
        uncond=job.uncond.expand(batch, -1, -1).to(device),
        depth=depth_cond,
        cfg_scale=request.cfg_scale,
        s_min_uncond=settings.s_min_uncond,
        autocast=torch.bfloat16 if settings.cpu_bf16_autocast and device.type == "cpu" else None,
    )
    eta = (request.eta if request.eta is not None else settings.eta_ddim) if spec.uses_eta else None
    return pipeline.denoise(model, scheduler, timesteps, latents, guidance, generators=gens, eta=eta,
                            inpaint=inpaint, callback=_step_callback(job, idx, seeds))  # fmt: skip


def _step_callback(job: Job, idx: list[int], seeds: list[int]):
    """Per step: extension hooks, progress, live preview, and the user's interrupt / skip."""
    request, hooks, control = job.request, job.ctx.hooks, job.ctx.control
    live = job.settings.live_previews_enable

    def on_step(i, n, x, denoised, t):
        step = StepInfo(i, n, t, x, denoised, idx[0] // request.batch_size, list(seeds), request.extension_args)
        replaced = hooks.on_step(step)

        def preview() -> np.ndarray:
            return images.to_uint8(pipeline.cheap_preview(denoised if denoised is not None else x)[:1])[0]

        return control.step(i, n, preview if live else None) or replaced

    return on_step


def _vae_call(job: Job, fn, x: torch.Tensor) -> torch.Tensor:
    """`fn(x)` with the VAE; on NaN in half precision the VAE goes to float32 and runs again
    (A1111's "Automatically revert VAE to 32-bit floats", setting auto_vae_precision)."""
    out = fn(x)
    vae = job.model.vae
    if torch.isfinite(out).all() or vae.dtype == torch.float32 or not job.settings.auto_vae_precision:
        return out
    log.warning("The VAE produced NaNs in %s: it runs in float32 from now on", str(vae.dtype).removeprefix("torch."))
    job.model.revert_vae_to_float32()
    return fn(x)


def _encode(job: Job, p: PreparedImage) -> torch.Tensor:
    """Scaled init latent of one image (the posterior mean: deterministic, batch-independent)."""
    model = job.model
    source = p.latent_source if p.latent_source is not None else p.work
    mean = _vae_call(job, lambda x: model.encode_first_stage(x).mean, images.to_tensor(source))
    z = mean.float() * model.scale_factor
    if p.latent_source is not None:
        target = (p.work.height // model.vae_scale, p.work.width // model.vae_scale)
        z = torch.nn.functional.interpolate(z, size=target, mode="bilinear")
    return z


def _finish(img: np.ndarray, p: PreparedImage | None) -> np.ndarray:
    """Paste an "only masked" crop back and keep the original pixels outside the mask."""
    if p is None or p.overlay_mask is None:
        return img
    if p.paste_to is not None:
        x, y, w, h = p.paste_to
        full = p.original.copy()
        full[y : y + h, x : x + w] = np.asarray(Image.fromarray(img).resize((w, h), images.LANCZOS))
        img = full
    return masking.composite(img, p.original, p.overlay_mask)


# --- step 7: saving ---------------------------------------------------------------------------------


def _outdirs(request: GenerationRequest, settings: Settings, data_dir: Path) -> tuple[Path, Path]:
    if request.is_img2img:
        return data_dir / settings.outdir_img2img_samples, data_dir / settings.outdir_img2img_grids
    return data_dir / settings.outdir_txt2img_samples, data_dir / settings.outdir_txt2img_grids


def _save(result, request, settings, data_dir, img, dmap, seed, text) -> None:
    if not (request.save_images and settings.samples_save):
        return
    folder, _ = _outdirs(request, settings, data_dir)
    subdir = settings.directories_filename_pattern if settings.save_to_dirs else None
    try:
        path = images.save_image(img, folder, seed=seed, prompt=request.prompt, infotext=text,
                                 fmt=settings.samples_format, pattern=settings.samples_filename_pattern,
                                 subdir_pattern=subdir)  # fmt: skip
        result.saved_paths.append(str(path))
        if dmap is not None and settings.save_depth_maps:
            depth_path = path.with_name(path.stem + "-depth.png")
            atomic_write_bytes(depth_path, depth.depth_png16(dmap))
            result.saved_paths.append(str(depth_path))
    except OSError as e:
        msg = f"could not save the image to {folder}: {e.strerror or e}"
        log.error(msg)
        if msg not in result.warnings:
            result.warnings.append(msg)


def _save_grid(result, request, settings, data_dir) -> None:
    if len(result.images) < 2 or not (request.save_grid and settings.grid_save):
        return
    if len({im.shape for im in result.images}) != 1:
        return
    result.grid = images.image_grid(result.images)
    path = _write_grid(result.grid, request, settings, data_dir, seed=result.seeds[0], text=result.infotexts[0],
                       warnings=result.warnings)  # fmt: skip
    if path:
        result.saved_paths.append(path)


def _write_grid(grid, request, settings, data_dir, *, seed: int, text: str, warnings: list[str]) -> str | None:
    """Save a grid image into the grids folder (when saving is on); returns its path."""
    if not (request.save_images and settings.samples_save and settings.grid_save):
        return None
    _, folder = _outdirs(request, settings, data_dir)
    subdir = settings.directories_filename_pattern if settings.save_to_dirs else None
    try:
        path = images.save_image(grid, folder, seed=seed, prompt=request.prompt, infotext=text,
                                 fmt=settings.samples_format, subdir_pattern=subdir, suffix="-grid")  # fmt: skip
        return str(path)
    except OSError as e:
        warnings.append(f"could not save the grid to {folder}: {e.strerror or e}")
        return None
