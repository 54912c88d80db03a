"""A1111's "parameters" text: writing it for an image and parsing it back into request fields.

    a prompt
    Negative prompt: a negative prompt
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 0123456789, ...

Values containing ``,``, ``:`` or ``"`` are JSON-quoted; keys with no value are left out.  Our own
keys (``Depth source``, ``Depth invert``) follow the same style.
"""

from __future__ import annotations

import json
import re
from typing import Any

from modules.core import samplers
from modules.core.request import INPAINT_AREA_LABELS, MASK_MODE_LABELS, MASKED_CONTENT_LABELS, GenerationRequest

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
VERSION = "sd2-depth-webui 0.1"


def quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def build(
    req: GenerationRequest,
    *,
    prompt: str,
    negative_prompt: str,
    seed: int,
    subseed: int,
    sampler: str,
    schedule: str,
    model_name: str,
    model_hash: str | None,
    clip_skip: int = 1,
    depth_source: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """The infotext of one image."""
    params: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": sampler,
        "Schedule type": schedule if schedule != "Automatic" else None,  # the label used (A1111's get_sigmas)
        "CFG scale": _num(req.cfg_scale),
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model_hash,
        "Model": model_name or None,
        "Variation seed": subseed if req.subseed_strength > 0 else None,
        "Variation seed strength": _num(req.subseed_strength) if req.subseed_strength > 0 else None,
        "Seed resize from": (
            f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
            if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0
            else None
        ),
        "Denoising strength": _num(req.denoising_strength) if req.is_img2img or req.enable_hr else None,
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "Eta": _num(req.eta) if req.eta is not None else None,
        "Depth source": depth_source,
        "Depth invert": True if depth_source == "uploaded map" and req.depth_invert else None,
    }
    if req.is_inpaint:
        params.update(
            {
                "Mask blur": req.mask_blur,
                "Mask mode": MASK_MODE_LABELS[req.inpainting_mask_invert] if req.inpainting_mask_invert else None,
                "Masked content": MASKED_CONTENT_LABELS[req.inpainting_fill],
                "Inpaint area": INPAINT_AREA_LABELS[req.inpaint_full_res] if req.inpaint_full_res else None,
                "Masked area padding": req.inpaint_full_res_padding if req.inpaint_full_res else None,
            }
        )
    if req.initial_noise_multiplier not in (None, 1.0):
        params["Noise multiplier"] = _num(req.initial_noise_multiplier)
    if req.enable_hr and not req.is_img2img:
        params.update(hires_params(req, sampler, schedule))
    params.update(extra or {})
    params["Version"] = VERSION
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    neg = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{neg}\n{line}"


def hires_params(req: GenerationRequest, sampler: str, schedule: str) -> dict[str, Any]:
    """A1111's hires. fix keys: "Hires upscale" or "Hires resize", steps, upscaler, and what differs."""
    resized = req.hr_resize_x > 0 or req.hr_resize_y > 0
    hr_sampler = req.hr_sampler_name if req.hr_sampler_name not in (None, "", "Use same sampler") else None
    hr_schedule = req.hr_scheduler if req.hr_scheduler not in (None, "", "Use same scheduler") else None
    return {
        "Hires upscale": None if resized else _num(req.hr_scale),
        "Hires resize": f"{req.hr_resize_x}x{req.hr_resize_y}" if resized else None,
        "Hires steps": req.hr_second_pass_steps or None,
        "Hires upscaler": req.hr_upscaler or "Latent",
        "Hires sampler": hr_sampler if hr_sampler and hr_sampler != sampler else None,
        "Hires schedule type": hr_schedule if hr_schedule and hr_schedule != schedule else None,
        "Hires prompt": req.hr_prompt if req.hr_prompt and req.hr_prompt != req.prompt else None,
        "Hires negative prompt": (
            req.hr_negative_prompt if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt else None
        ),
        "Hires CFG Scale": _num(req.hr_cfg) if req.hr_cfg is not None and req.hr_cfg != req.cfg_scale else None,
    }


def parse(text: str) -> dict[str, str]:
    """Infotext -> {"Prompt": ..., "Negative prompt": ..., key: value, ...} (values unquoted strings)."""
    lines = text.strip().split("\n")
    params_line = lines[-1] if len(_PARAM.findall(lines[-1])) >= 3 else None
    body = lines[:-1] if params_line is not None else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].lstrip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(params_line or ""):
        out[key.strip()] = unquote(value.strip())
    return out


_FIELDS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Denoising strength": ("denoising_strength", float),
    "Eta": ("eta", float),
    "Masked area padding": ("inpaint_full_res_padding", int),
    "Noise multiplier": ("initial_noise_multiplier", float),
    "Hires upscale": ("hr_scale", float),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Hires CFG Scale": ("hr_cfg", float),
}


def _sampler_and_schedule(sampler: str | None, schedule: str | None) -> dict[str, str]:
    """A1111's paste: an old "DPM++ 2M Karras" becomes Sampler + Schedule type; schedule names become labels."""
    out: dict[str, str] = {}
    if sampler and (found := samplers.split_sampler_name(sampler)) is not None:
        out["sampler_name"] = found[0].name
        if found[1] and schedule is None:
            out["scheduler"] = found[1]
    if schedule and (label := samplers.find_schedule(schedule)) is not None:
        out["scheduler"] = label.label
    return out


def to_request_fields(parsed: dict[str, str]) -> dict[str, Any]:
    """Parsed infotext -> GenerationRequest field values (and override_settings), best effort."""
    out: dict[str, Any] = {"prompt": parsed.get("Prompt", ""), "negative_prompt": parsed.get("Negative prompt", "")}
    for key, (name, kind) in _FIELDS.items():
        if key in parsed:
            try:
                out[name] = kind(parsed[key])
            except ValueError:
                continue
    if m := _SIZE.match(parsed.get("Size", "")):
        out["width"], out["height"] = int(m.group(1)), int(m.group(2))
    out.update(_sampler_and_schedule(out.get("sampler_name"), out.get("scheduler")))
    if m := _SIZE.match(parsed.get("Seed resize from", "")):
        out["seed_resize_from_w"], out["seed_resize_from_h"] = int(m.group(1)), int(m.group(2))
    if m := _SIZE.match(parsed.get("Hires resize", "")):
        out["hr_resize_x"], out["hr_resize_y"] = int(m.group(1)), int(m.group(2))
    if "Denoising strength" in parsed and any(k in parsed for k in ("Hires upscale", "Hires upscaler", "Hires resize")):
        out["enable_hr"] = True  # as A1111's paste: a txt2img picture made with hires. fix
    if "Mask blur" in parsed and parsed["Mask blur"].isdigit():
        out["mask_blur_x"] = out["mask_blur_y"] = int(parsed["Mask blur"])
    for key, name, labels in (
        ("Mask mode", "inpainting_mask_invert", MASK_MODE_LABELS),
        ("Masked content", "inpainting_fill", MASKED_CONTENT_LABELS),
        ("Inpaint area", "inpaint_full_res", INPAINT_AREA_LABELS),
    ):
        if parsed.get(key) in labels:
            out[name] = labels.index(parsed[key])
    if "Depth invert" in parsed:
        out["depth_invert"] = parsed["Depth invert"] == "True"
    if parsed.get("Tiling") == "True":
        out["tiling"] = True
    overrides = {}
    if "Clip skip" in parsed and parsed["Clip skip"].isdigit():
        overrides["CLIP_stop_at_last_layers"] = int(parsed["Clip skip"])
    if parsed.get("Model hash") or parsed.get("Model"):
        overrides["sd_model_checkpoint"] = parsed.get("Model hash") or parsed.get("Model")
    if overrides:
        out["override_settings"] = overrides
    return out
