"""The generation tabs (txt2img, img2img with its img2img / Inpaint / Inpaint upload sub-tabs) and PNG Info.

Each ``build_*`` lays out one tab from the shared control builders and wires its own events;
``modules.ui.blocks`` wires what crosses tabs (the "Send to" buttons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.settings import Settings
from modules.ui import controls
from modules.ui.controls import TabControls
from modules.ui.handlers import UiHandlers

INPUT_SOURCES = ["upload", "clipboard"]


def mask_brush() -> gr.Brush:
    """Translucent strokes (the image stays visible under them); any painted pixel is masked."""
    return gr.Brush(colors=[("#ffffff", 0.8), ("#000000", 0.8), ("#ff3030", 0.8)], color_mode="fixed")


def wire_generation(handlers: UiHandlers, tab: TabControls, mode: gr.State) -> None:
    """Generate (a generator streaming progress and the live preview), Interrupt, Skip, seed reuse, selection."""
    names = list(tab.fields)
    out = tab.output
    outputs = [out.gallery, out.depth_image, out.info, out.progress, out.shown, out.selected]

    def run(mode_name: str, *values: Any):
        yield from handlers.generate(mode_name, dict(zip(names, values, strict=True)))

    tab.prompt.generate.click(run, inputs=[mode, *[tab.fields[n] for n in names]], outputs=outputs,
                              concurrency_limit=1, concurrency_id="generate", show_progress="hidden")  # fmt: skip
    tab.prompt.interrupt.click(handlers.interrupt, queue=False)
    tab.prompt.skip.click(handlers.skip, queue=False)

    def select(shown: dict | None, evt: gr.SelectData):
        depth_image, info = handlers.select_image(shown, evt.index)
        return depth_image, info, evt.index

    out.gallery.select(select, inputs=out.shown, outputs=[out.depth_image, out.info, out.selected], queue=False)
    tab.seed.reuse_seed.click(lambda shown, i: handlers.last_seed(shown, i, "seeds"), inputs=[out.shown, out.selected],
                              outputs=tab.fields["seed"], queue=False)  # fmt: skip
    tab.seed.reuse_subseed.click(lambda shown, i: handlers.last_seed(shown, i, "subseeds"),
                                 inputs=[out.shown, out.selected], outputs=tab.fields["subseed"], queue=False)  # fmt: skip


def _parameters(tab: str, settings: Settings, *, img2img: bool) -> tuple[dict[str, Any], controls.SeedControls]:
    fields: dict[str, Any] = {}
    if img2img:
        fields.update(controls.resize_mode_control(tab))
    fields.update(controls.sampling_controls(tab, settings))
    fields.update(controls.size_and_batch_controls(tab))
    fields.update(controls.cfg_control(tab))
    if img2img:
        fields.update(controls.denoising_control(tab))
    seed = controls.seed_controls(tab)
    fields.update(seed.fields)
    return fields, seed


def build_txt2img_tab(handlers: UiHandlers) -> TabControls:
    """txt2img: for base checkpoints, and for depth checkpoints given a depth map."""
    row = controls.prompt_row("txt2img")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=420):
            fields, seed = _parameters("txt2img", handlers.settings_now(), img2img=False)
            fields.update(controls.depth_controls("txt2img", optional=True).fields)
        with gr.Column(scale=1, min_width=420, elem_id="txt2img_results", elem_classes="sd-results"):
            output = controls.output_panel("txt2img")
    tab = TabControls("txt2img", row, {"prompt": row.prompt, "negative_prompt": row.negative_prompt, **fields},
                      seed, output)  # fmt: skip
    wire_generation(handlers, tab, gr.State("txt2img"))
    return tab


def _img2img_inputs() -> tuple[gr.Tabs, dict[str, gr.Tab], dict[str, Any]]:
    """The img2img sub-tabs and their image inputs (room for more sub-tabs, e.g. Batch, after these)."""
    with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t_img2img:
            init_image = gr.Image(label="Image for img2img", type="filepath", image_mode=None, sources=INPUT_SOURCES,
                                  height=340, elem_id="img2img_image")  # fmt: skip
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t_inpaint:
            editor = gr.ImageMask(label="Image for inpainting with mask", type="pil", image_mode="RGBA", format="png",
                                  sources=INPUT_SOURCES, brush=mask_brush(), layers=False, transforms=(), height=420,
                                  elem_id="img2maskimg")  # fmt: skip
        with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as t_upload:
            with gr.Row():
                inpaint_image = gr.Image(label="Image", type="filepath", image_mode=None, sources=INPUT_SOURCES,
                                         height=300, elem_id="img_inpaint_base")  # fmt: skip
                inpaint_mask = gr.Image(label="Mask", type="filepath", image_mode=None, sources=INPUT_SOURCES,
                                        height=300, elem_id="img_inpaint_mask")  # fmt: skip
    tabs = {"img2img": t_img2img, "inpaint": t_inpaint, "inpaint_upload": t_upload}
    fields = {"init_image": init_image, "inpaint_editor": editor, "inpaint_image": inpaint_image,
              "inpaint_mask": inpaint_mask}  # fmt: skip
    return mode_tabs, tabs, fields


def _mode_switch(name: str):
    """Selecting a sub-tab sets the mode Generate uses and shows the inpaint options for the inpaint tabs."""

    def switch() -> tuple[str, dict]:
        return name, gr.update(visible=name != "img2img")

    return switch


def build_img2img_tab(handlers: UiHandlers) -> TabControls:
    """img2img with sub-tabs img2img / Inpaint (mask brush) / Inpaint upload; one Generate for all three."""
    row = controls.prompt_row("img2img")
    mode = gr.State("img2img")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=420):
            mode_tabs, sub_tabs, fields = _img2img_inputs()
            inpaint_group, inpaint_fields = controls.inpaint_controls("img2img")
            params, seed = _parameters("img2img", handlers.settings_now(), img2img=True)
            depth = controls.depth_controls("img2img", optional=False)
        with gr.Column(scale=1, min_width=420, elem_id="img2img_results", elem_classes="sd-results"):
            output = controls.output_panel("img2img")
    for name, tab in sub_tabs.items():
        tab.select(_mode_switch(name), outputs=[mode, inpaint_group], queue=False)
    all_fields = {"prompt": row.prompt, "negative_prompt": row.negative_prompt, **fields, **inpaint_fields,
                  **params, **depth.fields}  # fmt: skip
    tab = TabControls("img2img", row, all_fields, seed, output,
                      extra={"mode": mode, "mode_tabs": mode_tabs, "inpaint_group": inpaint_group})  # fmt: skip
    wire_generation(handlers, tab, mode)
    return tab


@dataclass
class PngInfoTab:
    image: gr.Image
    html: gr.HTML
    text: gr.State
    send: dict[str, gr.Button]  # target -> button


def build_png_info_tab(handlers: UiHandlers) -> PngInfoTab:
    """Drop an image, read its parameters, send them (and the image) to a generation tab."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=360):
            image = gr.Image(label="Source", type="filepath", image_mode=None, sources=INPUT_SOURCES, height=420,
                             elem_id="pnginfo_image")  # fmt: skip
        with gr.Column(scale=1, min_width=360):
            html = gr.HTML("", elem_id="pnginfo_html")
            with gr.Row(elem_classes="sd-send-row"):
                send = {
                    "txt2img": gr.Button("Send to txt2img", size="sm", elem_id="pnginfo_send_txt2img"),
                    "img2img": gr.Button("Send to img2img", size="sm", elem_id="pnginfo_send_img2img"),
                    "inpaint": gr.Button("Send to inpaint", size="sm", elem_id="pnginfo_send_inpaint"),
                }
    text = gr.State("")
    image.change(handlers.png_info, inputs=image, outputs=[html, text], queue=False)
    return PngInfoTab(image, html, text, send)
