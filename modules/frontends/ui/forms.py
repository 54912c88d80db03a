"""From what the Gradio controls hold to a ``GenerationRequest`` (and back, for PNG Info), without Gradio.

Everything here is a pure function over plain values: control values keyed by name (mostly the
request's own field names), file paths and PIL images from Gradio's components.  The event
handlers call these, and the unit tests call them directly.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modules.core import infotext
from modules.core.errors import ValidationError
from modules.core.request import (
    INPAINT_AREA_LABELS,
    MASK_MODE_LABELS,
    MASKED_CONTENT_LABELS,
    RESIZE_MODE_LABELS,
    GenerationRequest,
)
from modules.frontends.ui.hires import hires_fields

MODES = ("txt2img", "img2img", "inpaint", "inpaint_upload")
# which extension tab ("txt2img", "img2img", "inpaint") a mode belongs to: scripts and UI sections are per tab
MODE_TABS = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "inpaint", "inpaint_upload": "inpaint",
             "batch": "img2img"}  # fmt: skip
NO_SCRIPT = "None"
DEPTH_MIDAS = "MiDaS (estimate from the image)"
DEPTH_UPLOAD = "Depth map (upload)"
DEPTH_SOURCES = [DEPTH_MIDAS, DEPTH_UPLOAD]

# request fields copied as they are from the controls of the same name
_COMMON = ("prompt", "negative_prompt", "sampler_name", "scheduler", "cfg_scale")
_WHOLE = ("steps", "width", "height", "n_iter", "batch_size", "seed")


# --- images ---------------------------------------------------------------------------------------


def file_bytes(path: str | Path | None) -> bytes | None:
    """The bytes of an uploaded file (Gradio hands uploads over as paths), or None when nothing is there."""
    if not path:
        return None
    return Path(path).read_bytes()


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """A PIL image or uint8 array as PNG bytes (alpha kept)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _as_pil(image: Any) -> Image.Image | None:
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, str | Path):
        with Image.open(image) as img:
            img.load()
            return img.copy()
    return Image.fromarray(np.asarray(image))


def mask_from_layers(layers: list[Any], size: tuple[int, int]) -> np.ndarray:
    """Painted layers (RGBA, strokes on transparency) -> uint8 mask HxW at `size` (W, H), 255 = repaint."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    for layer in layers or []:
        img = _as_pil(layer)
        if img is None:
            continue
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            alpha = np.asarray(img.convert("RGBA"))[..., 3]
        else:  # a layer without alpha: its bright pixels are the strokes
            alpha = np.asarray(img.convert("L"))
        painted = Image.fromarray(np.where(alpha > 0, 255, 0).astype(np.uint8))
        if painted.size != size:
            painted = painted.resize(size, Image.Resampling.NEAREST)
        mask = np.maximum(mask, np.asarray(painted))
    return mask


def editor_image_and_mask(editor: dict[str, Any] | None) -> tuple[bytes, bytes]:
    """An ImageMask value ({background, layers, composite}) -> (image PNG, mask PNG white-on-black)."""
    background = _as_pil((editor or {}).get("background"))
    if background is None:
        raise ValidationError("init_images", "upload an image into the Inpaint canvas first")
    mask = mask_from_layers(editor.get("layers") or [], background.size)
    if not mask.any():
        raise ValidationError("mask", "paint over the part of the image to repaint (the mask is empty)")
    return png_bytes(background), png_bytes(mask)


# --- the request ----------------------------------------------------------------------------------


def _label_index(value: Any, labels: list[str], field: str) -> int:
    if isinstance(value, int) and 0 <= value < len(labels):
        return value
    if value in labels:
        return labels.index(value)
    raise ValidationError(field, f"{value!r} is not one of {', '.join(labels)}")


def _whole(values: dict[str, Any], name: str, default: int) -> int:
    v = values.get(name, default)
    if v is None:
        return default
    if isinstance(v, float) and not v.is_integer():
        raise ValidationError(name, f"expected a whole number, got {v}")
    return int(v)


def _seed_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Variation seed and seed resize, only while the "Extra" box is ticked (as in A1111)."""
    if not values.get("seed_extra"):
        return {"subseed": -1, "subseed_strength": 0.0, "seed_resize_from_w": -1, "seed_resize_from_h": -1}
    w, h = _whole(values, "seed_resize_from_w", 0), _whole(values, "seed_resize_from_h", 0)
    return {
        "subseed": _whole(values, "subseed", -1),
        "subseed_strength": float(values.get("subseed_strength") or 0.0),
        "seed_resize_from_w": w if w > 0 and h > 0 else -1,
        "seed_resize_from_h": h if w > 0 and h > 0 else -1,
    }


def depth_fields(values: dict[str, Any], *, required: bool) -> dict[str, Any]:
    """The user's depth map when "Depth source" says so (txt2img: whenever one is given)."""
    wanted = values.get("depth_source", DEPTH_MIDAS) == DEPTH_UPLOAD or not required
    data = file_bytes(values.get("depth_map")) if wanted else None
    if required and values.get("depth_source") == DEPTH_UPLOAD and data is None:
        raise ValidationError("depth_map", 'upload a depth map, or set "Depth source" to MiDaS')
    return {"depth_map": data, "depth_invert": bool(values.get("depth_invert")) and data is not None}


def inpaint_fields(values: dict[str, Any]) -> dict[str, Any]:
    blur = _whole(values, "mask_blur", 4)
    return {
        "mask_blur_x": blur,
        "mask_blur_y": blur,
        "inpainting_mask_invert": _label_index(values.get("mask_mode", 0), MASK_MODE_LABELS, "inpainting_mask_invert"),
        "inpainting_fill": _label_index(values.get("masked_content", 1), MASKED_CONTENT_LABELS, "inpainting_fill"),
        "inpaint_full_res": _label_index(values.get("inpaint_area", 0), INPAINT_AREA_LABELS, "inpaint_full_res"),
        "inpaint_full_res_padding": _whole(values, "inpaint_full_res_padding", 32),
    }


def _init_fields(mode: str, values: dict[str, Any]) -> dict[str, Any]:
    """init_images / mask for the img2img sub-tab in use."""
    if mode == "img2img":
        image = file_bytes(values.get("init_image"))
        if image is None:
            raise ValidationError("init_images", "upload an image for img2img (or use the txt2img tab)")
        return {"init_images": [image]}
    if mode == "inpaint":
        image, mask = editor_image_and_mask(values.get("inpaint_editor"))
        return {"init_images": [image], "mask": mask, **inpaint_fields(values)}
    image, mask = file_bytes(values.get("inpaint_image")), file_bytes(values.get("inpaint_mask"))
    if image is None:
        raise ValidationError("init_images", "upload the image to inpaint")
    if mask is None:
        raise ValidationError("mask", "upload a mask (white = repaint) of the same size as the image")
    return {"init_images": [image], "mask": mask, **inpaint_fields(values)}


def script_tab(mode: str, *, inpaint: bool = False) -> str:
    """The extension tab of `mode` (a batch with a mask folder is an inpaint batch)."""
    return "inpaint" if inpaint else MODE_TABS[mode]


def script_fields(values: dict[str, Any], available: list[str] | None) -> dict[str, Any]:
    """script_name / script_args for the script chosen in the "Script" dropdown ("None": a plain generation)."""
    title = values.get("script_name") or NO_SCRIPT
    if title == NO_SCRIPT:
        return {}
    if available is not None and title not in available:
        offered = ", ".join(available) or "none"
        raise ValidationError("script_name", f"the script {title!r} is not available here (available: {offered})")
    args = (values.get("script_args") or {}).get(title) or {}
    return {"script_name": title, "script_args": dict(args)}


def extension_args(values: dict[str, Any], tab: str) -> dict[str, dict[str, Any]]:
    """{extension name: {arg: value}} from the extension sections shown in `tab` ("*" sections: every tab)."""
    out: dict[str, dict[str, Any]] = {}
    for section_tab, extension, args in values.get("extension_sections") or []:
        if section_tab in ("*", tab):
            out.setdefault(extension, {}).update(args)
    return out


def generation_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Prompt, sampling, size, batch, seed: what every mode reads."""
    fields: dict[str, Any] = {name: values[name] for name in _COMMON if name in values}
    defaults = GenerationRequest()
    fields.update({name: _whole(values, name, getattr(defaults, name)) for name in _WHOLE})
    fields.update(_seed_fields(values))
    return fields


def img2img_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Resize mode and denoising strength."""
    return {
        "resize_mode": _label_index(values.get("resize_mode", 0), RESIZE_MODE_LABELS, "resize_mode"),
        "denoising_strength": float(values.get("denoising_strength", 0.75)),
    }


def build_request(mode: str, values: dict[str, Any], *, scripts: list[str] | None = None) -> GenerationRequest:
    """The request for one press of Generate on the `mode` tab, from the controls' values (validated).

    ``values`` may also hold "script_name" (the Script dropdown), "script_args" ({script title: {arg: value}})
    and "extension_sections" ([(tab, extension name, {arg: value})]); `scripts` are the titles offered there.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    fields = generation_fields(values)
    if mode == "txt2img":
        fields.update(depth_fields(values, required=False))
        fields.update(hires_fields(values))
    else:
        fields.update(_init_fields(mode, values))
        fields.update(depth_fields(values, required=True))
        fields.update(img2img_fields(values))
    fields.update(script_fields(values, scripts))
    fields["extension_args"] = extension_args(values, script_tab(mode))
    return GenerationRequest(**fields).validate()


# --- PNG Info -> controls -------------------------------------------------------------------------

_LABELLED = {
    "inpainting_mask_invert": ("mask_mode", MASK_MODE_LABELS),
    "inpainting_fill": ("masked_content", MASKED_CONTENT_LABELS),
    "inpaint_full_res": ("inpaint_area", INPAINT_AREA_LABELS),
}


def infotext_to_values(text: str) -> dict[str, Any]:
    """A1111 infotext -> control values by control name (only what the text names)."""
    if not text or not text.strip():
        return {}
    fields = infotext.to_request_fields(infotext.parse(text))
    fields.pop("override_settings", None)
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _LABELLED:
            control, labels = _LABELLED[name]
            out[control] = labels[value]
        elif name == "mask_blur_x":
            out["mask_blur"] = value
        elif name in ("mask_blur_y", "eta", "initial_noise_multiplier"):
            continue
        else:
            out[name] = value
    if out.get("subseed_strength"):
        out["seed_extra"] = True
    if "seed_resize_from_w" in out:
        out["seed_extra"] = True
    return out
