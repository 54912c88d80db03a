"""Errors in the UI's words: a request field's API name becomes the label a person sees on the page.

``ValidationError`` carries A1111's API field name (``init_images``, ``n_iter``); the API shows it as it
is, the UI shows the control's label instead ("the init image: ...", "Batch count: ...").  A depth
checkpoint asked for txt2img without a depth map also says where to give one.
"""

from __future__ import annotations

import dataclasses
import logging

from modules.core.errors import UserError, ValidationError
from modules.core.settings import Settings

log = logging.getLogger(__name__)

FIELD_LABELS = {
    "init_images": "the init image", "mask": "the mask", "depth_map": "the depth map", "prompt": "Prompt",
    "negative_prompt": "Negative prompt", "steps": "Sampling steps", "sampler_name": "Sampling method",
    "scheduler": "Schedule type", "width": "Width", "height": "Height", "n_iter": "Batch count",
    "batch_size": "Batch size", "cfg_scale": "CFG Scale", "denoising_strength": "Denoising strength",
    "seed": "Seed", "subseed": "Variation seed", "subseed_strength": "Variation strength",
    "seed_resize_from_w": "Resize seed from width", "seed_resize_from_h": "Resize seed from height",
    "resize_mode": "Resize mode", "mask_blur_x": "Mask blur", "mask_blur_y": "Mask blur", "mask_blur": "Mask blur",
    "inpainting_mask_invert": "Mask mode", "inpainting_fill": "Masked content", "inpaint_full_res": "Inpaint area",
    "inpaint_full_res_padding": "Only masked padding", "script_name": "Script", "script_args": "the script",
    "hr_upscaler": "Hires. fix upscaler", "hr_scale": "Upscale by", "hr_second_pass_steps": "Hires steps",
    "hr_resize_x": "Resize width to", "hr_resize_y": "Resize height to", "hr_sampler_name": "Hires sampling method",
    "hr_scheduler": "Hires schedule type", "hr_cfg": "Hires CFG Scale", "override_settings": "the settings",
    "extension_args": "an extension's controls", "batch_input_dir": "Input directory",
    "batch_output_dir": "Output directory", "batch_mask_dir": "Inpaint batch mask directory",
    "batch_depth_dir": "Depth map directory", "resize_scale": "Scale",
}  # fmt: skip

DEPTH_HINT = (
    " Give one under Depth -> Depth map (upload) on this tab, use the img2img tab (MiDaS estimates the depth "
    "from the image), or pick a base (non-depth) checkpoint at the top for plain txt2img."
)
_DEPTH_NEEDED = "needs an input image or a depth map"


def label_of(field: str) -> str:
    """The label of the control behind a request field (``override_settings.x`` -> the setting x)."""
    if field in FIELD_LABELS:
        return FIELD_LABELS[field]
    if field.startswith("override_settings."):
        return f"the setting {field.split('.', 1)[1]}"
    return field.replace("_", " ")


def user_message(error: UserError, tab: str = "") -> str:
    """What the red error area says for a refusal: labels, not API field names; the depth hint in txt2img."""
    if isinstance(error, ValidationError):
        text = f"{label_of(error.field)}: {error.message}"
    else:
        text = str(error)
    if _DEPTH_NEEDED in text and tab == "txt2img":
        text = text.rstrip(".") + "." + DEPTH_HINT
    return text


def failure_message(error: Exception, script: str | None = None, tab: str = "") -> str:
    """An error for people: a UserError in the UI's words; anything else named, with the script that raised it."""
    if isinstance(error, UserError):
        return user_message(error, tab)
    log.error("generation failed", exc_info=error)
    text = f"{type(error).__name__}: {error}"
    return f"the script {script!r} failed: {text}" if script else text


def setting_message(error: UserError) -> str:
    """A refused setting named by its label in the Settings tab (the name in brackets, for the API)."""
    if isinstance(error, ValidationError):
        labels = {f.name: f.metadata.get("label", f.name) for f in dataclasses.fields(Settings)}
        if error.field in labels:
            return f"{labels[error.field]} ({error.field}): {error.message}"
    return str(error)
