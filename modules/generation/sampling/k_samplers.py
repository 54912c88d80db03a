"""k-diffusion's samplers as small pure functions over a denoiser ``model(x, sigma) -> x0`` and sigmas.

One shared signature, k-diffusion's: ``sample_x(model, x, sigmas, extra_args, callback, ...)``
(``tests/generation/test_k_samplers.py`` checks each against k-diffusion 0.1.1's ``sampling.py``).
Two differences, both for the step callback contract: the callback may return a tensor that
replaces ``x`` (extension hooks), and it stops a run by raising.  Noise comes from ``noise_sampler``
(per-image generators or Brownian trees, see ``noise``), never from the global RNG.
"""

from __future__ import annotations

import torch
from scipy import integrate

from modules.generation.sampling.noise import NoiseSampler


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dsigma."""
    return (x - denoised) / sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else (x - denoised) / sigma


def report(callback, x, i, sigma, sigma_hat, denoised) -> torch.Tensor:
    """Call the step callback; a tensor it returns replaces x."""
    if callback is None:
        return x
    out = callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
    return out if isinstance(out, torch.Tensor) else x


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """(sigma_down, sigma_up): the level to step down to and the noise to add for an ancestral step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def _churn(x, sigma, n, s_churn, s_tmin, s_tmax, s_noise, noise_sampler):
    """Karras' stochastic churn: raise sigma by gamma and add the matching noise (none when s_churn is 0)."""
    gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise_sampler(sigma, sigma_hat) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                 s_noise=1.0, noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """Algorithm 2 (Euler steps) from Karras et al. (2022)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **(extra_args or {}))
        x = report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, eta=1.0, s_noise=1.0,
                           noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """Ancestral sampling with Euler method steps."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                s_noise=1.0, noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """Algorithm 2 (Heun steps) from Karras et al. (2022)."""
    s_in, extra = x.new_ones([x.shape[0]]), extra_args or {}
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra)
        d = to_d(x, sigma_hat, denoised)
        x = report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                 s_noise=1.0, noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """A sampler inspired by DPM-Solver-2 and Algorithm 2 from Karras et al. (2022)."""
    s_in, extra = x.new_ones([x.shape[0]]), extra_args or {}
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra)
        d = to_d(x, sigma_hat, denoised)
        x = report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, eta=1.0, s_noise=1.0,
                           noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """Ancestral sampling with DPM-Solver second-order steps."""
    s_in, extra = x.new_ones([x.shape[0]]), extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t, i: int, j: int) -> float:
    """The j-th Adams coefficient of an order-`order` linear multistep step from t[i] to t[i + 1]."""

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, order=4):
    """Linear multistep (Adams) over the sigmas, up to `order` past derivatives."""
    s_in, sigmas_cpu, ds = x.new_ones([x.shape[0]]), sigmas.detach().cpu().numpy(), []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur, sigmas_cpu, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=False))
    return x


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, eta=1.0, s_noise=1.0,
                              noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """Ancestral sampling with DPM-Solver++(2S) second-order steps."""
    s_in, extra = x.new_ones([x.shape[0]]), extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s) * s_in, **extra)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, eta=1.0, s_noise=1.0,
                     noise_sampler: NoiseSampler | None = None, r=1 / 2):  # fmt: skip
    """DPM-Solver++ (stochastic), two model calls per step."""
    s_in, extra = x.new_ones([x.shape[0]]), extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra)
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma(s) * s_in, **extra)
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        fac = 1 / (2 * r)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None):
    """DPM-Solver++(2M)."""
    s_in, old_denoised = x.new_ones([x.shape[0]]), None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        denoised_d = denoised
        if old_denoised is not None and sigmas[i + 1] != 0:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, eta=1.0, s_noise=1.0,
                        noise_sampler: NoiseSampler | None = None, solver_type="midpoint"):  # fmt: skip
    """DPM-Solver++(2M) SDE, midpoint or Heun correction."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    s_in, old_denoised, h_last = x.new_ones([x.shape[0]]), None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, eta=1.0, s_noise=1.0,
                        noise_sampler: NoiseSampler | None = None):  # fmt: skip
    """DPM-Solver++(3M) SDE."""
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            x = x + _three_m_correction(denoised, denoised_1, denoised_2, h, h_1, h_2, h_eta)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _three_m_correction(denoised, denoised_1, denoised_2, h, h_1, h_2, h_eta):
    """The 3M SDE's second (and third) order terms from the previous two denoised outputs."""
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    if h_2 is not None:
        r0, r1 = h_1 / h, h_2 / h
        d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
    if h_1 is not None:
        return phi_2 * (denoised - denoised_1) / (h_1 / h)
    return torch.zeros_like(denoised)


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, noise_sampler: NoiseSampler | None = None):
    """Latent Consistency Model sampling (A1111's sample_lcm): jump to x0, re-noise to the next sigma."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        x = report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x
