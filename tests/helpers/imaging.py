"""Small image helpers shared by the tests: arrays to PNG bytes, base64 both ways."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    """An array as PNG bytes (`mode` as Image.fromarray takes it)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pixels(s: str) -> np.ndarray:
    """A base64 image (as the API returns them) as an RGB array."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB"))
