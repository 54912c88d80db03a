"""The job as plain data: ``GenerationRequest`` in, ``GenerationResult`` out (picklable, no handles).

Field names and defaults are A1111's (``StableDiffusionProcessingImg2Img``); the UI's defaults
are the dataclass defaults, the HTTP API applies A1111's API defaults on top.  Images travel as
encoded bytes (PNG/JPEG/...) in requests and as uint8 arrays in results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any

import numpy as np

from modules.core.errors import ValidationError
from modules.core.prompt_parser import BREAK, parse_weighted


class ResizeMode(IntEnum):
    JUST_RESIZE = 0
    CROP_AND_RESIZE = 1
    RESIZE_AND_FILL = 2
    LATENT_UPSCALE = 3


class MaskMode(IntEnum):
    INPAINT_MASKED = 0
    INPAINT_NOT_MASKED = 1


class MaskedContent(IntEnum):
    FILL = 0
    ORIGINAL = 1
    LATENT_NOISE = 2
    LATENT_NOTHING = 3


class InpaintArea(IntEnum):
    WHOLE_PICTURE = 0
    ONLY_MASKED = 1


RESIZE_MODE_LABELS = ["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"]
MASK_MODE_LABELS = ["Inpaint masked", "Inpaint not masked"]
MASKED_CONTENT_LABELS = ["fill", "original", "latent noise", "latent nothing"]
INPAINT_AREA_LABELS = ["Whole picture", "Only masked"]

MAX_SEED = 2**32 - 1
MAX_EMPHASIS = 1000.0  # 72 nested "(" or "(text:1000)"; beyond it the conditioning overflows to NaN


@dataclass(frozen=True)
class HiresSize:
    """Hires. fix geometry (A1111's ``calculate_target_resolution``): upscale to ``upscale``, then crop
    ``truncate`` latent pixels (x, y) around the centre to reach ``final``; all (width, height)."""

    upscale: tuple[int, int]
    truncate: tuple[int, int]
    final: tuple[int, int]


def hires_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> HiresSize:
    """Where hires. fix upscales a ``width`` x ``height`` first pass to, rounded as A1111 rounds."""
    tx = ty = 0
    if resize_x == 0 and resize_y == 0:
        up = int(width * scale), int(height * scale)
    elif resize_y == 0:
        up = resize_x, resize_x * height // width
    elif resize_x == 0:
        up = resize_y * width // height, resize_y
    else:
        if width / height < resize_x / resize_y:
            up = resize_x, resize_x * height // width
        else:
            up = resize_y * width // height, resize_y
        tx, ty = (up[0] - resize_x) // 8, (up[1] - resize_y) // 8
    final = (up[0] // 8 - tx) * 8, (up[1] // 8 - ty) * 8
    return HiresSize(up, (tx, ty), final)


@dataclass
class GenerationRequest:
    """One img2img / inpaint / txt2img job. ``init_images`` empty means txt2img."""

    prompt: str = ""
    negative_prompt: str = ""
    init_images: list[bytes] = field(default_factory=list)
    mask: bytes | None = None
    depth_map: bytes | None = None  # a user depth map (8/16-bit); replaces MiDaS
    depth_invert: bool = False  # the map is z-depth (far = larger, e.g. Blender, depth cameras)
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    width: int = 512
    height: int = 512
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    denoising_strength: float = 0.75
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    batch_size: int = 1
    n_iter: int = 1
    eta: float | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_mask_invert: MaskMode = MaskMode.INPAINT_MASKED
    inpainting_fill: MaskedContent = MaskedContent.ORIGINAL
    inpaint_full_res: InpaintArea = InpaintArea.WHOLE_PICTURE
    inpaint_full_res_padding: int = 32
    initial_noise_multiplier: float | None = None
    override_settings: dict[str, Any] = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    extension_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # by extension name, never position
    script_name: str | None = None  # a selectable script (e.g. "X/Y/Z plot") that runs the job itself
    script_args: dict[str, Any] = field(default_factory=dict)
    # hires. fix (txt2img): a second img2img pass at a larger size; denoising_strength is its strength
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0  # "Resize width to" (0: from hr_scale / the other side)
    hr_resize_y: int = 0
    hr_upscaler: str | None = None  # a latent mode or an upscaler name; None / "": "Latent" (as A1111)
    hr_second_pass_steps: int = 0  # 0: the same as steps
    hr_prompt: str = ""  # empty: the first pass's prompt
    hr_negative_prompt: str = ""
    hr_sampler_name: str | None = None  # None / "Use same sampler": the first pass's
    hr_scheduler: str | None = None
    hr_cfg: float | None = None  # None: cfg_scale
    depth_normalized: bool = False  # depth_map is already normalised (0 far .. 1 near): no per-image min-max
    tiling: bool = False  # seamless: circular padding in the UNet and VAE convolutions (A1111's tiling)
    styles: list[str] = field(default_factory=list)  # prompt styles (styles.csv) applied to the prompts, in order
    save_images: bool = True
    save_grid: bool = True

    @property
    def is_img2img(self) -> bool:
        return bool(self.init_images)

    @property
    def is_inpaint(self) -> bool:
        return self.mask is not None

    @property
    def mask_blur(self) -> int:
        return max(self.mask_blur_x, self.mask_blur_y)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self, *, max_pixels: int = 2048 * 2048, max_images: int = 64, template: bool = False) -> GenerationRequest:
        """Refuse invalid values up front, naming the field; returns self with enums normalised.

        A `template` (a batch's request, whose init image and mask are filled in per file) may have a
        mask without an init image.
        """
        for name in ("prompt", "negative_prompt"):
            _text(self, name, 50_000)
            _emphasis(self, name)
        for name in ("width", "height"):
            v = _integer(self, name, 64, 8192)
            if v % 8:
                raise ValidationError(name, f"{v} is not a multiple of 8 (try {v - v % 8 or 8} or {v + 8 - v % 8})")
        if self.width * self.height > max_pixels:
            raise ValidationError(
                "width",
                f"width x height = {self.width}x{self.height} is above the limit of {max_pixels} pixels "
                "(max_output_pixels)",
            )
        _integer(self, "steps", 1, 1000)
        _number(self, "cfg_scale", 0.0, 100.0)
        _number(self, "denoising_strength", 0.0, 1.0)
        _number(self, "subseed_strength", 0.0, 1.0)
        for name in ("seed", "subseed"):
            _integer(self, name, -1, MAX_SEED)
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            v = _integer(self, name, -1, 8192)
            if v > 0 and v % 8:
                raise ValidationError(name, f"{v} is not a multiple of 8")
        _integer(self, "batch_size", 1, 64)
        _integer(self, "n_iter", 1, 10_000)
        if self.batch_size * self.n_iter > max_images:
            raise ValidationError(
                "n_iter",
                f"batch_size x n_iter = {self.batch_size * self.n_iter} images is above the limit of {max_images} "
                "(max_batch_images)",
            )
        if self.eta is not None:
            _number(self, "eta", 0.0, 1.0)
        if self.initial_noise_multiplier is not None:
            _number(self, "initial_noise_multiplier", 0.0, 1.5)
        for name in ("mask_blur_x", "mask_blur_y"):
            _integer(self, name, 0, 256)
        _integer(self, "inpaint_full_res_padding", 0, 1024)
        self.resize_mode = _enum(self, "resize_mode", ResizeMode, RESIZE_MODE_LABELS)
        self.inpainting_mask_invert = _enum(self, "inpainting_mask_invert", MaskMode, MASK_MODE_LABELS)
        self.inpainting_fill = _enum(self, "inpainting_fill", MaskedContent, MASKED_CONTENT_LABELS)
        self.inpaint_full_res = _enum(self, "inpaint_full_res", InpaintArea, INPAINT_AREA_LABELS)
        if not isinstance(self.init_images, list) or not all(
            isinstance(b, bytes | bytearray) for b in self.init_images
        ):
            raise ValidationError("init_images", "expected a list of encoded images")
        if self.mask is not None and not self.init_images and not template:
            raise ValidationError("mask", "a mask needs an init image to inpaint")
        if not isinstance(self.override_settings, dict):
            raise ValidationError("override_settings", "expected an object of setting names and values")
        if not isinstance(self.extension_args, dict):
            raise ValidationError("alwayson_scripts", "expected an object keyed by extension name")
        if not isinstance(self.script_args, dict):
            raise ValidationError("script_args", "expected an object of argument names and values")
        if not isinstance(self.tiling, bool):
            raise ValidationError("tiling", f"expected true or false, got {self.tiling!r}")
        if not isinstance(self.styles, list) or not all(isinstance(n, str) for n in self.styles):
            raise ValidationError("styles", "expected a list of style names")
        if self.enable_hr:
            self._validate_hires(max_pixels)
        return self

    def _validate_hires(self, max_pixels: int) -> None:
        """The hires. fix fields, and the second pass's size within the output limit."""
        _number(self, "hr_scale", 1.0, 8.0)
        for name in ("hr_resize_x", "hr_resize_y"):
            _integer(self, name, 0, 8192)
        _integer(self, "hr_second_pass_steps", 0, 1000)
        for name in ("hr_prompt", "hr_negative_prompt"):
            _text(self, name, 50_000)
            _emphasis(self, name)
        if self.hr_cfg is not None:
            _number(self, "hr_cfg", 0.0, 100.0)
        if not isinstance(self.hr_upscaler, str | None):
            raise ValidationError("hr_upscaler", f"expected an upscaler name, got {self.hr_upscaler!r}")
        size = hires_size(self.width, self.height, self.hr_scale, self.hr_resize_x, self.hr_resize_y)
        w, h = size.final
        if min(w, h) < 64 or w * h > max_pixels:
            raise ValidationError(
                "hr_scale", f"the hires. fix size {w}x{h} is outside 64 px .. {max_pixels} pixels (max_output_pixels)"
            )


def _text(req: GenerationRequest, name: str, max_len: int) -> str:
    v = getattr(req, name)
    if v is None:
        v = ""
        setattr(req, name, v)
    if not isinstance(v, str):
        raise ValidationError(name, f"expected text, got {type(v).__name__}")
    if len(v) > max_len:
        raise ValidationError(name, f"is {len(v)} characters long; the limit is {max_len}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can carry "\ud800"; no tokenizer or PNG text chunk can
        raise ValidationError(name, f"contains an unpaired surrogate (invalid Unicode) at position {e.start}") from e
    return v


def _emphasis(req: GenerationRequest, name: str) -> None:
    """Refuse emphasis weights that would overflow the conditioning (NaN images with a misleading error)."""
    for fragment, weight in parse_weighted(getattr(req, name)):
        if (fragment, weight) != BREAK and not abs(weight) <= MAX_EMPHASIS:
            raise ValidationError(
                name,
                f"the emphasis weight of {fragment[:40]!r} is {weight:g}; weights must stay within "
                f"-{MAX_EMPHASIS:g}..{MAX_EMPHASIS:g} (too many nested brackets, or a huge (text:weight))",
            )


def _integer(req: GenerationRequest, name: str, lo: int, hi: int) -> int:
    v = getattr(req, name)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or int(v) != v:
        raise ValidationError(name, f"expected a whole number, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise ValidationError(name, f"{v} is outside {lo}..{hi}")
    setattr(req, name, v)
    return v


def _number(req: GenerationRequest, name: str, lo: float, hi: float) -> float:
    v = getattr(req, name)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValidationError(name, f"expected a number, got {v!r}")
    if not lo <= v <= hi:
        raise ValidationError(name, f"{v} is outside {lo}..{hi}")
    setattr(req, name, float(v))
    return float(v)


def _enum(req: GenerationRequest, name: str, kind: type[IntEnum], labels: list[str]):
    v = getattr(req, name)
    if isinstance(v, str):
        if v in labels:
            return kind(labels.index(v))
        if v.isdigit():
            v = int(v)
    if isinstance(v, bool) and kind is InpaintArea:  # A1111's API sends inpaint_full_res as a bool
        return kind(int(v))
    if isinstance(v, int) and not isinstance(v, bool) and v in {m.value for m in kind}:
        return kind(v)
    raise ValidationError(name, f"{v!r} is not one of {', '.join(f'{i} ({label})' for i, label in enumerate(labels))}")


@dataclass
class StepInfo:
    """What a denoising-step hook sees (and may change: ``latents``)."""

    step: int  # 0-based within this batch
    total: int
    timestep: float
    latents: Any  # torch.Tensor [B, 4, h, w]
    denoised: Any | None  # the scheduler's x0 prediction when it gives one
    batch_index: int
    seeds: list[int]
    extension_args: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class GenerationResult:
    """Images (uint8 HxWx3), the depth maps used (float32 HxW in [0, 1], white = near), and their texts."""

    images: list[np.ndarray] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    depth_maps: list[np.ndarray] = field(default_factory=list)
    grid: np.ndarray | None = None
    saved_paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    model_name: str = ""
    model_hash: str = ""
    width: int = 0
    height: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    job_timestamp: str = ""
