"""The model as k-diffusion's denoiser ``D(x, sigma) -> x0``: CFG with the depth channel, inpaint blend.

eps- or v-parameterisation from the model's alphas_cumprod (k-diffusion's ``CompVisDenoiser`` /
``CompVisVDenoiser`` scalings, sigma_data 1); classifier-free guidance and the depth map as the fifth
channel come from ``sampling.predict_noise``.  With inpainting the known area of the prediction is the
init latent (A1111's ``CFGDenoiser``: ``denoised = init * mask + nmask * denoised``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from modules.generation.sampling.schedules import ModelSigmas
from modules.models.sd_model import StableDiffusionModel

if TYPE_CHECKING:
    from modules.generation.sampling import Guidance, Inpaint


def _dims(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


@dataclass
class KDenoiser:
    """x0 predictions for k samplers; counts its calls (A1111's NGMS skips uncond on odd ones)."""

    model: StableDiffusionModel
    guidance: Guidance
    sigmas: ModelSigmas
    inpaint: Inpaint | None = None
    calls: int = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        from modules.generation import sampling  # the package: predict_noise and its CFG live there

        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(x.shape[0]).to(x.device)
        g = self.guidance
        skip = g.s_min_uncond > 0 and self.calls % 2 == 1 and float(sigma[0]) < g.s_min_uncond
        self.calls += 1
        c_in = _dims(1 / (sigma**2 + 1) ** 0.5, x)
        t = self.sigmas.sigma_to_t(sigma.cpu()).to(x.device)
        out = sampling.predict_noise(self.model, x * c_in, t, g, skip_uncond=skip)
        denoised = to_x0(out, x, sigma, self.model.parameterization)
        if self.inpaint is not None:
            mask = self.inpaint.mask
            denoised = self.inpaint.init * (1.0 - mask) + mask * denoised
        return denoised


def to_x0(out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, parameterization: str) -> torch.Tensor:
    """The UNet's eps or v at noise level sigma (x = x0 + sigma * eps) -> the x0 estimate."""
    s = _dims(sigma, x)
    if parameterization == "v":
        return out * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)
    return x - out * s


def cfgpp_eps(model: StableDiffusionModel, g: Guidance, scale_divisor: float = 12.5):
    """For DDIM CFG++: (x, t) -> (guided eps at cfg_scale / 12.5, unconditional eps), both as eps."""
    ac = model.alphas_cumprod

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        concat = [torch.cat([g.depth, g.depth])] if g.depth is not None else []
        both = {"c_concat": concat, "c_crossattn": [torch.cat([g.uncond, g.cond])]}
        out = model.apply_model(torch.cat([x, x]), t, both).float()
        if model.parameterization == "v":
            a = ac[int(t)].item()
            out = a**0.5 * out + (1 - a) ** 0.5 * torch.cat([x, x])
        uncond, cond = out.chunk(2)
        return uncond + (g.cfg_scale / scale_divisor) * (cond - uncond), uncond

    return eps_fn
