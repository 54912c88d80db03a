"""SD upscale (A1111's ``scripts/sd_upscale.py``): upscale, then img2img tile by tile with blended seams.

1. The first init image is upscaled by ``scale_factor`` with the chosen upscaler (``None``: as it is).
2. With the depth model, ONE depth map of the whole upscaled picture: MiDaS on the whole picture, or
   the user's map stretched to it, min-max normalised once for the whole picture.
3. ``split_grid``: tiles of the request's width x height overlapping by ``overlap`` (A1111's layout).
4. Each tile is an img2img request through the normal pipeline, seeds counting up from the job's;
   its depth map is its crop of the whole picture's map with ``depth_normalized`` set, so the tile is
   conditioned on the picture's depth range, not its own (a per-tile min-max would make neighbours
   disagree about how far things are).
5. ``combine_grid``: the tiles pasted back with linear alpha ramps over the overlaps (A1111's masks).

Arguments by name (``overlap``, ``upscaler``, ``scale_factor``) or, from the API, A1111's positional
``script_args`` ``[_, overlap, upscaler_index, scale_factor]`` (the index may also be a name).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from modules.core import images
from modules.core.errors import ValidationError
from modules.core.hooks import ScriptRunner
from modules.core.request import GenerationRequest, GenerationResult, ResizeMode
from modules.core.settings import Settings
from modules.generation import inputs, outputs, pixels
from modules.models import midas

TITLE = "SD upscale"
POSITIONAL = ("info", "overlap", "upscaler", "scale_factor")  # A1111's script_args order
DEFAULTS = {"overlap": 64, "upscaler": "None", "scale_factor": 2.0}


# --- the grid (A1111's images.split_grid / combine_grid) -------------------------------------------


@dataclass
class Grid:
    """Rows of (y, height, [[x, width, tile image], ...]) over an image_w x image_h picture."""

    tiles: list[list[Any]] = field(default_factory=list)
    tile_w: int = 512
    tile_h: int = 512
    image_w: int = 512
    image_h: int = 512
    overlap: int = 64

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(x, y, width, height) of every tile, row by row."""
        return [(x, y, w, h) for y, h, row in self.tiles for x, w, _ in row]


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """Tiles covering `image`, evenly spread, the last of each row and column flush with the edge."""
    w, h = image.width, image.height
    cols = max(1, math.ceil((w - overlap) / (tile_w - overlap)))
    rows = max(1, math.ceil((h - overlap) / (tile_h - overlap)))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = min(int(row * dy), h - tile_h)
        tiles = []
        for col in range(cols):
            x = min(int(col * dx), w - tile_w)
            tiles.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, tiles])
    return grid


def _ramp(length: int, across: int, *, vertical: bool) -> Image.Image:
    r = np.arange(length, dtype=np.float32) * 255 / length
    r = np.repeat(r.reshape((length, 1)), across, axis=1) if vertical else np.repeat(r.reshape((1, length)), across, 0)
    return Image.fromarray(r.astype(np.uint8), "L")


def combine_grid(grid: Grid) -> Image.Image:
    """The tiles pasted back; each overlap blends linearly from the earlier tile to the later one."""
    o = grid.overlap
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or o == 0:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, o, h)), (x, 0), mask=_ramp(o, h, vertical=False))
            line.paste(tile.crop((o, 0, w, h)), (x + o, 0))
        if y == 0 or o == 0:
            combined.paste(line, (0, y))
            continue
        combined.paste(line.crop((0, 0, line.width, o)), (0, y), mask=_ramp(o, line.width, vertical=True))
        combined.paste(line.crop((0, o, line.width, h)), (0, y + o))
    return combined


# --- arguments ------------------------------------------------------------------------------------


def parse_args(args: dict[str, Any], upscalers: list[str]) -> tuple[int, str, float]:
    """(overlap, upscaler name, scale) from named or positional arguments; bad ones are ValidationErrors."""
    values = {**DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
    try:
        overlap = int(values["overlap"])
        scale = float(values["scale_factor"])
    except (TypeError, ValueError) as e:
        raise ValidationError("script_args", f"SD upscale: overlap and scale_factor must be numbers ({e})") from e
    name = values["upscaler"]
    if isinstance(name, int | float) and not isinstance(name, bool):
        if not 0 <= int(name) < len(upscalers):
            raise ValidationError("script_args.upscaler", f"upscaler index {name} is outside 0..{len(upscalers) - 1}")
        name = upscalers[int(name)]
    match = [u for u in upscalers if u.lower() == str(name).lower()]
    if not match:
        raise ValidationError(
            "script_args.upscaler", f"unknown upscaler {name!r}; choose one of {', '.join(upscalers)}"
        )
    if not 1.0 <= scale <= 8.0 or not math.isfinite(scale):
        raise ValidationError("script_args.scale_factor", f"{scale} is outside 1..8")
    if overlap < 0:
        raise ValidationError("script_args.overlap", f"{overlap} is negative")
    return overlap, match[0], scale


def named_args(args: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """A1111's positional list -> names (a dict is returned as it is)."""
    return dict(zip(POSITIONAL, args, strict=False)) if isinstance(args, list) else dict(args)


# --- the tools the script gets (bound to a job's context by processing) ---------------------------


def whole_picture_depth(
    ctx: Any, settings: Settings, request: GenerationRequest, image: np.ndarray
) -> np.ndarray | None:
    """The depth of the whole picture, [H, W] in [0, 1] (white = near), normalised once; None without depth."""
    loaded = ctx.models.get(request.override_settings.get("sd_model_checkpoint") or None)
    if not loaded.model.is_depth:
        return None
    h, w = image.shape[:2]
    if request.depth_map is not None:
        arr = inputs.user_depth_map(request, settings).astype(np.float32)
        stretched = np.asarray(Image.fromarray(arr, mode="F").resize((w, h), Image.Resampling.BICUBIC))
        raw = midas.depth_map_tensor(stretched, invert=request.depth_invert)
    else:
        raw = loaded.model.raw_depth(pixels.to_tensor(Image.fromarray(image)))
    return midas.depth_for_display(raw, (h, w))


def runner_tools(ctx: Any, settings: Settings) -> dict[str, Callable]:
    """``ScriptRunner``'s upscale / depth / save_image for a job's context."""

    def upscale(image: np.ndarray, name: str, scale: float) -> np.ndarray:
        if ctx.upscalers is None:
            raise ValidationError("script_args.upscaler", "no upscalers are available here")
        out = ctx.upscalers.upscale(image, name, scale=scale, tile=settings.ESRGAN_tile,
                                    overlap=settings.ESRGAN_tile_overlap, interrupted=lambda: ctx.control.interrupted)  # fmt: skip
        return np.asarray(out)

    def save_image(image: np.ndarray, request: GenerationRequest, text: str, seed: int) -> str | None:
        scratch = GenerationResult()
        outputs.save(scratch, request, settings, ctx.data_dir, image, None, seed, text)
        return scratch.saved_paths[0] if scratch.saved_paths else None

    return {
        "upscalers": lambda: ctx.upscalers.names() if ctx.upscalers is not None else ["None"],
        "max_input_pixels": settings.max_input_pixels,
        "upscale": upscale,
        "depth": lambda request, image: whole_picture_depth(ctx, settings, request, image),
        "save_image": save_image,
    }


# --- the script -----------------------------------------------------------------------------------


def depth_tile(depth01: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """A tile's crop of the whole picture's map as a float32 TIFF (exact values, no re-normalisation)."""
    x, y, w, h = box
    ok, buf = cv2.imencode(".tiff", np.ascontiguousarray(depth01[y : y + h, x : x + w], dtype=np.float32))
    if not ok:
        raise RuntimeError("OpenCV failed to encode a float32 TIFF")
    return buf.tobytes()


def tile_request(request: GenerationRequest, tile: Image.Image, seed: int, depth: bytes | None) -> GenerationRequest:
    return dataclasses.replace(
        request, init_images=[images.encode_image(np.asarray(tile))], mask=None, batch_size=1, n_iter=1, seed=seed,
        resize_mode=ResizeMode.JUST_RESIZE, depth_map=depth, depth_normalized=depth is not None, depth_invert=False,
        save_images=False, save_grid=False, script_name=None, script_args={},
    )  # fmt: skip


def run(request: GenerationRequest, args: dict[str, Any], runner: ScriptRunner) -> GenerationResult:
    """Upscale the first init image, then img2img it tile by tile (see the module docstring)."""
    if not request.init_images:
        raise ValidationError("init_images", "SD upscale needs an init image (img2img)")
    if runner.upscale is None or runner.depth is None:
        raise ValidationError("script_name", "SD upscale needs the upscaler tools of this program's pipeline")
    overlap, name, scale = parse_args(named_args(args), runner.upscalers())
    if overlap >= min(request.width, request.height):
        raise ValidationError(
            "script_args.overlap", f"{overlap} must be smaller than the tile ({request.width}x{request.height})"
        )
    img = images.decode_image(request.init_images[0], "init_images[0]", max_pixels=runner.max_input_pixels)
    big = Image.fromarray(runner.upscale(np.asarray(img), name, scale)) if name != "None" else img
    if big.width < request.width or big.height < request.height:
        raise ValidationError("width", f"SD upscale: the upscaled picture ({big.width}x{big.height}) is smaller than "
                                       f"a tile ({request.width}x{request.height}); lower width/height or raise the scale")  # fmt: skip
    depth01 = runner.depth(request, np.asarray(big))
    first_seed = request.seed if request.seed != -1 else int(np.random.randint(0, 2**32 - 1))
    result = GenerationResult(width=big.width, height=big.height)
    for n in range(request.n_iter):
        combined, text, stopped = _upscale_once(request, big, depth01, first_seed + n, overlap, name, runner, result)
        if combined is None:
            break
        _add(result, request, combined, text, first_seed + n, depth01, runner)
        if stopped:
            break
    return result


def _upscale_once(request, big, depth01, seed, overlap, name, runner, result):
    grid = split_grid(big, request.width, request.height, overlap)
    flat = [t for _, _, row in grid.tiles for t in row]
    text, stopped = None, False
    for i, (tile, box) in enumerate(zip(flat, grid.boxes(), strict=True)):
        if runner.interrupted():
            stopped = True
            break
        depth = depth_tile(depth01, box) if depth01 is not None else None
        res = runner.process(tile_request(request, tile[2], seed + i, depth))
        result.warnings += [w for w in res.warnings if w not in result.warnings]
        result.model_name, result.model_hash = res.model_name, res.model_hash
        if not res.images:
            stopped = True
            break
        tile[2] = Image.fromarray(res.images[0])
        text = text or _infotext(res.infotexts[0], overlap, name, depth01 is not None, request)
        if res.interrupted:
            stopped = True
            break
    result.interrupted = stopped and runner.interrupted()
    if text is None:
        return None, None, True
    return np.asarray(combine_grid(grid)), text, stopped


def _infotext(tile_text: str, overlap: int, name: str, depth: bool, request: GenerationRequest) -> str:
    """The first tile's infotext with A1111's SD upscale keys and the whole picture's depth source."""
    head, _, last = tile_text.rpartition("\n")
    if depth:
        source = "uploaded map" if request.depth_map is not None else "MiDaS"
        last = last.replace("Depth source: uploaded map", f"Depth source: {source} (whole picture)")
    extra = f"SD upscale overlap: {overlap}, SD upscale upscaler: {name}"
    before, sep, version = last.rpartition(", Version: ")
    last = f"{before}, {extra}{sep}{version}" if sep else f"{last}, {extra}"
    return f"{head}\n{last}" if head else last


def _add(result: GenerationResult, request: GenerationRequest, image: np.ndarray, text: str, seed: int,
         depth01: np.ndarray | None, runner: ScriptRunner) -> None:  # fmt: skip
    result.images.append(image)
    result.infotexts.append(text)
    result.seeds.append(seed)
    result.subseeds.append(request.subseed)
    result.prompts.append(request.prompt)
    result.negative_prompts.append(request.negative_prompt)
    if depth01 is not None:
        result.depth_maps.append(depth01.astype(np.float32))
    if request.save_images and runner.save_image is not None:
        path = runner.save_image(image, request, text, seed)
        if path:
            result.saved_paths.append(path)
