"""Images in and out: decoding uploads, resize modes, tensors, grids, saving with infotext.

Saving follows A1111: ``outputs/img2img-images/YYYY-MM-DD/NNNNN-<seed>.png`` with the infotext in
the PNG ``parameters`` text chunk (EXIF UserComment for JPEG/WebP), written atomically.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from modules.core.errors import ValidationError
from modules.core.fileio import atomic_write_bytes
from modules.core.request import ResizeMode

LANCZOS = Image.Resampling.LANCZOS
_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769
_SEQUENCE_LOCK = threading.Lock()


# --- decoding -------------------------------------------------------------------------------------


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def open_within_limit(data: bytes, field: str, *, max_pixels: int, what: str = "image") -> Image.Image:
    """Open lazily (the header only) and refuse more than `max_pixels` before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own ceiling, hit before we see the size
        m = _BOMB_PIXELS.search(str(e))
        size = f"{int(m.group(1))} pixels" if m else "too large"
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise ValidationError(field, f"{what} is {size}, above the limit of {limit} pixels (max_input_pixels)") from e
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ValidationError(field, f"{what} is {w}x{h}, above the limit of {max_pixels} pixels (max_input_pixels)")
    return img


def decode_image(data: bytes, field: str, *, max_pixels: int, background: str = "#ffffff") -> Image.Image:
    """Encoded bytes -> RGB PIL image; EXIF rotation applied, transparency filled with `background`."""
    if not data:
        raise ValidationError(field, "empty image data")
    try:
        with open_within_limit(data, field, max_pixels=max_pixels) as probe:
            img = probe.copy() if probe.format != "MPO" else probe.convert("RGB")
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img, background)
    except ValidationError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValidationError(field, f"could not decode the image ({e.__class__.__name__}: {e})") from e


def to_rgb(img: Image.Image, background: str = "#ffffff") -> Image.Image:
    """Any mode (RGBA, LA, P, CMYK, 16-bit) -> RGB; transparent pixels filled with `background`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.round(arr / top * 255).clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(np.round((arr - lo) / (hi - lo or 1) * 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.alpha_composite(rgba)
        return base.convert("RGB")
    return img.convert("RGB")


# --- resize modes ---------------------------------------------------------------------------------


Enlarge = Callable[[Image.Image, float], Image.Image]  # (image, scale > 1) -> the image enlarged by an upscaler


def resize_image(mode: ResizeMode, img: Image.Image, width: int, height: int,
                 enlarge: Enlarge | None = None) -> Image.Image:  # fmt: skip
    """A1111's resize modes: just resize, crop and resize (cover + centre crop), resize and fill (fit + edges).

    With `enlarge` (A1111's "Upscaler for img2img"), an image made larger goes through it first and
    Lanczos then gives the exact size; smaller ones and masks are resized with Lanczos alone."""
    if img.size == (width, height):
        return img
    if mode in (ResizeMode.JUST_RESIZE, ResizeMode.LATENT_UPSCALE):
        return _resize(img, width, height, enlarge)
    ratio, src_ratio = width / height, img.width / img.height
    if mode == ResizeMode.CROP_AND_RESIZE:
        scale = width / img.width if ratio > src_ratio else height / img.height
        sw, sh = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        resized = _resize(img, sw, sh, enlarge)
        left, top = (sw - width) // 2, (sh - height) // 2
        return resized.crop((left, top, left + width, top + height))
    # resize and fill: fit inside, then extend the edge pixels into the borders
    scale = width / img.width if ratio < src_ratio else height / img.height
    sw, sh = max(1, min(width, round(img.width * scale))), max(1, min(height, round(img.height * scale)))
    arr = np.asarray(_resize(img, sw, sh, enlarge))
    top, left = (height - sh) // 2, (width - sw) // 2
    pad = ((top, height - sh - top), (left, width - sw - left)) + (((0, 0),) if arr.ndim == 3 else ())
    return Image.fromarray(np.pad(arr, pad, mode="edge"))


def _resize(img: Image.Image, width: int, height: int, enlarge: Enlarge | None) -> Image.Image:
    scale = max(width / img.width, height / img.height)
    if enlarge is not None and scale > 1.0 and img.mode in ("RGB", "RGBA"):
        img = enlarge(img, scale)
    return img if img.size == (width, height) else img.resize((width, height), LANCZOS)


# --- tensors --------------------------------------------------------------------------------------


# --- grids ----------------------------------------------------------------------------------------


def image_grid(images: list[np.ndarray], cols: int | None = None) -> np.ndarray:
    """Images of equal size in a near-square grid (row-major)."""
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im[:h, :w]
    return grid


# --- encoding with infotext -----------------------------------------------------------------------


def encode_image(arr: np.ndarray, infotext: str | None = None, fmt: str = "png") -> bytes:
    """uint8 array (RGB or grey) -> PNG/JPEG/WebP bytes carrying the infotext as A1111 writes it."""
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    if fmt == "png":
        meta = PngImagePlugin.PngInfo()
        if infotext:
            meta.add_text("parameters", infotext)
        img.save(buf, "PNG", pnginfo=meta)
    else:
        exif = Image.Exif()
        if infotext:
            exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
        kind = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        img.save(buf, kind, quality=95, exif=exif.tobytes())
    return buf.getvalue()


def read_infotext(data: bytes) -> str | None:
    """The 'parameters' text of a PNG, or the EXIF UserComment of a JPEG/WebP, if any."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            text = img.info.get("parameters")
            if text:
                return str(text)
            comment = img.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValidationError("image", f"could not decode the image ({e})") from e
    if isinstance(comment, bytes):
        head, body = comment[:8], comment[8:]
        if head == b"UNICODE\0":
            return body.decode("utf-16-be", errors="replace")
        return body.decode("utf-8", errors="replace").strip("\0") or None
    return comment or None


# --- saving ---------------------------------------------------------------------------------------


def _next_sequence_number(folder: Path) -> int:
    best = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            m = re.match(r"(\d{5,})-", name)
            if m:
                best = max(best, int(m.group(1)))
    return best + 1


_SANITIZE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def save_image(
    arr: np.ndarray,
    folder: Path,
    *,
    seed: int,
    prompt: str,
    infotext: str | None,
    fmt: str = "png",
    pattern: str = "",
    subdir_pattern: str | None = "[date]",
    suffix: str = "",
    data: bytes | None = None,
) -> Path:
    """Write one image as NNNNN-<seed>[suffix].<fmt> (atomically); returns its path."""
    if subdir_pattern:
        folder = folder / _expand(subdir_pattern, seed, prompt)
    folder.mkdir(parents=True, exist_ok=True)
    body = data if data is not None else encode_image(arr, infotext, fmt)
    with _SEQUENCE_LOCK:
        number = _next_sequence_number(folder)
        stem = _expand(pattern, seed, prompt) if pattern else str(seed)
        path = folder / f"{number:05}-{stem}{suffix}.{fmt}"
        atomic_write_bytes(path, body)
    return path


def _expand(pattern: str, seed: int, prompt: str) -> str:
    words = _SANITIZE.sub("", prompt)[:64].strip() or "none"
    values = {
        "[date]": _dt.date.today().isoformat(),
        "[datetime]": _dt.datetime.now().strftime("%Y%m%d%H%M%S"),
        "[seed]": str(seed),
        "[prompt]": words,
        "[prompt_spaces]": words,
        "[prompt_words]": "_".join(words.split()),
    }
    out = pattern
    for key, value in values.items():
        out = out.replace(key, value)
    return _SANITIZE.sub("_", out).strip(". ") or "images"
