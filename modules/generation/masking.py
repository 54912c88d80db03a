"""Inpainting masks: decoding, blur, 'only masked' crop regions, pixel fill, latent masks, compositing.

Masks are uint8 HxW arrays, 255 = repaint.  The latent mask is the blurred mask resized to latent
size and rounded (A1111): 1 = regenerate, 0 = keep the (re-noised) original.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modules.core.errors import ValidationError
from modules.core.images import open_within_limit


def decode_mask(data: bytes, size: tuple[int, int], *, invert: bool, max_pixels: int) -> np.ndarray:
    """Mask bytes -> uint8 HxW (255 = repaint); alpha masks use their alpha, RGB ones their brightness."""
    try:
        with open_within_limit(data, "mask", max_pixels=max_pixels, what="mask") as probe:
            img = probe.copy()
        img.load()
    except ValidationError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValidationError("mask", f"could not decode the mask image ({e.__class__.__name__}: {e})") from e
    if img.size != size:
        raise ValidationError(
            "mask", f"the mask is {img.width}x{img.height} but the image is {size[0]}x{size[1]}; they must match"
        )
    try:
        mask = _mask_values(img)
    except ValueError as e:  # a mode Pillow cannot convert (LAB, HSV...)
        raise ValidationError("mask", f"a {img.mode} image cannot be used as a mask ({e}); send a greyscale PNG") from e
    return 255 - mask if invert else mask.copy()


def _mask_values(img: Image.Image) -> np.ndarray:
    """uint8 HxW from a mask image of any mode: alpha for painted layers, brightness otherwise."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        # a painted layer (strokes on transparency) marks by alpha; an opaque mask by brightness
        mask = np.asarray(rgba.convert("L")) if alpha.min() == 255 else alpha
    elif img.mode in ("I;16", "I;16B", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        mask = np.round(arr / (arr.max() or 1) * 255)
    else:
        mask = np.asarray(img.convert("L"))
    return np.asarray(mask, dtype=np.uint8)


def blur(mask: np.ndarray, sigma_x: int, sigma_y: int) -> np.ndarray:
    """A1111's mask blur: separate horizontal and vertical Gaussians, kernel 2*int(2.5*sigma+0.5)+1."""
    out = mask
    if sigma_x > 0:
        k = 2 * int(2.5 * sigma_x + 0.5) + 1
        out = cv2.GaussianBlur(out, (k, 1), sigma_x)
    if sigma_y > 0:
        k = 2 * int(2.5 * sigma_y + 0.5) + 1
        out = cv2.GaussianBlur(out, (1, k), sigma_y)
    return out


def crop_region(mask: np.ndarray, pad: int) -> tuple[int, int, int, int] | None:
    """Bounding box (x1, y1, x2, y2) of the nonzero mask, grown by `pad` and clamped; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    return max(0, xs.min() - pad), max(0, ys.min() - pad), min(w, xs.max() + 1 + pad), min(h, ys.max() + 1 + pad)


def expand_to_aspect(region: tuple[int, int, int, int], width: int, height: int, img_w: int, img_h: int):
    """Grow `region` around its centre to the width:height aspect ratio, staying inside the image."""
    x1, y1, x2, y2 = region
    rw, rh = x2 - x1, y2 - y1
    target = width / height
    if rw / rh < target:
        rw = min(img_w, round(rh * target))
    else:
        rh = min(img_h, round(rw / target))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    nx1 = int(round(min(max(0, cx - rw / 2), img_w - rw)))
    ny1 = int(round(min(max(0, cy - rh / 2), img_h - rh)))
    return nx1, ny1, nx1 + rw, ny1 + rh


def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """'fill' masked content: the masked area takes the colours around it, from coarse to fine blurs."""
    keep = (mask < 128).astype(np.float32)
    masked = ~keep.astype(bool)
    img = image.astype(np.float32)
    out = img.copy()
    for radius in (256, 64, 16, 4, 2):
        k = 2 * radius + 1
        num = cv2.GaussianBlur(img * keep[..., None], (k, k), radius / 2)
        den = cv2.GaussianBlur(keep, (k, k), radius / 2)
        supported = masked & (den > 0.05)
        out[supported] = (num / np.maximum(den, 1e-6)[..., None])[supported]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def latent_mask(mask: np.ndarray, latent_hw: tuple[int, int]) -> torch.Tensor:
    """[1, 1, h, w] float32, 1 = regenerate: the mask resized (bicubic) to latent size and rounded."""
    small = np.asarray(Image.fromarray(mask).resize((latent_hw[1], latent_hw[0]), Image.Resampling.BICUBIC))
    return torch.from_numpy(np.around(small.astype(np.float32) / 255.0))[None, None]


def composite(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Generated pixels where the (blurred) mask is set, the original's elsewhere; mask 0 -> exact original."""
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    out = generated.astype(np.float32) * alpha + original.astype(np.float32) * (1.0 - alpha)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    untouched = mask == 0
    out[untouched] = original[untouched]
    return out
