"""Upscalers: the registry (built-ins and model files), pixel upscaling in tiles, latent modes.

Use:

registry = UpscalerRegistry(data_dir, extra_dirs=[...], device=device)
registry.listing()                        # GET /sdapi/v1/upscalers
latent_modes()                            # GET /sdapi/v1/latent-upscale-modes
registry.upscale(image, "4x-UltraSharp", scale=2, tile=192, overlap=8, progress=cb, interrupted=fn)
upscale_latent(latents, (h // 8, w // 8), "Latent (bicubic)")
"""

from modules.models.upscaling.errors import UnknownUpscalerError, UpscaleInterrupted
from modules.models.upscaling.latent import (
    DEFAULT_LATENT_MODE,
    LATENT_UPSCALE_MODES,
    is_latent_mode,
    latent_modes,
    upscale_latent,
)
from modules.models.upscaling.loading import import_spandrel, load_descriptor, read_weights
from modules.models.upscaling.registry import (
    BUILTIN_UPSCALERS,
    MODEL_FOLDERS,
    UpscalerInfo,
    UpscalerRegistry,
    scale_from_name,
    target_size,
)
from modules.models.upscaling.tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP, tile_grid

__all__ = [
    "BUILTIN_UPSCALERS",
    "DEFAULT_LATENT_MODE",
    "DEFAULT_TILE",
    "DEFAULT_TILE_OVERLAP",
    "LATENT_UPSCALE_MODES",
    "MODEL_FOLDERS",
    "UnknownUpscalerError",
    "UpscaleInterrupted",
    "UpscalerInfo",
    "UpscalerRegistry",
    "import_spandrel",
    "is_latent_mode",
    "latent_modes",
    "load_descriptor",
    "read_weights",
    "scale_from_name",
    "target_size",
    "tile_grid",
    "upscale_latent",
]
