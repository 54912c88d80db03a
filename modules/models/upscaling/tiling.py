"""Pixel upscaling with a model: native-scale passes, tiles with context, then Lanczos to the exact size.

A tile is a *core* rectangle of the input (the grid splits the image into near-equal cores of at most
``tile`` pixels a side) grown by ``overlap`` pixels of context on each side, clipped to the image.
The model runs on the grown tile and only the core's part of its output is kept, so there are no
blended seams: wherever the model's receptive field fits inside the context, the tiled output is the
untiled output.  The input and the output stay uint8 on the CPU and only one tile is on the device
at a time, so memory is bounded by the tile size (plus the output image itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modules.models.upscaling.errors import UpscaleInterrupted

ProgressFn = Callable[[int, int], None]  # (tiles done, tiles in all passes)
InterruptFn = Callable[[], bool]
ModelFn = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, h, w) in [0, 1] -> (1, 3, h*s, w*s) in [0, 1]

DEFAULT_TILE = 192  # A1111's ESRGAN_tile
DEFAULT_TILE_OVERLAP = 8  # A1111's ESRGAN_tile_overlap
MAX_PASSES = 3  # as A1111's Upscaler.upscale


@dataclass(frozen=True)
class Tile:
    """A core (x0, y0, x1, y1) and the context-grown box (cx0, cy0, cx1, cy1) around it."""

    core: tuple[int, int, int, int]
    context: tuple[int, int, int, int]


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    if tile <= 0 or length <= tile:
        return [(0, length)]
    count = math.ceil(length / tile)
    step = math.ceil(length / count)
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def tile_grid(width: int, height: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_TILE_OVERLAP) -> list[Tile]:
    """Row-major tiles covering a ``width`` x ``height`` image; ``tile`` 0 means one tile."""
    tiles = []
    for y0, y1 in _spans(height, tile):
        for x0, x1 in _spans(width, tile):
            context = (max(0, x0 - overlap), max(0, y0 - overlap), min(width, x1 + overlap), min(height, y1 + overlap))
            tiles.append(Tile((x0, y0, x1, y1), context))
    return tiles


def _to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(pixels)).to(device)  # a copy: PIL arrays are read-only
    return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    pixels = tensor[0].clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).cpu().numpy()


def run_tiled(
    model: ModelFn,
    pixels: np.ndarray,
    scale: int,
    tiles: list[Tile],
    *,
    device: torch.device,
    on_tile: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """One model pass over (H, W, 3) uint8 ``pixels``, tile by tile; (H*scale, W*scale, 3) uint8."""
    height, width = pixels.shape[:2]
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    for t in tiles:
        (x0, y0, x1, y1), (cx0, cy0, cx1, cy1) = t.core, t.context
        with torch.inference_mode():
            result = model(_to_tensor(pixels[cy0:cy1, cx0:cx1], device))
        expected = (3, (cy1 - cy0) * scale, (cx1 - cx0) * scale)
        if tuple(result.shape[1:]) != expected:
            raise RuntimeError(f"the model returned {tuple(result.shape[1:])} for a tile, expected {expected}")
        top, left = (y0 - cy0) * scale, (x0 - cx0) * scale
        core = result[..., top : top + (y1 - y0) * scale, left : left + (x1 - x0) * scale]
        out[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = _to_uint8(core)
        on_tile()
    return out


def plan_passes(size: tuple[int, int], dest: tuple[int, int], scale: int) -> list[tuple[int, int]]:
    """Input sizes of the model passes that take ``size`` to at least ``dest`` (at most MAX_PASSES).

    As A1111: a request for the image's own size runs one pass, a smaller target none, and a 1x
    (restoration) model at most one.
    """
    (w, h), (dw, dh) = size, dest
    if w >= dw and h >= dh:
        return [(w, h)] if (w, h) == (dw, dh) else []
    passes: list[tuple[int, int]] = []
    while (w < dw or h < dh) and len(passes) < MAX_PASSES:
        passes.append((w, h))
        if scale == 1:
            break
        w, h = w * scale, h * scale
    return passes


def upscale_with_model(
    model: ModelFn,
    scale: int,
    image: Image.Image,
    dest: tuple[int, int],
    *,
    device: torch.device,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_TILE_OVERLAP,
    progress: ProgressFn | None = None,
    interrupted: InterruptFn | None = None,
) -> Image.Image:
    """``image`` (RGB) through the model as often as needed, then Lanczos to exactly ``dest`` = (w, h)."""
    passes = plan_passes(image.size, dest, scale)
    grids = [tile_grid(w, h, tile, overlap) for w, h in passes]
    total, done = sum(map(len, grids)), 0

    def on_tile() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if interrupted is not None and interrupted() and done < total:
            raise UpscaleInterrupted(f"upscale interrupted after {done} of {total} tiles")

    if interrupted is not None and interrupted():
        raise UpscaleInterrupted("upscale interrupted before the first tile")
    pixels = np.asarray(image.convert("RGB"))
    for grid in grids:
        pixels = run_tiled(model, pixels, scale, grid, device=device, on_tile=on_tile)
    return resize(Image.fromarray(pixels), dest, Image.Resampling.LANCZOS)


def resize(image: Image.Image, dest: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == tuple(dest) else image.resize(tuple(dest), resample=resample)
