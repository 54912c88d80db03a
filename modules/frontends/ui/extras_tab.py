"""The Extras tab: upscale pictures (single image, batch from files, batch from a folder on the server).

Resize by / Resize to (with crop), Upscaler 1, Upscaler 2 and its visibility, as A1111's; the pictures
keep their infotext and get a ``postprocessing`` text; results are saved to ``outputs/extras-images``
(Settings -> Paths) when saving is on.  Face restoration is not available here.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from modules.app.service import Service
from modules.core.errors import UserError
from modules.frontends.batch.plan import list_images

MODES = ("Single Image", "Batch Process", "Batch from Directory")


def _items(mode: str, image: str | None, files: list | None, folder: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of what the chosen sub-tab holds; a clear UserError when it holds nothing."""
    if mode == MODES[0]:
        if not image:
            raise UserError("Extras: upload an image first")
        return [(Path(image).name, Path(image).read_bytes())]
    if mode == MODES[1]:
        paths = [Path(getattr(f, "name", f)) for f in files or []]
        if not paths:
            raise UserError("Extras: add some image files first")
        return [(p.name, p.read_bytes()) for p in paths]
    source = Path(folder or "").expanduser()
    if not folder or not source.is_dir():
        raise UserError(f"Extras: input directory {folder!r} is not a folder on the server")
    found = list_images(source)
    if not found:
        raise UserError(f"Extras: no images in {source}")
    return [(p.name, p.read_bytes()) for p in found]


def run_extras(service: Service, mode: str, image: str | None, files: list | None, folder: str,
               values: dict[str, Any]) -> tuple[list[Any], str]:  # fmt: skip
    """Gallery items and the HTML under them (the app's own message on a bad input)."""
    try:
        result = service.extras(_items(mode, image, files, folder), values, save=True)
    except UserError as e:
        return [], f"<p class='sd-error'>{html.escape(str(e))}</p>"
    gallery = [(item.image, item.name or None) for item in result.images]
    return gallery, result.html_info


def build_extras_tab(service: Service) -> Any:
    """Build the tab's controls and wire its Generate button (call inside ``gr.Tab("Extras")``); returns the
    Single Image input (the generation tabs' "Send to extras" fills it)."""
    import gradio as gr

    names = service.upscaler_names()
    mode = gr.State(MODES[0])
    with gr.Row():
        with gr.Column():
            with gr.Tabs():
                with gr.Tab(MODES[0], elem_id="extras_single_tab") as t_single:
                    image = gr.Image(label="Source", type="filepath", elem_id="extras_image")
                with gr.Tab(MODES[1], elem_id="extras_batch_process_tab") as t_batch:
                    files = gr.File(label="Batch Process", file_count="multiple", elem_id="extras_image_batch")
                with gr.Tab(MODES[2], elem_id="extras_batch_directory_tab") as t_dir:
                    folder = gr.Textbox(label="Input directory", placeholder="a folder on the server",
                                        elem_id="extras_batch_input_dir")  # fmt: skip
            for tab, name in ((t_single, MODES[0]), (t_batch, MODES[1]), (t_dir, MODES[2])):
                tab.select(lambda n=name: n, outputs=[mode], trigger_mode="always_last")
            resize_mode = gr.Radio(["Scale by", "Scale to"], value="Scale by", type="index", label="Resize mode",
                                   elem_id="extras_resize_mode")  # fmt: skip
            by = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
            with gr.Row():
                width = gr.Number(512, label="Resize width", precision=0, elem_id="extras_upscaling_resize_w")
                height = gr.Number(512, label="Resize height", precision=0, elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                up1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
                up2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                vis = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                elem_id="extras_upscaler_2_visibility")  # fmt: skip
            gr.Markdown("Face restoration is not available here.", elem_classes="sd-note")
            go = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            gallery = gr.Gallery(label="Result", columns=2, height=420, format="png", elem_id="extras_gallery")
            info = gr.HTML("", elem_id="extras_html_info")

    def generate(mode_, image_, files_, folder_, rm, by_, w, h, crop_, u1, u2, v):
        values = {"resize_mode": rm, "upscaling_resize": by_, "upscaling_resize_w": int(w or 0),
                  "upscaling_resize_h": int(h or 0), "upscaling_crop": crop_, "extras_upscaler_1": u1,
                  "extras_upscaler_2": u2, "extras_upscaler_2_visibility": v}  # fmt: skip
        return run_extras(service, mode_, image_, files_, folder_, values)

    go.click(generate, inputs=[mode, image, files, folder, resize_mode, by, width, height, crop, up1, up2, vis],
             outputs=[gallery, info])  # fmt: skip
    return image
