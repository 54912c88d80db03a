"""The Extras tab's postprocessing (A1111's ``postprocessing_upscale``): upscale pictures, keep their infotext.

For each image: Upscaler 1 by ``upscaling_resize`` ("Resize by") or to ``upscaling_resize_w`` x
``upscaling_resize_h`` ("Resize to": the scale that covers both sides, then, with ``upscaling_crop``,
centred on a canvas of exactly that size); Upscaler 2 the same way, blended in with its visibility.
``None`` as Upscaler 1 leaves the picture as it is.  The picture's own ``parameters`` infotext is
kept and a ``postprocessing`` text is added (``Postprocess upscale by: 2, Postprocess upscaler:
Lanczos``), as A1111 writes them.  Face restoration is not available here.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from modules.core import images, infotext
from modules.core.errors import ValidationError
from modules.core.settings import Settings
from modules.models.upscaling import UpscalerRegistry

SCALE_BY, SCALE_TO = 0, 1
NONE = "None"


@dataclass
class ExtrasParams:
    """A1111's ``ExtrasBaseRequest`` fields that this program does something with."""

    resize_mode: int = SCALE_BY  # 0: Resize by (upscaling_resize), 1: Resize to (w x h)
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    extras_upscaler_1: str = NONE
    extras_upscaler_2: str = NONE
    extras_upscaler_2_visibility: float = 0.0

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ExtrasParams:
        """Known fields from `values` (others ignored), each checked; a bad one is a ValidationError naming it."""
        p = cls(**{f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None})
        if p.resize_mode not in (SCALE_BY, SCALE_TO) or isinstance(p.resize_mode, bool):
            raise ValidationError("resize_mode", f"{p.resize_mode!r} is not 0 (resize by) or 1 (resize to)")
        _range(p, "upscaling_resize", 0.01, 16.0)
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            _range(p, name, 1, 16384, whole=True)
        _range(p, "extras_upscaler_2_visibility", 0.0, 1.0)
        for name in ("extras_upscaler_1", "extras_upscaler_2"):
            if not isinstance(getattr(p, name), str):
                raise ValidationError(name, f"expected an upscaler name, got {getattr(p, name)!r}")
        return p


def _range(p: ExtrasParams, name: str, lo: float, hi: float, *, whole: bool = False) -> None:
    v = getattr(p, name)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or (whole and int(v) != v):
        raise ValidationError(name, f"expected a {'whole ' if whole else ''}number, got {v!r}")
    if not lo <= v <= hi:
        raise ValidationError(name, f"{v} is outside {lo}..{hi}")
    setattr(p, name, int(v) if whole else float(v))


@dataclass
class ExtrasImage:
    """One postprocessed picture: pixels, its PNG (both texts in it), the kept and the added text."""

    name: str
    image: np.ndarray
    png: bytes
    parameters: str | None  # the picture's own infotext, unchanged
    postprocessing: str  # "Postprocess upscale by: 2, Postprocess upscaler: ..." ("" when nothing was done)
    saved_path: str | None = None


@dataclass
class ExtrasResult:
    images: list[ExtrasImage] = field(default_factory=list)

    @property
    def html_info(self) -> str:
        """A1111's ``html_info``: the last picture's postprocessing text as HTML."""
        text = self.images[-1].postprocessing if self.images else ""
        return f"<p>{html.escape(text)}</p>" if text else ""


@dataclass
class Upscaling:
    """The registry and the settings an upscale runs with."""

    registry: UpscalerRegistry
    tile: int = 192
    overlap: int = 8
    interrupted: Callable[[], bool] | None = None


def _upscale_once(img: Image.Image, name: str, p: ExtrasParams, up: Upscaling, info: dict[str, Any]) -> Image.Image:
    if p.resize_mode == SCALE_TO:
        scale = max(p.upscaling_resize_w / img.width, p.upscaling_resize_h / img.height)
        info["Postprocess upscale to"] = f"{p.upscaling_resize_w}x{p.upscaling_resize_h}"
    else:
        scale = p.upscaling_resize
        info["Postprocess upscale by"] = infotext.quote(f"{scale:g}")
    out = up.registry.upscale(img, name, scale=scale, tile=up.tile, overlap=up.overlap, interrupted=up.interrupted)
    if p.resize_mode == SCALE_TO and p.upscaling_crop:
        canvas = Image.new("RGB", (p.upscaling_resize_w, p.upscaling_resize_h))
        canvas.paste(out, (p.upscaling_resize_w // 2 - out.width // 2, p.upscaling_resize_h // 2 - out.height // 2))
        out = canvas
        info["Postprocess crop to"] = f"{out.width}x{out.height}"
    return out


def upscale_picture(img: Image.Image, p: ExtrasParams, up: Upscaling) -> tuple[Image.Image, dict[str, Any]]:
    """Upscaler 1 (and Upscaler 2 blended in); returns the picture and the postprocessing fields."""
    info: dict[str, Any] = {}
    if p.extras_upscaler_1 in ("", NONE):
        return img, info
    up.registry.get(p.extras_upscaler_1)  # unknown names fail before any work
    out = _upscale_once(img, p.extras_upscaler_1, p, up, info)
    info["Postprocess upscaler"] = p.extras_upscaler_1
    if p.extras_upscaler_2 not in ("", NONE) and p.extras_upscaler_2_visibility > 0:
        second = _upscale_once(img, p.extras_upscaler_2, p, up, info)
        if second.size != out.size:
            second = second.resize(out.size, Image.Resampling.LANCZOS)
        out = Image.blend(out, second, p.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = p.extras_upscaler_2
    return out, info


def encode_png(img: Image.Image, parameters: str | None, postprocessing: str) -> bytes:
    meta = PngImagePlugin.PngInfo()
    if parameters:
        meta.add_text("parameters", parameters)
    if postprocessing:
        meta.add_text("postprocessing", postprocessing)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=meta)
    return buf.getvalue()


def run(items: list[tuple[str, bytes]], p: ExtrasParams, up: Upscaling, settings: Settings, *,
        save_to: Path | None = None) -> ExtrasResult:  # fmt: skip
    """Postprocess each (name, encoded image); with `save_to` (a folder) the PNGs are written there too."""
    if p.extras_upscaler_2 not in ("", NONE):
        up.registry.get(p.extras_upscaler_2)
    result = ExtrasResult()
    for i, (name, data) in enumerate(items):
        label = name or f"image {i}"
        img = images.decode_image(data, label, max_pixels=settings.max_input_pixels,
                                  background=settings.img2img_background_color)  # fmt: skip
        parameters = images.read_infotext(data)
        out, info = upscale_picture(img, p, up)
        text = ", ".join(f"{k}: {v}" for k, v in info.items())
        png = encode_png(out, parameters, text)
        item = ExtrasImage(name, np.asarray(out), png, parameters, text)
        if save_to is not None:
            stem = Path(name).stem if name else ""
            path = images.save_image(item.image, save_to, seed=0, prompt="", infotext=None, pattern=stem or "extras",
                                     subdir_pattern=None, data=png)  # fmt: skip
            item.saved_path = str(path)
        result.images.append(item)
    return result
