"""Translation between A1111's JSON and our plain data: base64 images, GenerationRequest, the ``info`` JSON.

Nothing here touches the model; the routes call these, then ``service.generate``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from pydantic import BaseModel

from modules.core import depthmaps, images, infotext, samplers
from modules.core.errors import UserError, ValidationError
from modules.core.request import GenerationRequest, GenerationResult
from modules.core.settings import Settings, check_request_folders, summarise_names

from .models import API_NAMES, BOOL_ENUMS, ENUM_FIELDS, INDIRECT_FIELDS

_DATA_URL = re.compile(r"^data:[^,;]*(;[^,]*)?,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

# infotext keys that have their own place in `info`; the others go to extra_generation_params
_INFO_KEYS = {
    "Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "Version", "Denoising strength", "Variation seed", "Variation seed strength", "Seed resize from", "Clip skip",
}  # fmt: skip

# A1111 fields we accept but do not implement: (field, value that means "not asked for", what to say)
_UNSUPPORTED = [
    ("restore_faces", (None, False), "face restoration is not available here; ignored"),
    ("refiner_checkpoint", (None, "", "None"), "refiner checkpoints are not available here; ignored"),
    ("latent_mask", (None, ""), "latent_mask is not available here; ignored"),
    ("firstpass_image", (None, ""), "firstpass_image is not available here; ignored"),
    ("hr_checkpoint_name", (None, "", "Use same checkpoint"), "a hires. fix checkpoint is not available here; ignored"),
]


class ApiError(UserError):
    """An API-level refusal with A1111's status code (e.g. 404 "Init image not found")."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


# --- images ---------------------------------------------------------------------------------------


def decode_base64(data: str | None, field: str) -> bytes | None:
    """A1111's image strings -> bytes: plain base64 or a data: URL; http(s) URLs are refused, not fetched."""
    if data is None:
        return None
    if not isinstance(data, str):
        raise ValidationError(field, f"expected a base64 string, got {type(data).__name__}")
    text = data.strip()
    if not text:
        raise ValidationError(field, "empty image data")
    if text.lower().startswith(("http://", "https://", "file:", "ftp://")):
        raise ValidationError(
            field, "image URLs are not fetched (this server never downloads anything); send the image as base64"
        )
    m = _DATA_URL.match(text)
    if m:
        if "base64" not in (m.group(1) or "").lower():
            raise ValidationError(field, "only base64 data: URLs are accepted")
        text = text[m.end() :]
    text = _WHITESPACE.sub("", text)
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValidationError(field, f"not valid base64 ({e})") from e
    if not raw:
        raise ValidationError(field, "empty image data")
    return raw


def encode_png_base64(arr: np.ndarray, infotext_text: str | None = None) -> str:
    """uint8 image -> base64 PNG (no data: prefix, as A1111) carrying the infotext."""
    return base64.b64encode(images.encode_image(arr, infotext_text, "png")).decode("ascii")


def encode_depth_base64(depth01: np.ndarray) -> str:
    """float [0, 1] depth -> base64 16-bit grayscale PNG."""
    return base64.b64encode(depthmaps.depth_png16(depth01)).decode("ascii")


# --- text -----------------------------------------------------------------------------------------


def check_unicode(value: Any, field: str) -> None:
    """Refuse text that cannot be encoded: an unpaired surrogate ("\\ud800" is valid JSON), anywhere in `value`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValidationError(
                field, f"contains an unpaired surrogate (invalid Unicode) at position {e.start}"
            ) from e
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key, field)
            check_unicode(item, f"{field}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_unicode(item, f"{field}[{i}]")


# --- names ----------------------------------------------------------------------------------------


def check_checkpoint_name(name: Any, field: str) -> str:
    """Refuse what is not a checkpoint name from the list (paths outside the model folders, non-strings)."""
    if not isinstance(name, str):
        raise ValidationError(field, f"expected a checkpoint name, got {name!r}")
    parts = re.split(r"[\\/]", name)
    if (
        "\0" in name
        or ".." in parts
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or name.startswith("~")
    ):
        raise ValidationError(
            field,
            f"{name!r} is not a checkpoint name: names are looked up in /sdapi/v1/sd-models, never opened as paths",
        )
    return name


def canonical_schedule(name: str) -> str:
    """A schedule type by label or by /schedulers name ("automatic", "karras") -> its label; others unchanged."""
    wanted = name.strip().lower().replace("_", " ")
    return next((label for label in samplers.SCHEDULE_TYPES if label.lower() == wanted), name)


def resolve_sampler(name: str | None, scheduler: str | None) -> tuple[samplers.SamplerSpec, str]:
    """A1111's ``get_sampler_and_scheduler``: a name, alias or old "<sampler> Karras" name -> (spec, schedule).

    A schedule type A1111 would not know is passed on as sent: the job falls back to Automatic and says
    so in ``info.warnings`` (A1111 1.9+ accepts it too); an unknown sampler is a 400.
    """
    found = samplers.split_sampler_name((name or "").strip() or "Euler a")
    if found is None:
        raise ApiError(400, f"Sampler not found: {name!r}; known: {', '.join(samplers.sampler_names())}")
    spec, from_name = found
    known = samplers.find_schedule(scheduler)
    schedule = known.label if known is not None else str(scheduler)
    if from_name is not None and schedule == "Automatic":
        schedule = from_name
    return spec, schedule


# --- requests -------------------------------------------------------------------------------------


def apply_infotext(body: BaseModel, warnings: list[str], known_checkpoint) -> None:
    """A1111's ``infotext`` field: fill the fields the request does not set from the pasted text."""
    text = getattr(body, "infotext", None)
    if not text:
        return
    values = infotext.to_request_fields(infotext.parse(text))
    overrides = values.pop("override_settings", {})
    fields = type(body).model_fields
    for name, value in values.items():
        api_name = API_NAMES.get(name, name)
        if api_name in fields and api_name not in body.model_fields_set:
            setattr(body, api_name, value)
    ckpt = overrides.pop("sd_model_checkpoint", None)
    if ckpt and not known_checkpoint(ckpt):
        warnings.append(
            f"infotext names the model {ckpt!r}, which is not in the checkpoint list; using the current one"
        )
        ckpt = None
    if ckpt:
        overrides["sd_model_checkpoint"] = ckpt
    merged = dict(overrides)
    merged.update(body.override_settings or {})
    body.override_settings = merged


def check_override_settings(values: dict[str, Any], settings: Settings, warnings: list[str]) -> dict[str, Any]:
    """Known options validated (422 naming the option); unknown ones dropped with a warning (A1111 ignores them)."""
    known = set(Settings.field_names())
    kept = {k: v for k, v in (values or {}).items() if k in known}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        warnings.append(f"override_settings: unknown options ignored: {summarise_names(unknown)}")
    if "sd_model_checkpoint" in kept:
        check_checkpoint_name(kept["sd_model_checkpoint"], "override_settings.sd_model_checkpoint")
    try:
        check_request_folders(kept)
        settings.override(kept)
    except ValidationError as e:
        raise ValidationError(f"override_settings.{e.field}", e.message) from e
    return kept


def unsupported_warnings(body: BaseModel) -> list[str]:
    """What the request asks for that this program does not do (accepted so A1111 clients still work)."""
    out = []
    for field, idle, message in _UNSUPPORTED:
        value = getattr(body, field, None)
        if value not in idle:
            out.append(f"{field}: {message}")
    if body.model_extra:
        out.append(f"unknown fields ignored: {summarise_names(sorted(body.model_extra))}")
    return out


def _enum_value(value: Any, field: str) -> Any:
    """A1111 accepts booleans for index fields (pydantic v1 coerced them); the request validates the rest."""
    if isinstance(value, bool):
        return BOOL_ENUMS[field](int(value)) if field in BOOL_ENUMS else int(value)
    return value


def to_generation_request(body: BaseModel, *, img2img: bool) -> GenerationRequest:
    """The API request -> GenerationRequest (images decoded from base64, A1111's API-only fields applied)."""
    values: dict[str, Any] = {}
    for name in GenerationRequest.field_names():
        if name in INDIRECT_FIELDS:
            continue
        api_name = API_NAMES.get(name, name)
        if api_name in type(body).model_fields:
            value = getattr(body, api_name)
            values[name] = _enum_value(value, api_name) if api_name in ENUM_FIELDS else value
    if img2img:
        values["init_images"] = [decode_base64(x, f"init_images[{i}]") for i, x in enumerate(body.init_images or [])]
        values["mask"] = decode_base64(body.mask, "mask") if body.mask else None
        if body.mask_blur is not None:
            values["mask_blur_x"] = values["mask_blur_y"] = body.mask_blur
    values["depth_map"] = decode_base64(body.depth_image, "depth_image") if body.depth_image else None
    spec, schedule = resolve_sampler(body.sampler_name or body.sampler_index, body.scheduler)
    values["sampler_name"], values["scheduler"] = spec.name, schedule
    values["extension_args"] = extension_args(body.alwayson_scripts or {})
    values["override_settings"] = dict(body.override_settings or {})
    values["tiling"] = bool(body.tiling)  # null: not asked
    values["styles"] = list(body.styles or [])
    save = bool(body.save_images) and not body.do_not_save_samples
    values["save_images"] = save
    values["save_grid"] = save and not body.do_not_save_grid
    _scripts(body, values)
    return GenerationRequest(**values)


def extension_args(alwayson: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``alwayson_scripts`` -> ``extension_args``: A1111's ``{"args": {...}}`` wrapper is unwrapped when it holds names."""
    out = {}
    for name, value in alwayson.items():
        inner = value.get("args") if set(value) == {"args"} else None
        out[name] = dict(inner) if isinstance(inner, dict) else dict(value)
    return out


def _scripts(body: BaseModel, values: dict[str, Any]) -> None:
    """``script_name`` / ``script_args``: arguments by name only (an unknown script is a 422 from ``process``)."""
    name = body.script_name or None
    args = body.script_args
    values["script_name"] = name
    if isinstance(args, list):
        if args and name:
            raise ValidationError(
                "script_args", "this server takes script arguments by name (an object), not a positional list"
            )
        args = {}
    values["script_args"] = dict(args or {}) if name else {}


# --- responses ------------------------------------------------------------------------------------


def parameters_echo(body: BaseModel, include_images: bool) -> dict[str, Any]:
    """A1111's ``parameters``: the request, with the (large) images nulled unless asked for."""
    out = body.model_dump()
    if not include_images:
        for key in ("init_images", "mask", "depth_image"):
            if key in out:
                out[key] = None
    return out


def info_dict(
    req: GenerationRequest, result: GenerationResult, *, clip_skip: int, styles: list[str], warnings: list[str]
) -> dict[str, Any]:
    """A1111's ``Processed.js()`` keys for one finished job (plus ``warnings`` and ``interrupted``)."""
    seeds = result.seeds or [req.seed]
    subseeds = result.subseeds or [req.subseed]
    first = infotext.parse(result.infotexts[0]) if result.infotexts else {}
    extra = {k: v for k, v in first.items() if k not in _INFO_KEYS}
    return {
        "prompt": req.prompt,
        "all_prompts": result.prompts or [req.prompt],
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": result.negative_prompts or [req.negative_prompt],
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": req.subseed_strength,
        "width": result.width or req.width,
        "height": result.height or req.height,
        "sampler_name": req.sampler_name,
        "scheduler": req.scheduler,
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_name or None,
        "sd_model_hash": result.model_hash or None,
        "sd_vae_name": first.get("VAE"),
        "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": req.denoising_strength if req.is_img2img else None,
        "extra_generation_params": extra,
        "index_of_first_image": 1
        if result.grid is not None and result.images and result.images[0] is result.grid
        else 0,
        "infotexts": list(result.infotexts),
        "styles": list(styles or []),
        "job_timestamp": result.job_timestamp,
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": infotext.VERSION,
        "interrupted": result.interrupted,
        "warnings": list(warnings) + list(result.warnings),
    }


def info_json(info: dict[str, Any]) -> str:
    return json.dumps(info, ensure_ascii=False, default=str)
