"""img2img's size, as A1111's: "Resize to" (width / height, 📐 copies the image's size) and "Resize by"
(a scale slider, with the size it gives shown under it).  Which sub-tab is open goes to the request as
``resize_tab`` (``forms.scaled_size`` computes the size from the init image for "Resize by")."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.frontends.ui import forms
from modules.frontends.ui.safe_inputs import Unreadable

IMAGE_FIELDS = {"img2img": "init_image", "sketch": "sketch_editor", "inpaint": "inpaint_editor",
                "inpaint_sketch": "inpaint_sketch_editor", "inpaint_upload": "inpaint_image"}  # fmt: skip


def size_of(value: Any) -> tuple[int, int] | None:
    """(width, height) of an image control's value: a path, a PIL image or an editor's dict."""
    if isinstance(value, dict):
        value = value.get("background")
    if value is None or isinstance(value, Unreadable):
        return None
    if isinstance(value, Image.Image):
        return value.size
    try:
        with Image.open(io.BytesIO(Path(value).read_bytes())) as img:
            return img.size
    except (OSError, ValueError):
        return None


def scale_text(mode: str, scale: float, images: dict[str, Any]) -> str:
    """The line under the Scale slider: "Resize by 1.5: 192x128 -> 288x192"."""
    size = size_of(images.get(IMAGE_FIELDS.get(mode, "init_image")))
    if size is None:
        return '<p class="sd-note" id="resize_by_result">Upload an image to see the size it becomes.</p>'
    new = forms.scaled(size, float(scale or 1.0))
    return f'<p class="sd-note" id="resize_by_result">Resize by {float(scale):g}: {size[0]}x{size[1]} → {new[0]}x{new[1]}</p>'


def size_controls(tab: str) -> dict[str, Any]:
    """The two sub-tabs and Batch count / Batch size beside them; returns the fields by name."""
    resize_tab = gr.Textbox(forms.RESIZE_TO, visible=False, elem_id=f"{tab}_resize_tab")
    with gr.Row():
        with gr.Column(scale=3, min_width=260):
            with gr.Tabs(elem_id=f"{tab}_tabs_resize"):
                with gr.Tab(forms.RESIZE_TO, id="resize_to", elem_id=f"{tab}_tab_resize_to") as t_to:
                    with gr.Row(elem_classes="sd-seed-row"):
                        with gr.Column(scale=5, min_width=200):
                            width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{tab}_width")
                            height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tab}_height")
                        detect = gr.Button("📐", elem_id=f"{tab}_detect_image_size_btn",
                                           elem_classes=["sd-tool", "sd-icon"], size="sm", min_width=42)  # fmt: skip
                with gr.Tab(forms.RESIZE_BY, id="resize_by", elem_id=f"{tab}_tab_resize_by") as t_by:
                    scale = gr.Slider(0.05, 4.0, value=1.0, step=0.05, label="Scale", elem_id=f"{tab}_scale")
                    scale_info = gr.HTML(scale_text("img2img", 1.0, {}), elem_id=f"{tab}_scale_info")
        with gr.Column(scale=2, min_width=200):
            n_iter = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
            batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    t_to.select(lambda: forms.RESIZE_TO, outputs=resize_tab, queue=False, trigger_mode="always_last")
    t_by.select(lambda: forms.RESIZE_BY, outputs=resize_tab, queue=False, trigger_mode="always_last")
    return {"width": width, "height": height, "n_iter": n_iter, "batch_size": batch_size, "resize_tab": resize_tab,
            "resize_scale": scale, "_detect_size": detect, "_scale_info": scale_info}  # fmt: skip


def wire_size_controls(fields: dict[str, Any], mode: Any) -> None:
    """📐 and the "Resize by" line follow the image of the sub-tab in use (call once all fields exist)."""
    names = list(IMAGE_FIELDS.values())
    images = [fields[n] for n in names]

    def detect(mode_name: str, *values: Any) -> tuple[Any, Any]:
        size = size_of(dict(zip(names, values, strict=True)).get(IMAGE_FIELDS.get(mode_name, "init_image")))
        return (gr.skip(), gr.skip()) if size is None else (size[0] // 8 * 8 or 64, size[1] // 8 * 8 or 64)

    def describe(mode_name: str, scale: float, *values: Any) -> str:
        return scale_text(mode_name, scale, dict(zip(names, values, strict=True)))

    fields["_detect_size"].click(detect, inputs=[mode, *images], outputs=[fields["width"], fields["height"]],
                                 queue=False)  # fmt: skip
    inputs = [mode, fields["resize_scale"], *images]
    for trigger in (fields["resize_scale"].change, *(c.change for c in images)):
        trigger(describe, inputs=inputs, outputs=fields["_scale_info"], queue=False, show_progress="hidden")
