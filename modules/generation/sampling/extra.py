"""A1111's own samplers beyond k-diffusion: Restart (``sd_samplers_extra``) and DDIM CFG++ (timesteps).

``restart_sampler`` has the k-diffusion signature; ``ddim_cfgpp`` runs over DDIM timesteps with a
noise predictor that also returns the unconditional prediction (CFG++ steps along it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from modules.generation.sampling.k_samplers import report, to_d
from modules.generation.sampling.noise import NoiseSampler
from modules.generation.sampling.schedules import karras


def restart_plan(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (sigma, next sigma) pairs Restart walks: Karras steps plus, from 20 steps on, restarts
    from sigma 0.1 back up to 2 (Xu et al. 2023, A1111's automatic restart list)."""
    steps = sigmas.shape[0] - 1
    restart = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart = {0.1: [restart_steps + 1, restart_times, 2]}
    restart = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart.items()}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart:
            n, times, restart_max = restart[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                up = karras(n, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                plan.extend(list(zip(up[:-1], up[1:], strict=True)) * times)
    return plan


@torch.no_grad()
def restart_sampler(model, x, sigmas, extra_args=None, callback=None, s_noise=1.0,
                    noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """Restart sampling: Heun steps, re-noising back up wherever the plan climbs."""
    s_in, extra = x.new_ones([x.shape[0]]), extra_args or {}
    last = None
    for step_id, (old, new) in enumerate(restart_plan(sigmas)):
        if last is not None and last < old:
            x = x + noise_sampler(last, old) * s_noise * (old**2 - last**2) ** 0.5
        denoised = model(x, old * s_in, **extra)
        d = to_d(x, old, denoised)
        x = report(callback, x, step_id, new, old, denoised)
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            d_2 = to_d(x_2, new, model(x_2, new * s_in, **extra))
            x = x + (d + d_2) / 2 * (new - old)
        last = new
    return x


EpsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def ddim_cfgpp(eps_fn: EpsFn, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
               final_alpha: float, callback=None, eta: float = 0.0,
               noise_sampler: NoiseSampler | None = None) -> torch.Tensor:  # fmt: skip
    """DDIM with CFG++ (Chung et al. 2024): x0 from the guided noise (scale / 12.5), the direction to
    x_t from the unconditional one.  `timesteps` descending; the last step goes to `final_alpha`."""
    for i, t in enumerate(timesteps):
        a_t = alphas_cumprod[int(t)].item()
        a_prev = alphas_cumprod[int(timesteps[i + 1])].item() if i + 1 < len(timesteps) else final_alpha
        sigma_t = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        e_t, e_uncond = eps_fn(x, t)
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
        x = a_prev**0.5 * pred_x0 + (1.0 - a_prev - sigma_t**2) ** 0.5 * e_uncond
        if sigma_t > 0:
            x = x + sigma_t * noise_sampler(None, None)
        x = report(callback, x, i, 0, 0, pred_x0)
    return x
