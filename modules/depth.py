"""Depth for the depth-conditioned UNet: MiDaS DPT-Hybrid estimation or a user-supplied map.

Both paths end in the same tensor: ``[B, 1, H/8, W/8]`` in [-1, 1], near = +1 (MiDaS predicts
inverse depth, so larger is nearer).  The MiDaS path reproduces LDM's ``AddMiDaS`` + the depth2img
demo exactly: image to [0, 1] float32 HWC, OpenCV ``INTER_CUBIC`` "minimal" keep-aspect resize to
multiples of 32 around 384, normalise with mean = std = 0.5 (in float64, then float32), DPT forward,
bicubic (align_corners=False) resize to latent size, per-sample min-max to [-1, 1].
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from transformers import DPTForDepthEstimation

from modules.errors import ValidationError
from modules.images import open_within_limit

MIDAS_SIZE = 384
MIDAS_MULTIPLE = 32


def midas_input_size(
    height: int, width: int, size: int = MIDAS_SIZE, multiple: int = MIDAS_MULTIPLE
) -> tuple[int, int]:
    """MiDaS 'minimal' keep-aspect resize: scale by whichever of size/h, size/w is nearer 1, round to multiples."""
    scale_h, scale_w = size / height, size / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    new_h = int(np.round(scale * height / multiple) * multiple)
    new_w = int(np.round(scale * width / multiple) * multiple)
    return new_h, new_w


def midas_preprocess(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [-1,1] -> MiDaS input [B,3,h,w] float32, exactly as LDM's AddMiDaS transform."""
    batch = []
    for x in images.detach().to("cpu", torch.float32):
        hwc = ((x.permute(1, 2, 0) + 1.0) * 0.5).numpy()  # LDM's pt2np, in float32
        h, w = midas_input_size(*hwc.shape[:2])
        resized = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_CUBIC)
        normalized = (resized - np.array([0.5, 0.5, 0.5])) / np.array([0.5, 0.5, 0.5])  # float64, as MiDaS
        batch.append(np.ascontiguousarray(normalized.transpose(2, 0, 1)).astype(np.float32))
    return torch.from_numpy(np.stack(batch))


@torch.no_grad()
def dpt_forward(model: DPTForDepthEstimation, pixel_values: torch.Tensor) -> torch.Tensor:
    """MiDaS depth [B,h,w] for any input whose sides are multiples of 32 (position embeddings interpolated).

    Composes transformers' DPT modules as MiDaS' forward does; transformers' own forward only
    accepts the configured 384x384.
    """
    cfg = model.config
    embeddings = model.dpt.embeddings(pixel_values, interpolate_pos_encoding=True)
    hidden = embeddings.last_hidden_states
    features = list(embeddings.intermediate_activations)
    wanted = set(cfg.backbone_out_indices[2:])
    for index, layer in enumerate(model.dpt.encoder.layer):
        hidden = layer(hidden)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        if index in wanted:
            features.append(hidden)
    patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
    height, width = pixel_values.shape[-2:]
    fused = model.neck(features, height // patch, width // patch)
    return model.head(fused)


def normalize_depth(depth: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max to [-1, 1]: ``2 (d - min) / (max - min) - 1``; a flat map becomes 0."""
    lo = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    hi = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    span = hi - lo
    flat = span <= 0
    out = 2.0 * (depth - lo) / torch.where(flat, torch.ones_like(span), span) - 1.0
    return torch.where(flat, torch.zeros_like(out), out)


def to_latent_conditioning(depth: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """[B,1,h,w] depth at any size -> bicubic to latent size -> [-1, 1]."""
    depth = F.interpolate(depth.float(), size=latent_hw, mode="bicubic", align_corners=False)
    return normalize_depth(depth)


def midas_depth(model: DPTForDepthEstimation, images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Raw MiDaS prediction [B,1,h,w] (float32, at MiDaS resolution) of images in [-1, 1], run on `device`.

    `device` defaults to the model's; it differs when the model is offloaded (modules.offload).
    """
    device = device or next(model.parameters()).device
    pixel_values = midas_preprocess(images).to(device)
    return dpt_forward(model, pixel_values).unsqueeze(1).float()


def depth_for_display(depth: torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """[1,1,h,w] depth -> float32 [H,W] in [0, 1] at image size (white = near), for viewing and saving."""
    d = F.interpolate(depth.float().cpu(), size=size_hw, mode="bicubic", align_corners=False)
    return ((normalize_depth(d) + 1.0) * 0.5).clamp(0, 1)[0, 0].numpy()


# --- user-supplied depth maps ----------------------------------------------------------------------


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


def depth_map_tensor(depth: np.ndarray, *, invert: bool = False) -> torch.Tensor:
    """[H,W] user depth (white = near) -> [1,1,H,W] float64 with near = larger; invert for z-depth (far = larger)."""
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float64))[None, None]
    return -d if invert else d


def depth_png16(depth01: np.ndarray) -> bytes:
    """[H,W] in [0, 1] -> a 16-bit grayscale PNG (white = near)."""
    ok, buf = cv2.imencode(".png", np.round(np.clip(depth01, 0, 1) * 65535).astype(np.uint16))
    if not ok:
        raise RuntimeError("OpenCV failed to encode a 16-bit PNG")
    return buf.tobytes()


def depth_preview(depth01: np.ndarray) -> Image.Image:
    """[H,W] in [0, 1] -> an 8-bit grayscale PIL image for galleries."""
    return Image.fromarray(np.round(np.clip(depth01, 0, 1) * 255).astype(np.uint8), mode="L")
