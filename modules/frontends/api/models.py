"""Pydantic models of the A1111-compatible API (``/sdapi/v1``): requests derived from GenerationRequest.

The generation request models are *built from* ``GenerationRequest``'s dataclass fields, so a field
added there appears in the API (under its A1111 name, with its type mapped and its default) without
anyone touching this file; ``API_NAMES`` renames the few that A1111 calls differently and
``API_DEFAULTS`` applies A1111's API defaults, which differ from the UI's.  A1111's API-only fields
(``sampler_index``, ``send_images``, ``include_init_images``, ...) are added on top.  Fields A1111
clients send that this program does not implement are accepted (so those clients work unchanged)
and reported in the response's ``info.warnings`` when they ask for something.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import IntEnum
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from modules.core.request import GenerationRequest, InpaintArea

# GenerationRequest field -> A1111 API field name (all others keep their name).
API_NAMES = {"depth_map": "depth_image", "extension_args": "alwayson_scripts"}

# GenerationRequest fields the API sets from other fields instead of exposing them.
INDIRECT_FIELDS = {"save_grid": "save_images and not do_not_save_grid"}

# A1111's API defaults where they differ from the UI's (GenerationRequest's defaults are the UI's).
API_DEFAULTS: dict[str, Any] = {
    "init_images": None,  # A1111: missing init images are a 404 "Init image not found", not a 422
    "steps": 50,
    "sampler_name": None,  # None: `sampler_index` ("Euler"), as A1111
    "scheduler": None,  # None: "Automatic", or the schedule named in an old-style sampler name
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "save_images": False,
    "tiling": None,  # A1111 sends null for "not asked"
}

# Fields only img2img has; the txt2img model leaves them out.
IMG2IMG_ONLY = {
    "init_images",
    "mask",
    "mask_blur_x",
    "mask_blur_y",
    "inpainting_mask_invert",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
}

DESCRIPTIONS = {
    "tiling": "Seamless tiling: circular padding in the UNet and VAE (the image wraps around).",
    "styles": "Prompt styles from styles.csv (/sdapi/v1/prompt-styles), applied to prompt and negative prompt.",
    "enable_hr": "Hires. fix (txt2img; ignored by img2img): a second pass at hr_scale (or hr_resize_x/y) with "
    "denoising_strength.",
    "hr_upscaler": "A latent mode (/sdapi/v1/latent-upscale-modes) or an upscaler (/sdapi/v1/upscalers); "
    "default Latent.",
    "hr_second_pass_steps": "Steps of the second pass; 0: the same as steps.",
    "depth_normalized": "depth_image is already normalised (black = farthest, white = nearest of a larger "
    "picture): used as it is, without the per-image min-max.",
    "init_images": "Input images: base64 (optionally with a data:image/...;base64, prefix). URLs are not fetched.",
    "mask": "Inpainting mask (base64), the size of the first init image; white = repaint.",
    "depth_image": "Your own depth map (base64 PNG/TIFF, 8- or 16-bit, white = near); replaces MiDaS.",
    "depth_invert": "The depth map is z-depth (far = larger, as Blender's Z pass or a depth camera).",
    "resize_mode": "0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize (latent upscale).",
    "sampler_name": "Sampler (see /sdapi/v1/samplers); falls back to sampler_index.",
    "scheduler": "Schedule type (see /sdapi/v1/schedulers); default Automatic.",
    "inpainting_fill": "Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing.",
    "inpaint_full_res": "Inpaint area: false / 0 whole picture, true / 1 only masked.",
    "inpainting_mask_invert": "0 inpaint masked, 1 inpaint not masked.",
    "alwayson_scripts": 'Extension arguments by extension name: {"<name>": {"args": {...}}} or {"<name>": {...}}.',
    "script_name": "A selectable script by title (see /sdapi/v1/scripts), e.g. 'X/Y/Z plot'.",
    "script_args": "The script's arguments by name (an object); A1111's positional list for X/Y/Z plot and SD upscale.",
    "override_settings": "Options for this request only (see /sdapi/v1/options); sd_model_checkpoint switches the model.",
    "save_images": "Also save the images in the outputs folder (the API default is not to).",
    "seed": "-1 for a random seed.",
}


class ApiModel(BaseModel):
    """Base of the request models: unknown fields are kept (and reported), never a 422."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


def api_type(tp: Any) -> Any:
    """The JSON-side type of a GenerationRequest field type (bytes -> base64 str, enums -> index or label)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bytes:
        return str
    if origin in (Union, types.UnionType):
        return Union[tuple(api_type(a) for a in args)]  # noqa: UP007 (built dynamically)
    if origin is list:
        return list[api_type(args[0])]
    if origin is dict or tp is Any or tp in (str, int, float, bool, type(None)):
        return tp
    if isinstance(tp, type) and issubclass(tp, IntEnum):
        return Union[bool, int, str]  # noqa: UP007 (A1111 sends indices; inpaint_full_res is a bool there)
    raise TypeError(f"GenerationRequest field type {tp!r} has no API mapping: add one in modules/frontends/api/models.py")


def _default(f: dataclasses.Field, api_name: str) -> tuple[Any, Any]:
    """(default, default_factory) of one field, with A1111's API default where it has one."""
    if api_name in API_DEFAULTS:
        value = API_DEFAULTS[api_name]
        return value, None
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.MISSING, f.default_factory
    value = f.default
    if isinstance(value, IntEnum):
        value = int(value)
    return value, None


def request_fields(exclude: set[str]) -> dict[str, tuple[Any, Any]]:
    """pydantic field definitions for every GenerationRequest field (except `exclude`), under API names."""
    hints = typing.get_type_hints(GenerationRequest)
    out: dict[str, tuple[Any, Any]] = {}
    for f in dataclasses.fields(GenerationRequest):
        if f.name in exclude or f.name in INDIRECT_FIELDS:
            continue
        name = API_NAMES.get(f.name, f.name)
        tp = api_type(hints[f.name])
        if name == "script_args":
            tp = Union[list, dict]  # noqa: UP007 (A1111 sends a positional list; we take names)
        default, factory = _default(f, name)
        if default is None:
            tp = tp | None
        kw: dict[str, Any] = {"description": DESCRIPTIONS.get(name)}
        if factory is not None:
            kw["default_factory"] = factory
        else:
            kw["default"] = default
        out[name] = (tp, Field(**kw))
    return out


def _opt(tp: Any, default: Any = None, description: str | None = None) -> tuple[Any, Any]:
    return (tp, Field(default=default, description=description))


def _list(tp: Any, description: str | None = None) -> tuple[Any, Any]:
    return (list[tp], Field(default_factory=list, description=description))


# A1111's API-only fields and the A1111 fields we accept without implementing them.
COMMON_EXTRA: dict[str, tuple[Any, Any]] = {
    "sampler_index": _opt(str, "Euler", "Sampler used when sampler_name is not given (A1111's old field)."),
    "send_images": _opt(bool, True, "Return the images in the response."),
    "do_not_save_samples": _opt(bool, False),
    "do_not_save_grid": _opt(bool, False),
    "infotext": _opt(str | None, None, "A1111 infotext; fills the fields this request does not set."),
    "force_task_id": _opt(str | None, None),
    "restore_faces": _opt(bool | None, None, "Not supported (reported in info.warnings)."),
    "s_min_uncond": _opt(float | None, None),
    "s_churn": _opt(float | None, None),
    "s_tmax": _opt(float | None, None),
    "s_tmin": _opt(float | None, None),
    "s_noise": _opt(float | None, None),
    "refiner_checkpoint": _opt(str | None, None, "Not supported (reported in info.warnings)."),
    "refiner_switch_at": _opt(float | None, None),
    "disable_extra_networks": _opt(bool, False),
    "comments": _opt(dict[str, Any] | None, None),
}

IMG2IMG_EXTRA: dict[str, tuple[Any, Any]] = {
    "mask_blur": _opt(int | None, None, "Sets mask_blur_x and mask_blur_y."),
    "include_init_images": _opt(bool, False, "Echo init_images, mask and depth_image in `parameters`."),
    "image_cfg_scale": _opt(float | None, None),
    "latent_mask": _opt(str | None, None, "Not supported (reported in info.warnings)."),
    "mask_round": _opt(bool, True),
    "firstpass_image": _opt(str | None, None),
}

TXT2IMG_EXTRA: dict[str, tuple[Any, Any]] = {
    "hr_checkpoint_name": _opt(str | None, None, "Not supported (reported in info.warnings)."),
    "firstphase_width": _opt(int, 0),
    "firstphase_height": _opt(int, 0),
}

Img2ImgRequest = create_model(
    "StableDiffusionImg2ImgProcessingAPI", __base__=ApiModel, **request_fields(set()), **COMMON_EXTRA, **IMG2IMG_EXTRA
)
Txt2ImgRequest = create_model(
    "StableDiffusionTxt2ImgProcessingAPI", __base__=ApiModel, **request_fields(IMG2IMG_ONLY), **COMMON_EXTRA,
    **TXT2IMG_EXTRA,
)  # fmt: skip

ENUM_FIELDS = {
    API_NAMES.get(name, name)
    for name, tp in typing.get_type_hints(GenerationRequest).items()
    if isinstance(tp, type) and issubclass(tp, IntEnum)
}
BOOL_ENUMS = {"inpaint_full_res": InpaintArea}


# --- responses and small requests ------------------------------------------------------------------


class ImageResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNGs with the infotext in their 'parameters' chunk.")
    parameters: dict[str, Any] = Field(description="The request, with init_images / mask / depth_image nulled.")
    info: str = Field(description="JSON string: A1111's Processed.js() keys (seed, all_seeds, infotexts, ...).")
    depth_images: list[str] = Field(
        default_factory=list, description="The depth map used for each image, as base64 16-bit PNG (white = near)."
    )


class ImageRequest(BaseModel):
    image: str = Field(description="Base64 image (optionally with a data:image/...;base64, prefix).")


class DepthResponse(BaseModel):
    depth_image: str = Field(description="MiDaS depth as a base64 16-bit grayscale PNG, white = near.")
    width: int
    height: int


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1")
    eta_relative: float = Field(description="Estimated seconds left.")
    state: ProgressState
    current_image: str | None = Field(default=None, description="The live preview, base64 PNG.")
    textinfo: str | None = None
    current_task: str | None = None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class ErrorResponse(BaseModel):
    detail: str
    error: str
