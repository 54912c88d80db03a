"""DPM-Solver (Lu et al. 2022) fast and adaptive, as k-diffusion's ``sample_dpm_fast`` / ``sample_dpm_adaptive``.

Pure functions over the same denoiser; time is t = -log(sigma).  The step callback gets k-diffusion's
dict; a tensor it returns replaces x.
"""

from __future__ import annotations

import math

import torch

from modules.generation.sampling.k_samplers import get_ancestral_step, report
from modules.generation.sampling.noise import NoiseSampler


def _sigma(t):
    return t.neg().exp()


def _eps(model, extra, cache: dict, key: str, x, t):
    """The noise prediction at (x, t), computed once per key within a step."""
    if key not in cache:
        cache[key] = (x - model(x, _sigma(t) * x.new_ones([x.shape[0]]), **extra)) / _sigma(t)
    return cache[key]


def step_1(model, extra, x, t, t_next, cache):
    return x - _sigma(t_next) * (t_next - t).expm1() * _eps(model, extra, cache, "eps", x, t)


def step_2(model, extra, x, t, t_next, cache, r1=1 / 2):
    h = t_next - t
    eps = _eps(model, extra, cache, "eps", x, t)
    s1 = t + r1 * h
    eps_r1 = _eps(model, extra, cache, "eps_r1", x - _sigma(s1) * (r1 * h).expm1() * eps, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def step_3(model, extra, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
    h = t_next - t
    eps = _eps(model, extra, cache, "eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    eps_r1 = _eps(model, extra, cache, "eps_r1", x - _sigma(s1) * (r1 * h).expm1() * eps, s1)
    u2 = (
        x
        - _sigma(s2) * (r2 * h).expm1() * eps
        - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = _eps(model, extra, cache, "eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


_STEPS = {1: step_1, 2: step_2, 3: step_3}


def _ancestral_target(t, t_next, t_end, eta):
    """Where an eta > 0 step really goes and the noise it adds (k-diffusion's DPM-Solver eta handling)."""
    if not eta:
        return t_next, 0.0
    sd, _ = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
    target = torch.minimum(t_end, sd.log().neg())
    return target, (_sigma(t_next) ** 2 - _sigma(target) ** 2) ** 0.5


@torch.no_grad()
def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, eta=0.0, s_noise=1.0,
                    noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """DPM-Solver-Fast: fixed steps of order 3 (then 2, 1) using `n` model calls in all."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    extra = extra_args or {}
    t_start, t_end = torch.tensor(sigma_max).log().neg(), torch.tensor(sigma_min).log().neg()
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        target, su = _ancestral_target(t, t_next, t_end, eta)
        denoised = x - _sigma(t) * _eps(model, extra, cache, "eps", x, t)
        x = report(callback, x, i, _sigma(t), _sigma(t), denoised)
        x = _STEPS[order](model, extra, x, t, target, cache)
        if eta:
            x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


class _PID:
    """k-diffusion's PID step-size controller for the adaptive solver."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h, self.accept_safety, self.eps, self.errs = h, accept_safety, eps, []
        self.b1, self.b2, self.b3 = (pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order

    def propose_step(self, error) -> bool:
        inv = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = 1 + math.atan(self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, order=3, rtol=0.05,
                        atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0,
                        s_noise=1.0, noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """DPM-Solver-23 with adaptive step size: steps are taken until t reaches sigma_min's."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    extra = extra_args or {}
    s, t_end = torch.tensor(sigma_max).log().neg(), torch.tensor(sigma_min).log().neg()
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = _PID(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, steps = x, 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h)
        target, su = _ancestral_target(s, t, t_end, eta)
        denoised = x - _sigma(s) * _eps(model, extra, cache, "eps", x, s)
        if order == 2:
            x_low, x_high = step_1(model, extra, x, s, target, cache), step_2(model, extra, x, s, target, cache)
        else:
            x_low = step_2(model, extra, x, s, target, cache, r1=1 / 3)
            x_high = step_3(model, extra, x, s, target, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + (su * s_noise * noise_sampler(_sigma(s), _sigma(t)) if eta else 0.0)
            s = t
        steps += 1
        x = report(callback, x, steps - 1, _sigma(s), _sigma(s), denoised)
    return x
