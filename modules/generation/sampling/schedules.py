"""Sigma schedules as small pure functions (A1111 1.10's ``sd_schedulers``, k-diffusion's ``get_sigmas_*``).

Each returns a descending float32 tensor of noise levels ending in 0 (KL Optimal ends in sigma_min,
as A1111's).  ``ModelSigmas`` is k-diffusion's ``DiscreteSchedule`` for a model's alphas_cumprod:
its sigmas and the sigma <-> fractional timestep maps the "inner model" schedules use.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from modules.core.samplers import SamplerSpec

BETA_ALPHA = BETA_BETA = 0.6  # A1111's beta_dist_alpha / beta_dist_beta defaults
# Align Your Steps, SD1.x/SD2.x (A1111 uses these for every non-SDXL model)
AYS_SD = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


class ModelSigmas:
    """The model's 1000 discrete sigmas sqrt((1 - a) / a) (float32, as LDM's buffers) and t <-> sigma."""

    def __init__(self, alphas_cumprod: torch.Tensor, quantize: bool = False):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of `sigma`, interpolated in log sigma (k-diffusion's)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas.to(sigma.device)[:, None]
        if self.quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        low, high = self.log_sigmas[low_idx], self.log_sigmas[low_idx + 1]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * (low_idx + 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def get_sigmas(self, n: int) -> torch.Tensor:
        """n sigmas evenly spaced in t from the top, then 0 (k-diffusion's default, A1111's Uniform)."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return append_zero(self.t_to_sigma(t))


# --- the schedules: (n, sigma_min, sigma_max[, rho | model]) -> sigmas ------------------------------


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Log sigma along a polynomial ramp of degree rho."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def uniform(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas) -> torch.Tensor:
    return model.get_sigmas(n)


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas) -> torch.Tensor:
    """n timesteps evenly spaced from sigma_max's, the last (sigma_min's) left out, then 0."""
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    return torch.FloatTensor([*(float(model.t_to_sigma(t)) for t in torch.linspace(start, end, n + 1)[:-1]), 0.0])


def normal(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas) -> torch.Tensor:
    """n timesteps evenly spaced from sigma_max's to sigma_min's, then 0."""
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    return torch.FloatTensor([*(float(model.t_to_sigma(t)) for t in torch.linspace(start, end, n)), 0.0])


def simple(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas) -> torch.Tensor:
    """Every len/n-th of the model's sigmas from the top (ComfyUI's "simple")."""
    ss = len(model.sigmas) / n
    return torch.FloatTensor([*(float(model.sigmas[-(1 + int(x * ss))]) for x in range(n)), 0.0])


def ddim(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas) -> torch.Tensor:
    """The model's sigmas at timesteps 1, 1 + len//n, ... (DDIM's uniform timesteps; may give n + 1 steps)."""
    ss = max(len(model.sigmas) // n, 1)
    picked = [float(model.sigmas[x]) for x in range(1, len(model.sigmas), ss)]
    return torch.FloatTensor([*picked[::-1], 0.0])


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (Sabour et al. 2024); ends at sigma_min, as A1111's."""
    a_min, a_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    i = torch.arange(n + 1)
    return torch.tan(i / n * a_min + (1.0 - i / n) * a_max)


def align_your_steps(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """NVIDIA's Align Your Steps sigmas for SD1/SD2, log-linearly interpolated to n steps."""
    if n == len(AYS_SD):
        return torch.FloatTensor([*AYS_SD, 0.0])
    xs, ys = np.linspace(0, 1, len(AYS_SD)), np.log(AYS_SD[::-1])
    interped = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.FloatTensor(np.append(interped, [0.0]))


def beta(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas | None = None,
         alpha: float = BETA_ALPHA, b: float = BETA_BETA) -> torch.Tensor:  # fmt: skip
    """Lee et al. 2024, "Beta Sampling is All You Need": sigma_min + ppf(1 - i/(n-1)) * (sigma_max - sigma_min)."""
    ts = [beta_ppf(float(q), alpha, b) for q in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([*(sigma_min + x * (sigma_max - sigma_min) for x in ts), 0.0])


def beta_ppf(q: float, a: float, b: float) -> float:
    """The Beta(a, b) quantile: scipy's when installed, else bisection on the regularised incomplete beta."""
    try:
        from scipy import stats
    except ImportError:
        return _beta_ppf_bisect(q, a, b)
    return float(stats.beta.ppf(q, a, b))


def _beta_ppf_bisect(q: float, a: float, b: float) -> float:
    if q <= 0.0 or q >= 1.0:
        return float(q > 0.0)
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if beta_cdf(mid, a, b) < q else (lo, mid)
    return (lo + hi) / 2


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes' betai)."""
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(x, a, b) / a
    return 1.0 - front * _betacf(1 - x, b, a) / b


def _betacf(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


SCHEDULE_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "Uniform": uniform, "Karras": karras, "Exponential": exponential, "Polyexponential": polyexponential,
    "SGM Uniform": sgm_uniform, "KL Optimal": kl_optimal, "Align Your Steps": align_your_steps, "Simple": simple,
    "Normal": normal, "DDIM": ddim, "Beta": beta,
}  # fmt: skip
_NEEDS_MODEL = {"Uniform", "SGM Uniform", "Simple", "Normal", "DDIM", "Beta"}


def sigmas_for(spec: SamplerSpec, schedule: str, steps: int, model: ModelSigmas) -> torch.Tensor:
    """A1111's ``KDiffusionSampler.get_sigmas``: the schedule over the model's sigma range, penultimate
    sigma dropped for the samplers that ask (DPM2, DPM2 a, DPM++ 3M SDE)."""
    discard = bool(spec.options.get("discard_next_to_last_sigma"))
    n = steps + 1 if discard else steps
    fn = SCHEDULE_FUNCTIONS.get(schedule)
    if fn is None:  # Automatic without a sampler default: the model's own sigmas
        sigmas = model.get_sigmas(n)
    elif schedule in _NEEDS_MODEL:
        sigmas = fn(n, model.sigma_min, model.sigma_max, model)
    else:
        sigmas = fn(n, model.sigma_min, model.sigma_max)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
