"""Depth maps as files: decoding a user's map (8/16-bit PNG, TIFF, grey or RGB) and writing 16-bit PNGs.

numpy, PIL and OpenCV only; the tensor side (MiDaS, latent conditioning) is ``modules.models.midas``.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from modules.core.errors import ValidationError
from modules.core.images import open_within_limit


def decode_depth_map(data: bytes, field: str = "depth_image", *, max_pixels: int | None = None) -> np.ndarray:
    """An uploaded depth map -> float64 [H,W], precision kept (8/16-bit PNG, TIFF, gray or RGB; red channel).

    With `max_pixels`, the size in the header is checked before anything is decoded.
    """
    if max_pixels is not None:
        try:
            open_within_limit(data, field, max_pixels=max_pixels, what="depth map").close()
        except ValidationError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            pass  # a format Pillow does not read: OpenCV may (with its own size ceiling, checked after decoding)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ValidationError(field, f"the depth map could not be decoded ({str(e).strip().splitlines()[-1]})") from e
    if arr is None:
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as e:  # PIL raises many types for undecodable data
            raise ValidationError(field, f"the depth map could not be decoded as an image ({e})") from e
        arr = np.asarray(img.convert("I") if img.mode in ("I;16", "I;16B", "I") else img.convert("L"))
    if arr.ndim == 3:
        arr = arr[..., 2] if arr.shape[2] >= 3 else arr[..., 0]  # OpenCV is BGR(A): index 2 is red
    if arr.ndim != 2 or arr.size == 0:
        raise ValidationError(field, f"the depth map has an unsupported shape {arr.shape}")
    return arr.astype(np.float64)


def depth_png16(depth01: np.ndarray) -> bytes:
    """[H,W] in [0, 1] -> a 16-bit grayscale PNG (white = near)."""
    ok, buf = cv2.imencode(".png", np.round(np.clip(depth01, 0, 1) * 65535).astype(np.uint16))
    if not ok:
        raise RuntimeError("OpenCV failed to encode a 16-bit PNG")
    return buf.tobytes()


def depth_preview(depth01: np.ndarray) -> Image.Image:
    """[H,W] in [0, 1] -> an 8-bit grayscale PIL image for galleries."""
    return Image.fromarray(np.round(np.clip(depth01, 0, 1) * 255).astype(np.uint8), mode="L")
