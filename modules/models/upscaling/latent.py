"""Latent upscale modes: A1111's ``shared.latent_upscale_modes``, names and torch interpolate modes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modules.models.upscaling.errors import UnknownUpscalerError

# name -> (torch interpolate mode, antialias); the names of GET /sdapi/v1/latent-upscale-modes.
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
DEFAULT_LATENT_MODE = "Latent"


def latent_modes() -> list[dict[str, str]]:
    """The body of ``GET /sdapi/v1/latent-upscale-modes``."""
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


def is_latent_mode(name: str | None) -> bool:
    return name in LATENT_UPSCALE_MODES


def upscale_latent(latents: torch.Tensor, size: tuple[int, int], mode: str = DEFAULT_LATENT_MODE) -> torch.Tensor:
    """``latents`` (B, C, h, w) resized to ``size`` = (height, width) in latent pixels (image size // 8).

    Computed in float32 (CPU has no half bicubic) and returned in the input's dtype.
    """
    if mode not in LATENT_UPSCALE_MODES:
        raise UnknownUpscalerError(
            f"unknown latent upscale mode {mode!r}; choose one of {', '.join(LATENT_UPSCALE_MODES)}"
        )
    if latents.ndim != 4:
        raise ValueError(f"expected latents of shape (batch, channels, height, width), got {tuple(latents.shape)}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"latent size must be positive, got {size}")
    interpolation, antialias = LATENT_UPSCALE_MODES[mode]
    out = F.interpolate(latents.float(), size=(height, width), mode=interpolation, antialias=antialias)
    return out.to(latents.dtype)
