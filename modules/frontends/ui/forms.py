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
from modules.frontends.ui.safe_inputs import check_pil, read_image_bytes

MODES = ("txt2img", "img2img", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload")
# which extension tab ("txt2img", "img2img", "inpaint") a mode belongs to: scripts and UI sections are per tab
MODE_TABS = {"txt2img": "txt2img", "img2img": "img2img", "sketch": "img2img", "inpaint": "inpaint",
             "inpaint_sketch": "inpaint", "inpaint_upload": "inpaint", "batch": "img2img"}  # fmt: skip
RESIZE_TO, RESIZE_BY = "Resize to", "Resize by"
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


def editor_image_and_mask(editor: Any, *, sketch: bool = False) -> tuple[bytes, bytes]:
    """An ImageMask / ImageEditor value ({background, layers, composite}) -> (image PNG, mask PNG white-on-black).

    Inpaint: the background is the image and the strokes the mask; Inpaint sketch (`sketch`): the image is
    the composite (the colour strokes painted into it) and the strokes are the mask as well."""
    canvas = "Inpaint sketch" if sketch else "Inpaint"
    editor = check_pil(editor, f"the {canvas} image")
    background = _as_pil(check_pil((editor or {}).get("background"), f"the {canvas} image"))
    if background is None:
        raise ValidationError("init_images", f"upload an image into the {canvas} canvas first")
    mask = mask_from_layers(editor.get("layers") or [], background.size)
    if not mask.any():
        raise ValidationError("mask", "paint over the part of the image to repaint (the mask is empty)")
    picture = _as_pil(editor.get("composite")) if sketch else background
    return png_bytes((picture or background).convert("RGB") if sketch else background), png_bytes(mask)


def sketch_image(editor: Any) -> bytes:
    """The Sketch canvas: the picture with the colour strokes painted into it (the composite), as PNG."""
    editor = check_pil(editor, "the Sketch image")
    background = _as_pil(check_pil((editor or {}).get("background"), "the Sketch image"))
    if background is None:
        raise ValidationError("init_images", "upload an image into the Sketch canvas first")
    composite = _as_pil(editor.get("composite")) or background
    return png_bytes(composite.convert("RGB"))


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
    data = read_image_bytes(values.get("depth_map"), "the depth map") if wanted else None
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
        image = read_image_bytes(values.get("init_image"), "the init image")
        if image is None:
            raise ValidationError("init_images", "upload an image for img2img (or use the txt2img tab)")
        return {"init_images": [image]}
    if mode == "inpaint":
        image, mask = editor_image_and_mask(values.get("inpaint_editor"))
        return {"init_images": [image], "mask": mask, **inpaint_fields(values)}
    if mode == "sketch":
        return {"init_images": [sketch_image(values.get("sketch_editor"))]}
    if mode == "inpaint_sketch":
        image, mask = editor_image_and_mask(values.get("inpaint_sketch_editor"), sketch=True)
        return {"init_images": [image], "mask": mask, **inpaint_fields(values)}
    image = read_image_bytes(values.get("inpaint_image"), "the image to inpaint")
    mask = read_image_bytes(values.get("inpaint_mask"), "the mask")
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
    fields["tiling"] = bool(values.get("tiling", False))
    fields["styles"] = [str(s) for s in values.get("styles") or []]
    return fields


def img2img_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Resize mode and denoising strength."""
    return {
        "resize_mode": _label_index(values.get("resize_mode", 0), RESIZE_MODE_LABELS, "resize_mode"),
        "denoising_strength": float(values.get("denoising_strength", 0.75)),
    }


def scale_of(values: dict[str, Any]) -> float:
    scale = float(values.get("resize_scale") or 1.0)
    if not 0.05 <= scale <= 8.0:
        raise ValidationError("resize_scale", f"{scale:g} is outside 0.05-8")
    return scale


def scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A1111's "Resize by": the image's size times the scale, to a multiple of 8 (at least 64)."""
    return tuple(max(64, int(round(v * scale / 8)) * 8) for v in size)  # type: ignore[return-value]


def scaled_size(values: dict[str, Any], image: bytes) -> dict[str, int]:
    """Width / height from the "Resize by" sub-tab (the init image's size x scale); nothing for "Resize to"."""
    if values.get("resize_tab") != RESIZE_BY:
        return {}
    with Image.open(io.BytesIO(image)) as img:
        width, height = scaled(img.size, scale_of(values))
    return {"width": width, "height": height}


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
        fields.update(scaled_size(values, fields["init_images"][0]))
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
