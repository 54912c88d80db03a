"""The diffusers-scheduler loop the timestep samplers run (DDIM, PLMS, UniPC), as before the k samplers.

DDIM here is bit-compatible with the original LDM's DDIM (leading timesteps + 1, alpha_prev of
timestep 0 at the end).  ``denoise`` reports each step through a callback that can stop it
(``Stop.INTERRUPT`` / ``Stop.SKIP``) or replace the latents (extension hooks).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import diffusers
import numpy as np
import torch

from modules.core.progress import Stop
from modules.core.samplers import SamplerSpec
from modules.models.sd_model import StableDiffusionModel

if TYPE_CHECKING:
    from modules.generation.sampling import Guidance, Inpaint

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor | None, float], "torch.Tensor | Stop | None"]


def build_scheduler(spec: SamplerSpec, schedule: str, betas: np.ndarray, parameterization: str, *, seed: int = 0):
    """A fresh diffusers scheduler for one job, on the model's own float64 schedule (timestep samplers
    ignore the schedule type, as A1111's)."""
    cls = getattr(diffusers, spec.scheduler or "DDIMScheduler")
    options: dict[str, Any] = {
        "num_train_timesteps": len(betas),
        "trained_betas": betas.tolist(),
        "prediction_type": "v_prediction" if parameterization == "v" else "epsilon",
        **(spec.scheduler_options if spec.scheduler else _DDIM),
    }
    return cls(**options)


_DDIM = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}


def prepare_timesteps(scheduler, total: int, run: int, device: torch.device) -> torch.Tensor:
    """Set the scheduler to `total` steps and keep the last `run` of them (begin index set for k-schedulers)."""
    scheduler.set_timesteps(total, device=device)
    start = (total - run) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps


def sigma_at(model: StableDiffusionModel, t: torch.Tensor) -> float:
    """The noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) of a (possibly fractional) timestep."""
    ac = model.alphas_cumprod_f64[int(round(float(t)))]
    return float(((1 - ac) / ac) ** 0.5)


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
    """Run the scheduler over `timesteps`; returns the latents and why it stopped early (a ``Stop``)."""
    from modules.generation import sampling  # predict_noise (the guidance) lives in the package

    accepts = inspect.signature(scheduler.step).parameters
    step_kwargs = {"eta": eta} if eta is not None and "eta" in accepts else {}
    if "generator" in accepts:
        step_kwargs["generator"] = generators
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(latents, t)
        skip = guidance.s_min_uncond > 0 and i % 2 == 1 and sigma_at(model, t) < guidance.s_min_uncond
        noise_pred = sampling.predict_noise(model, x_in, t, guidance, skip_uncond=skip)
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
