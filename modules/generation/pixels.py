"""Pixels <-> tensors at the model boundary: PIL images to [-1, 1] tensors and decoded tensors to uint8."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> [1, 3, H, W] float32 in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2.0 - 1.0


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, H, W] in [-1, 1] -> uint8 HxWx3 arrays."""
    x = torch.clamp((x.float() + 1.0) / 2.0, 0.0, 1.0)
    arr = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in arr]
