"""Step 4 and the start of step 6: depth conditioning, seeded noise and init latents for one batch.

MiDaS results and init latents are cached per (model, image, size) in the context's ``DepthCache``,
so re-runs with a new seed, prompt or strength skip MiDaS and the VAE encoder.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import numpy as np
import torch

from modules.core.request import GenerationRequest, MaskedContent
from modules.generation import masking, pixels, sampling
from modules.generation.inputs import transform_like
from modules.generation.job import Job, PreparedImage, ProcessingContext
from modules.models import midas as depth
from modules.models.manager import LoadedModel

log = logging.getLogger(__name__)


def latent_shape(job: Job) -> tuple[int, int, int]:
    scale = job.model.vae_scale
    return job.model.latent_channels, job.request.height // scale, job.request.width // scale


def batch_noise(job: Job, seeds: list[int], subseeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Per-image seeded noise (A1111's convention) and the generators that go on drawing step noise."""
    request, scale = job.request, job.model.vae_scale
    resize_from = None
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        resize_from = (request.seed_resize_from_h // scale, request.seed_resize_from_w // scale)
    pairs = [
        sampling.image_noise(latent_shape(job), s, ss, request.subseed_strength, resize_from)
        for s, ss in zip(seeds, subseeds, strict=True)
    ]
    return torch.stack([n for n, _ in pairs]).to(job.model.device), [g for _, g in pairs]


# --- depth ------------------------------------------------------------------------------------------


def depth_for(ctx: ProcessingContext, loaded: LoadedModel, request: GenerationRequest, prepared: PreparedImage | None,
              user_depth: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(conditioning [1,1,h,w] in [-1,1], display [H,W] in [0,1]) for one image."""
    model = loaded.model
    latent_hw = (request.height // model.vae_scale, request.width // model.vae_scale)
    if user_depth is not None:
        arr = prepared.depth_map if prepared is not None else transform_like(user_depth, request, None)
        return user_depth_conditioning(arr, request, latent_hw)
    image = pixels.to_tensor(prepared.for_depth)
    key = (loaded.key, hashlib.sha256(image.numpy().tobytes()).hexdigest(), latent_hw)

    def compute():
        raw = model.raw_depth(image)
        cond = depth.to_latent_conditioning(raw, latent_hw)
        return cond.cpu(), torch.from_numpy(depth.depth_for_display(raw, (request.height, request.width)))

    return ctx.depth_cache.get_or_compute(key, compute)


def user_depth_conditioning(arr: np.ndarray, request: GenerationRequest,
                            latent_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A user's map at the image's size -> (conditioning [1,1,h,w], display [H,W] in [0, 1]).

    Normally min-max normalised per image; with ``request.depth_normalized`` (a crop of a map normalised
    for a larger picture, e.g. SD upscale's tiles) its values are kept: 0..1 (or 0..255, 0..65535 by
    the file's range) become -1..1, averaged down to latent size.
    """
    size_hw = (request.height, request.width)
    if not request.depth_normalized:
        raw = depth.depth_map_tensor(arr, invert=request.depth_invert)
        return depth.to_latent_conditioning(raw, latent_hw), torch.from_numpy(depth.depth_for_display(raw, size_hw))
    peak = float(arr.max()) if arr.size else 0.0
    unit = arr / (1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0)
    unit = 1.0 - unit if request.depth_invert else unit
    given = torch.from_numpy(np.clip(unit, 0.0, 1.0).astype(np.float32))[None, None]
    cond = torch.nn.functional.interpolate(given * 2.0 - 1.0, size=latent_hw, mode="area")
    display = torch.nn.functional.interpolate(given, size=size_hw, mode="area")[0, 0]
    return cond, display


def batch_depth(job: Job, preps: list[PreparedImage | None]) -> tuple[torch.Tensor | None, list]:
    """The depth conditioning of the batch and the maps to show (None for models without depth)."""
    if not job.model.is_depth:
        return None, [None] * len(preps)
    pairs = [depth_for(job.ctx, job.loaded, job.request, p, job.inputs.user_depth) for p in preps]
    return torch.cat([c for c, _ in pairs]).to(job.model.device), [d.numpy() for _, d in pairs]


# --- init latents -----------------------------------------------------------------------------------


def batch_init(job: Job, preps: list[PreparedImage]) -> torch.Tensor:
    return torch.cat([cached_init_latent(job, p) for p in preps]).to(job.model.device)


def cached_init_latent(job: Job, p: PreparedImage) -> torch.Tensor:
    """The init latent is the VAE posterior's mean: exact to reuse for the same image and model, so
    re-runs with a new seed, prompt or strength (and later batches of one job) skip the VAE encoder."""
    source = p.latent_source if p.latent_source is not None else p.work
    data = np.ascontiguousarray(np.asarray(source))
    key = ("init-latent", job.loaded.key, job.vae_key, tuple(sorted(job.model.optimizations.items())), data.shape,
           hashlib.sha256(data.tobytes()).hexdigest(), (p.work.height, p.work.width))  # fmt: skip
    return job.ctx.depth_cache.get_or_compute(key, lambda: encode(job, p).cpu())


def latent_inpaint(job: Job, preps: list[PreparedImage], init: torch.Tensor, noise: torch.Tensor):
    """The latent mask (1 = regenerate) and the masked-content mode applied to the init latent."""
    lat_mask = torch.cat([masking.latent_mask(p.work_mask, latent_shape(job)[1:]) for p in preps])
    lat_mask = lat_mask.to(job.model.device)
    if job.request.inpainting_fill == MaskedContent.LATENT_NOISE:
        init = init * (1 - lat_mask) + noise * lat_mask
    elif job.request.inpainting_fill == MaskedContent.LATENT_NOTHING:
        init = init * (1 - lat_mask)
    return init, sampling.Inpaint(init=init, mask=lat_mask, noise=noise)


def vae_call(job: Job, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn(x)` with the VAE; on NaN in half precision the VAE goes to float32 and runs again
    (A1111's "Automatically revert VAE to 32-bit floats", setting auto_vae_precision)."""
    out = fn(x)
    vae = job.model.vae
    if torch.isfinite(out).all() or vae.dtype == torch.float32 or not job.settings.auto_vae_precision:
        return out
    log.warning("The VAE produced NaNs in %s: it runs in float32 from now on", str(vae.dtype).removeprefix("torch."))
    job.model.revert_vae_to_float32()
    return fn(x)


def encode(job: Job, p: PreparedImage) -> torch.Tensor:
    """Scaled init latent of one image (the posterior mean: deterministic, batch-independent)."""
    model = job.model
    source = p.latent_source if p.latent_source is not None else p.work
    mean = vae_call(job, lambda x: model.encode_first_stage(x).mean, pixels.to_tensor(source))
    z = mean.float() * model.scale_factor
    if p.latent_source is not None:
        target = (p.work.height // model.vae_scale, p.work.width // model.vae_scale)
        z = torch.nn.functional.interpolate(z, size=target, mode="bilinear")
    return z


def decode(job: Job, latents: torch.Tensor) -> list[np.ndarray]:
    """Latents -> uint8 images [H, W, 3] (with the VAE's float32 fallback)."""
    return pixels.to_uint8(vae_call(job, job.model.decode_first_stage, latents))
