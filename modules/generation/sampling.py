"""Step 6 of a request, sampling: noise -> (img2img) noised init latent -> CFG steps with depth -> latents.

Small pure functions; ``denoise`` runs the loop and reports each step through a callback that can
stop it (``Stop.INTERRUPT`` / ``Stop.SKIP``) or hand the latents to extension hooks;
``denoise_batch`` sets one batch of a ``Job`` up for it (scheduler, timesteps, guidance, callback).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch

from modules.core.progress import Stop
from modules.core.request import StepInfo
from modules.core.samplers import SIGMA_OPTIONS, SamplerSpec
from modules.generation import pixels
from modules.generation.job import Job
from modules.models.sd_model import StableDiffusionModel

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor | None, float], "torch.Tensor | Stop | None"]


def build_scheduler(spec: SamplerSpec, schedule: str, betas: np.ndarray, parameterization: str, *, seed: int = 0):
    """A fresh diffusers scheduler for one job, on the model's own float64 schedule."""
    cls = getattr(diffusers, spec.scheduler)
    options: dict[str, Any] = {
        "num_train_timesteps": len(betas),
        "trained_betas": betas.tolist(),
        "prediction_type": "v_prediction" if parameterization == "v" else "epsilon",
        **spec.options,
    }
    if schedule in SIGMA_OPTIONS:
        options[SIGMA_OPTIONS[schedule]] = True
    if spec.scheduler == "DPMSolverSDEScheduler":
        options["noise_sampler_seed"] = seed
    return cls(**options)


# --- noise ----------------------------------------------------------------------------------------


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (A1111's variation seeds)."""
    low_n = low / low.norm()
    high_n = high / high.norm()
    dot = (low_n * high_n).sum().clamp(-1.0, 1.0)
    if dot.abs() > 0.9995:
        return low * (1.0 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return torch.sin((1.0 - t) * omega) / so * low + torch.sin(t * omega) / so * high


def image_noise(
    shape: tuple[int, int, int],
    seed: int,
    subseed: int = -1,
    subseed_strength: float = 0.0,
    resize_from: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Generator]:
    """[C,h,w] noise from a CPU generator seeded with `seed` (A1111's convention), and that generator.

    Variation seeds slerp towards `subseed`'s noise; `resize_from` (latent h, w) draws the noise at
    another size and centres it, so a seed keeps its look when the size changes.
    """
    c, h, w = shape
    draw_shape = (c, *resize_from) if resize_from else shape
    sub = None
    if subseed_strength > 0:
        sub = torch.randn(draw_shape, generator=torch.Generator("cpu").manual_seed(subseed))
    gen = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(draw_shape, generator=gen)
    if sub is not None:
        noise = slerp(subseed_strength, noise, sub)
    if resize_from and draw_shape != shape:
        full = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
        dh, dw = (h - draw_shape[1]) // 2, (w - draw_shape[2]) // 2
        th, tw = min(h, draw_shape[1]), min(w, draw_shape[2])
        ty, tx, sy, sx = max(dh, 0), max(dw, 0), max(-dh, 0), max(-dw, 0)
        full[:, ty : ty + th, tx : tx + tw] = noise[:, sy : sy + th, sx : sx + tw]
        noise = full
    return noise, gen


# --- schedule -------------------------------------------------------------------------------------


def denoising_steps(steps: int, strength: float, *, img2img: bool, fix_steps: bool = False) -> tuple[int, int]:
    """(scheduler steps, steps actually run). img2img runs int(min(strength, 0.999) * steps), as A1111.

    Strength 1 runs every step from pure noise; with `fix_steps` the schedule is stretched to
    steps / strength so that exactly `steps` are run.
    """
    if not img2img or strength >= 1.0:
        return steps, steps
    if strength <= 0.0:
        return steps, 0
    if fix_steps:
        total = int(steps / min(strength, 0.999))
        return total, steps
    return steps, max(1, int(min(strength, 0.999) * steps))


def prepare_timesteps(scheduler, total: int, run: int, device: torch.device) -> torch.Tensor:
    """Set the scheduler to `total` steps and keep the last `run` of them (begin index set for k-schedulers)."""
    scheduler.set_timesteps(total, device=device)
    start = (total - run) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps


# --- the denoiser ---------------------------------------------------------------------------------


@dataclass
class Guidance:
    """Everything the UNet sees besides the noisy latent: contexts, depth, CFG scale, per-job speed options."""

    cond: torch.Tensor  # [B, T, C]
    uncond: torch.Tensor  # [B, T, C]
    depth: torch.Tensor | None  # [B, 1, h, w] in [-1, 1] for the depth model
    cfg_scale: float
    s_min_uncond: float = 0.0  # skip the negative prompt on odd steps below this sigma (A1111's NGMS)
    autocast: torch.dtype | None = None  # e.g. torch.bfloat16 on CPU


def predict_noise(
    model: StableDiffusionModel, x: torch.Tensor, t: torch.Tensor, g: Guidance, *, skip_uncond: bool = False
) -> torch.Tensor:
    """Classifier-free guidance with the depth map concatenated as the fifth channel."""
    with torch.autocast(x.device.type, dtype=g.autocast) if g.autocast is not None else nullcontext():
        return _guided(model, x, t, g, skip_uncond).float()


def _guided(model: StableDiffusionModel, x: torch.Tensor, t: torch.Tensor, g: Guidance, skip_uncond: bool):
    concat = [g.depth] if g.depth is not None else []
    if g.cfg_scale == 1.0 or skip_uncond:
        return model.apply_model(x, t, {"c_concat": concat, "c_crossattn": [g.cond]})
    both = {
        "c_concat": [torch.cat([g.depth, g.depth])] if concat else [],
        "c_crossattn": [torch.cat([g.uncond, g.cond])],
    }
    out = model.apply_model(torch.cat([x, x]), t, both)
    uncond, cond = out.chunk(2)
    return uncond + g.cfg_scale * (cond - uncond)


def sigma_at(model: StableDiffusionModel, t: torch.Tensor) -> float:
    """The noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) of a (possibly fractional) timestep."""
    ac = model.alphas_cumprod_f64[int(round(float(t)))]
    return float(((1 - ac) / ac) ** 0.5)


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class Inpaint:
    """Latent-space inpainting: `mask` 1 = regenerate; the rest follows the re-noised `init`."""

    init: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor


def denoise(
    model: StableDiffusionModel,
    scheduler,
    timesteps: torch.Tensor,
    latents: torch.Tensor,
    guidance: Guidance,
    *,
    generators: list[torch.Generator] | None = None,
    eta: float | None = None,
    inpaint: Inpaint | None = None,
    callback: StepCallback | None = None,
) -> tuple[torch.Tensor, Stop | None]:
    """Run the sampler over `timesteps`; returns the latents and why it stopped early (a ``Stop``)."""
    accepts = inspect.signature(scheduler.step).parameters
    step_kwargs = {"eta": eta} if eta is not None and "eta" in accepts else {}
    if "generator" in accepts:
        step_kwargs["generator"] = generators
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(latents, t)
        skip = guidance.s_min_uncond > 0 and i % 2 == 1 and sigma_at(model, t) < guidance.s_min_uncond
        noise_pred = predict_noise(model, x_in, t, guidance, skip_uncond=skip)
        out = scheduler.step(noise_pred, t, latents, return_dict=True, **step_kwargs)
        latents = out.prev_sample
        if inpaint is not None:
            latents = blend_inpaint(scheduler, inpaint, latents, timesteps[i + 1] if i + 1 < total else None)
        if callback is not None:
            answer = callback(i, total, latents, getattr(out, "pred_original_sample", None), float(t))
            if isinstance(answer, torch.Tensor):
                latents = answer
            elif isinstance(answer, Stop):
                return latents, answer
    return latents, None


def blend_inpaint(scheduler, inpaint: Inpaint, latents: torch.Tensor, next_t: torch.Tensor | None) -> torch.Tensor:
    """Keep the unmasked area on the original: the init latent noised to the next timestep (clean at the end)."""
    if next_t is None:
        known = inpaint.init
    else:
        known = scheduler.add_noise(inpaint.init, inpaint.noise, next_t.reshape(1).repeat(latents.shape[0]))
    return known * (1.0 - inpaint.mask) + latents * inpaint.mask


def initial_latents(
    scheduler,
    noise: torch.Tensor,
    init: torch.Tensor | None,
    timesteps: torch.Tensor,
    *,
    from_noise: bool,
    noise_multiplier: float = 1.0,
) -> torch.Tensor:
    """Pure noise (txt2img, strength 1) or the init latent noised to the first timestep (img2img)."""
    if from_noise or init is None:
        return noise * scheduler.init_noise_sigma
    first = timesteps[:1].repeat(init.shape[0])
    return scheduler.add_noise(init, noise * noise_multiplier, first)


# --- latent preview -------------------------------------------------------------------------------

# Linear latent -> RGB factors for the SD1/SD2 VAE (the well-known approximation used for live previews).
_LATENT_RGB = torch.tensor(
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
)


def cheap_preview(latents: torch.Tensor) -> torch.Tensor:
    """[B,4,h,w] latents -> [B,3,h,w] in [-1,1]: a quick look without the VAE."""
    rgb = torch.einsum("bchw,cr->brhw", latents.float().cpu(), _LATENT_RGB)
    return rgb.clamp(-1, 1)


# --- one batch of a job ---------------------------------------------------------------------------


def denoise_batch(job: Job, idx: list[int], seeds: list[int], noise: torch.Tensor, gens: list[torch.Generator],
                  init: torch.Tensor | None, inpaint: Inpaint | None,
                  depth_cond: torch.Tensor | None) -> tuple[torch.Tensor, Stop | None]:  # fmt: skip
    """Scheduler and timesteps for the strength, the starting latents, then the sampling loop."""
    request, settings, spec, model = job.request, job.settings, job.sampler, job.model
    device = model.device
    scheduler = build_scheduler(spec, job.schedule, model.betas_f64, model.parameterization, seed=seeds[0])
    total, run = denoising_steps(request.steps, request.denoising_strength, img2img=request.is_img2img,
                                 fix_steps=settings.img2img_fix_steps)  # fmt: skip
    if run == 0:
        return init, None
    timesteps = prepare_timesteps(scheduler, total, run, device)
    multiplier = request.initial_noise_multiplier
    if multiplier is None:
        multiplier = settings.initial_noise_multiplier
    from_noise = not request.is_img2img or request.denoising_strength >= 1.0
    latents = initial_latents(scheduler, noise, init, timesteps, from_noise=from_noise, noise_multiplier=multiplier)
    batch = len(idx)
    guidance = Guidance(
        cond=job.text.cond.expand(batch, -1, -1).to(device),
        uncond=job.text.uncond.expand(batch, -1, -1).to(device),
        depth=depth_cond,
        cfg_scale=request.cfg_scale,
        s_min_uncond=settings.s_min_uncond,
        autocast=torch.bfloat16 if settings.cpu_bf16_autocast and device.type == "cpu" else None,
    )
    eta = (request.eta if request.eta is not None else settings.eta_ddim) if spec.uses_eta else None
    return denoise(model, scheduler, timesteps, latents, guidance, generators=gens, eta=eta,
                   inpaint=inpaint, callback=step_callback(job, idx, seeds))  # fmt: skip


def step_callback(job: Job, idx: list[int], seeds: list[int]) -> StepCallback:
    """Per step: extension hooks, progress, live preview, and the user's interrupt / skip."""
    request, hooks, control = job.request, job.ctx.hooks, job.ctx.control
    live = job.settings.live_previews_enable

    def on_step(i, n, x, denoised, t):
        step = StepInfo(i, n, t, x, denoised, idx[0] // request.batch_size, list(seeds), request.extension_args)
        replaced = hooks.on_step(step)

        def preview() -> np.ndarray:
            return pixels.to_uint8(cheap_preview(denoised if denoised is not None else x)[:1])[0]

        return control.step(i, n, preview if live else None) or replaced

    return on_step
