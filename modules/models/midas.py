"""Depth for the depth-conditioned UNet: MiDaS DPT-Hybrid estimation or a user-supplied map.

Both paths end in the same tensor: ``[B, 1, H/8, W/8]`` in [-1, 1], near = +1 (MiDaS predicts
inverse depth, so larger is nearer).  The MiDaS path reproduces LDM's ``AddMiDaS`` + the depth2img
demo exactly: image to [0, 1] float32 HWC, OpenCV ``INTER_CUBIC`` "minimal" keep-aspect resize to
multiples of 32 around 384, normalise with mean = std = 0.5 (in float64, then float32), DPT forward,
bicubic (align_corners=False) resize to latent size, per-sample min-max to [-1, 1].
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from transformers import DPTForDepthEstimation

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

    `device` defaults to the model's; it differs when the model is offloaded (models.offload).
    """
    device = device or next(model.parameters()).device
    pixel_values = midas_preprocess(images).to(device)
    return dpt_forward(model, pixel_values).unsqueeze(1).float()


def depth_for_display(depth: torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """[1,1,h,w] depth -> float32 [H,W] in [0, 1] at image size (white = near), for viewing and saving."""
    d = F.interpolate(depth.float().cpu(), size=size_hw, mode="bicubic", align_corners=False)
    return ((normalize_depth(d) + 1.0) * 0.5).clamp(0, 1)[0, 0].numpy()




def depth_map_tensor(depth: np.ndarray, *, invert: bool = False) -> torch.Tensor:
    """[H,W] user depth (white = near) -> [1,1,H,W] float64 with near = larger; invert for z-depth (far = larger)."""
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float64))[None, None]
    return -d if invert else d


