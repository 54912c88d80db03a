"""One batch of a ``Job``: the strength's steps, the starting latents, the sampler run, the step callback.

k samplers follow A1111's ``KDiffusionSampler``: sigmas from the schedule type, img2img starts at
``sigmas[steps - t_enc - 1]`` with ``init + noise * sigma`` and runs t_enc + 1 steps; the timestep
samplers run the diffusers loop (``loop``) or DDIM CFG++ over DDIM's timesteps.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from modules.core.progress import Stop
from modules.core.request import StepInfo
from modules.generation import pixels
from modules.generation.job import Job
from modules.generation.sampling import Guidance, Inpaint, dpm_solver, extra, k_samplers, loop, noise
from modules.generation.sampling.denoiser import KDenoiser, cfgpp_eps
from modules.generation.sampling.schedules import ModelSigmas, sigmas_for

K_FUNCTIONS = {
    **{n: getattr(k_samplers, n) for n in dir(k_samplers) if n.startswith("sample_")},
    "sample_dpm_fast": dpm_solver.sample_dpm_fast,
    "sample_dpm_adaptive": dpm_solver.sample_dpm_adaptive,
    "restart_sampler": extra.restart_sampler,
}


class _Stopped(Exception):
    def __init__(self, stop: Stop, latents: torch.Tensor):
        super().__init__(stop.name)
        self.stop, self.latents = stop, latents


def denoising_steps(steps: int, strength: float, *, img2img: bool, fix_steps: bool = False) -> tuple[int, int]:
    """(schedule steps, steps run) for the timestep samplers: int(min(strength, 0.999) * steps) in img2img.

    Strength 1 runs every step from pure noise; with `fix_steps` the schedule is stretched to
    steps / strength so that exactly `steps` are run.
    """
    if not img2img or strength >= 1.0:
        return steps, steps
    if strength <= 0.0:
        return steps, 0
    if fix_steps:
        return int(steps / min(strength, 0.999)), steps
    return steps, max(1, int(min(strength, 0.999) * steps))


def k_steps(steps: int, strength: float, *, img2img: bool, fix_steps: bool = False) -> tuple[int, int]:
    """(schedule steps, t_enc) for k samplers, A1111's ``setup_img2img_steps``: t_enc + 1 steps are run."""
    if not img2img or strength >= 1.0:
        return steps, steps - 1
    if fix_steps:
        return int(steps / min(strength, 0.999)), steps - 1
    return steps, int(min(strength, 0.999) * steps)


def denoise_batch(job: Job, idx: list[int], seeds: list[int], noise_: torch.Tensor, gens: list[torch.Generator],
                  init: torch.Tensor | None, inpaint: Inpaint | None,
                  depth_cond: torch.Tensor | None, *, img2img: bool | None = None,
                  fix_steps: bool | None = None) -> tuple[torch.Tensor, Stop | None]:  # fmt: skip
    """The sampler the job names over this batch: starting latents, the run, the step callback.

    `img2img` / `fix_steps` default to the request's and the settings' (hires. fix's second pass: both True).
    """
    request, settings = job.request, job.settings
    img2img = request.is_img2img if img2img is None else img2img
    fix_steps = settings.img2img_fix_steps if fix_steps is None else fix_steps
    if img2img and request.denoising_strength <= 0.0:
        return init, None
    guidance = _guidance(job, len(idx), depth_cond)
    callback = step_callback(job, idx, seeds)
    multiplier = request.initial_noise_multiplier
    multiplier = settings.initial_noise_multiplier if multiplier is None else multiplier
    from_noise = not img2img or request.denoising_strength >= 1.0 or init is None
    steps = (img2img, fix_steps)
    if job.sampler.kind == "k":
        return run_k(job, seeds, noise_ * (1.0 if from_noise else multiplier), gens, init, inpaint, guidance,
                     callback, from_noise=from_noise, steps=steps)  # fmt: skip
    return run_timesteps(job, noise_, gens, init, inpaint, guidance, callback, from_noise, multiplier, steps)


def _guidance(job: Job, batch: int, depth_cond: torch.Tensor | None) -> Guidance:
    device, settings = job.model.device, job.settings
    return Guidance(
        cond=job.text.cond.expand(batch, -1, -1).to(device),
        uncond=job.text.uncond.expand(batch, -1, -1).to(device),
        depth=depth_cond,
        cfg_scale=job.request.cfg_scale,
        s_min_uncond=settings.s_min_uncond,
    )


def run_timesteps(job: Job, noise_, gens, init, inpaint, guidance, callback, from_noise: bool, multiplier: float,
                  steps: tuple[bool, bool]):  # fmt: skip
    """DDIM / PLMS / UniPC through diffusers, DDIM CFG++ over the same DDIM timesteps."""
    request, settings, spec, model = job.request, job.settings, job.sampler, job.model
    scheduler = loop.build_scheduler(spec, job.schedule, model.betas_f64, model.parameterization)
    total, run = denoising_steps(request.steps, request.denoising_strength, img2img=steps[0], fix_steps=steps[1])
    timesteps = loop.prepare_timesteps(scheduler, total, run, model.device)
    latents = loop.initial_latents(scheduler, noise_, init, timesteps, from_noise=from_noise,
                                   noise_multiplier=multiplier)  # fmt: skip
    eta = (request.eta if request.eta is not None else settings.eta_ddim) if spec.uses_eta else None
    if spec.function != "ddim_cfgpp":
        return loop.denoise(model, scheduler, timesteps, latents, guidance, generators=gens, eta=eta,
                            inpaint=inpaint, callback=callback)  # fmt: skip

    def on_step(d):
        i = d["i"]
        x = d["x"]
        if inpaint is not None:
            x = loop.blend_inpaint(scheduler, inpaint, x, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        return _answer(callback(i, len(timesteps), x, d["denoised"], float(timesteps[i])), x)

    try:
        out = extra.ddim_cfgpp(cfgpp_eps(model, guidance), latents, timesteps, model.alphas_cumprod,
                               float(model.alphas_cumprod[0]), on_step, eta or 0.0,
                               noise.generator_noise(latents, gens))  # fmt: skip
    except _Stopped as stopped:
        return stopped.latents, stopped.stop
    return out, None


def _answer(answer, x: torch.Tensor) -> torch.Tensor:
    """A step callback's answer inside a sampler: a Stop ends the run, a tensor replaces x."""
    if isinstance(answer, Stop):
        raise _Stopped(answer, x)
    return answer if isinstance(answer, torch.Tensor) else x


def run_k(job: Job, seeds: list[int], noise_: torch.Tensor, gens, init, inpaint: Inpaint | None,
          guidance: Guidance, callback, *, from_noise: bool,
          steps: tuple[bool, bool]) -> tuple[torch.Tensor, Stop | None]:  # fmt: skip
    """A k sampler over the schedule's sigmas (the img2img tail of them), the denoiser wrapping the model."""
    request, spec, model = job.request, job.sampler, job.model
    ms = ModelSigmas(model.alphas_cumprod)
    total_steps, t_enc = k_steps(request.steps, request.denoising_strength, img2img=steps[0], fix_steps=steps[1])
    sigmas = sigmas_for(spec, job.schedule, total_steps, ms)
    if not from_noise:
        sigmas = sigmas[max(total_steps - t_enc - 1, 0) :]
    sigmas = sigmas.to(model.device)
    noise_ = noise_.to(model.device)
    x = noise_ * sigmas[0] if from_noise else init + noise_ * sigmas[0]
    fn = K_FUNCTIONS[spec.function]
    kwargs = _k_kwargs(job, fn, x, sigmas, seeds, gens, from_noise, ms)
    total = len(extra.restart_plan(sigmas)) if spec.function == "restart_sampler" else kwargs.get("n", len(sigmas) - 1)
    denoiser = KDenoiser(model, guidance, ms, inpaint)

    def on_step(d):
        i = min(int(d["i"]), total - 1)
        sigma = float(d["sigma"])
        t = float(ms.sigma_to_t(torch.tensor(sigma))) if sigma > 0 else 0.0
        out = callback(i, total, d["x"], d["denoised"], t)
        return _answer(out, d["denoised"]) if isinstance(out, Stop) else _answer(out, d["x"])

    try:
        x = fn(denoiser, x, extra_args={}, callback=on_step, **kwargs)
    except _Stopped as stopped:
        return stopped.latents, stopped.stop
    if inpaint is not None:
        x = inpaint.init * (1.0 - inpaint.mask) + x * inpaint.mask
    return x, None


def _k_kwargs(job: Job, fn, x, sigmas, seeds, gens, from_noise: bool, ms: ModelSigmas) -> dict:
    """The keyword arguments A1111 passes a k function: sigmas (or DPM's range), eta, noise, solver type."""
    params, spec, request = inspect.signature(fn).parameters, job.sampler, job.request
    kwargs: dict = {}
    if "sigmas" in params:
        kwargs["sigmas"] = sigmas
    if "sigma_min" in params:  # DPM fast / adaptive: the range, the last sigma being 0
        low, high = (ms.sigma_min, ms.sigma_max) if from_noise else (float(sigmas[-2]), float(sigmas[0]))
        kwargs.update(sigma_min=low, sigma_max=high)
    if "n" in params:
        kwargs["n"] = request.steps if from_noise else len(sigmas) - 1
    if "eta" in params:
        kwargs["eta"] = request.eta if request.eta is not None else job.settings.eta_ancestral
    if "noise_sampler" in params:
        brownian = spec.options.get("brownian_noise")
        kwargs["noise_sampler"] = noise.brownian_noise(x, sigmas, seeds) if brownian else noise.generator_noise(x, gens)
    if "solver_type" in params and spec.options.get("solver_type"):
        kwargs["solver_type"] = spec.options["solver_type"]
    return kwargs


# --- latent preview and the step callback ------------------------------------------------------------

# Linear latent -> RGB factors for the SD1/SD2 VAE (the well-known approximation used for live previews).
_LATENT_RGB = torch.tensor(
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
)


def cheap_preview(latents: torch.Tensor) -> torch.Tensor:
    """[B,4,h,w] latents -> [B,3,h,w] in [-1,1]: a quick look without the VAE."""
    rgb = torch.einsum("bchw,cr->brhw", latents.float().cpu(), _LATENT_RGB)
    return rgb.clamp(-1, 1)


def step_callback(job: Job, idx: list[int], seeds: list[int]) -> loop.StepCallback:
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
