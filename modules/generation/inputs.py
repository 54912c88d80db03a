"""Step 3 of a request: input geometry. Init images decoded and resized (or cropped around the mask),
the mask blurred and filled, the user's depth map put through the same geometry, and the
generated pixels pasted back at the end."""

from __future__ import annotations

import numpy as np
from PIL import Image

from modules.core import images
from modules.core.depthmaps import decode_depth_map
from modules.core.errors import ValidationError
from modules.core.request import GenerationRequest, InpaintArea, MaskedContent, ResizeMode
from modules.core.settings import Settings
from modules.generation import masking
from modules.generation.job import JobInputs, PreparedImage


def prepare_inputs(request: GenerationRequest, settings: Settings, *, depth_model: bool,
                   enlarge: images.Enlarge | None = None) -> JobInputs:  # fmt: skip
    """Every init image prepared (`enlarge`: the img2img upscaler for images made larger), and the user's
    depth map (for a depth model) fitted to each."""
    prepared = [prepare_image(request, data, i, settings, enlarge) for i, data in enumerate(request.init_images)]
    user_depth = user_depth_map(request, settings) if request.depth_map is not None and depth_model else None
    for p in prepared:
        if user_depth is not None:
            p.depth_map = transform_like(user_depth, request, p)
    label = ("uploaded map" if user_depth is not None else "MiDaS") if depth_model else None
    return JobInputs(prepared, user_depth, label)


def prepare_image(request: GenerationRequest, data: bytes, index: int, settings: Settings,
                  enlarge: images.Enlarge | None = None) -> PreparedImage:  # fmt: skip
    """Decode, then resize (or crop around the mask), blur the mask, fill masked content."""
    field = f"init_images[{index}]"
    img = images.decode_image(data, field, max_pixels=settings.max_input_pixels,
                              background=settings.img2img_background_color)  # fmt: skip
    w, h = request.width, request.height
    if request.mask is None:
        work = images.resize_image(request.resize_mode, img, w, h, enlarge)
        source = latent_source(request, img)
        return PreparedImage(work, work, np.asarray(work), None, None, None, source)

    mask = masking.decode_mask(request.mask, img.size, invert=bool(request.inpainting_mask_invert),
                               max_pixels=settings.max_input_pixels)  # fmt: skip
    if not mask.any():
        raise ValidationError("mask", "the mask is empty (nothing is marked to repaint)")
    mask = masking.blur(mask, request.mask_blur_x, request.mask_blur_y)
    if request.inpaint_full_res == InpaintArea.ONLY_MASKED:
        region = masking.crop_region(mask, request.inpaint_full_res_padding)
        x1, y1, x2, y2 = masking.expand_to_aspect(region, w, h, img.width, img.height)
        crop = img.crop((x1, y1, x2, y2)).resize((w, h), images.LANCZOS)
        work_mask = np.asarray(Image.fromarray(mask).crop((x1, y1, x2, y2)).resize((w, h), images.LANCZOS))
        prepared = PreparedImage(crop, crop, np.asarray(img), mask, work_mask, (x1, y1, x2 - x1, y2 - y1))
    else:
        work = images.resize_image(request.resize_mode, img, w, h, enlarge)
        work_mask = np.asarray(images.resize_image(request.resize_mode, Image.fromarray(mask), w, h))
        overlay = np.clip(work_mask.astype(np.float32) * 2, 0, 255).astype(np.uint8)  # A1111's whole-picture overlay
        prepared = PreparedImage(work, work, np.asarray(work), overlay, work_mask, None, latent_source(request, img))
    if request.inpainting_fill == MaskedContent.FILL:
        prepared.work = Image.fromarray(masking.fill(np.asarray(prepared.work), work_mask))
    return prepared


def latent_source(request: GenerationRequest, img: Image.Image) -> Image.Image | None:
    """For latent upscale: the image at its own size rounded to multiples of 8 (encoded, then upscaled).

    Sides under 64 px are stretched to 64: the VAE's normalisation layers need a few latent pixels.
    """
    if request.resize_mode != ResizeMode.LATENT_UPSCALE:
        return None
    w, h = max(64, img.width // 8 * 8), max(64, img.height // 8 * 8)
    return img.resize((w, h), images.LANCZOS) if (w, h) != img.size else img


def user_depth_map(request: GenerationRequest, settings: Settings) -> np.ndarray:
    """The request's depth map decoded (float64 at its own size), within the input pixel limit."""
    limit = settings.max_input_pixels
    arr = decode_depth_map(request.depth_map, "depth_image", max_pixels=limit)
    if arr.shape[0] * arr.shape[1] > limit:  # formats only OpenCV reads are checked after decoding
        raise ValidationError(
            "depth_image", f"depth map is {arr.shape[1]}x{arr.shape[0]}, above the limit of {limit} pixels"
        )
    return arr


def transform_like(depth_arr: np.ndarray, request: GenerationRequest, prepared: PreparedImage | None) -> np.ndarray:
    """The user's depth map put through the same geometry as its image (resize mode or mask crop)."""
    img = Image.fromarray(depth_arr.astype(np.float32), mode="F")
    if prepared is not None and prepared.paste_to is not None:
        full_h, full_w = prepared.original.shape[:2]
        img = img.resize((full_w, full_h), Image.Resampling.BICUBIC)
        x, y, w, h = prepared.paste_to
        img = img.crop((x, y, x + w, y + h)).resize((request.width, request.height), Image.Resampling.BICUBIC)
    else:
        img = images.resize_image(request.resize_mode, img, request.width, request.height)
    return np.asarray(img, dtype=np.float64)


def finish_image(img: np.ndarray, p: PreparedImage | None) -> np.ndarray:
    """Paste an "only masked" crop back and keep the original pixels outside the mask."""
    if p is None or p.overlay_mask is None:
        return img
    if p.paste_to is not None:
        x, y, w, h = p.paste_to
        full = p.original.copy()
        full[y : y + h, x : x + w] = np.asarray(Image.fromarray(img).resize((w, h), images.LANCZOS))
        img = full
    return masking.composite(img, p.original, p.overlay_mask)
