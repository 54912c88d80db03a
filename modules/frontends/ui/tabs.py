"""The generation tabs (txt2img, img2img with its img2img / Inpaint / Inpaint upload / Batch sub-tabs), PNG Info.

Each ``build_*`` lays out one tab from the shared control builders and wires its own events;
``frontends.ui.blocks`` wires what crosses tabs (the "Send to" buttons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.core import samplers
from modules.core.settings import Settings
from modules.frontends.ui import controls, extra_networks, forms, hires, size_tabs, tokens
from modules.frontends.ui.controls import TabControls
from modules.frontends.ui.gallery_tools import wire_gallery_tools
from modules.frontends.ui.handlers import UiHandlers
from modules.frontends.ui.safe_inputs import SafeImage, SafeImageEditor, SafeImageMask

INPUT_SOURCES = ["upload", "clipboard"]
BRUSH_SIZE = 16  # the brush's and the eraser's starting radius (Gradio's eraser default is far larger)
SKETCH_COLOURS = ["#000000", "#ffffff", "#e02020", "#f0a000", "#20a040", "#2060e0", "#a040c0"]
NO_INPAINT_OPTIONS = ("img2img", "sketch")  # sub-tabs without a mask


def mask_brush() -> gr.Brush:
    """Translucent strokes (the image stays visible under them); any painted pixel is masked."""
    return gr.Brush(colors=[("#ffffff", 0.8), ("#000000", 0.8), ("#ff3030", 0.8)], color_mode="fixed",
                    default_size=BRUSH_SIZE)  # fmt: skip


def sketch_brush() -> gr.Brush:
    """Colour strokes painted into the picture (A1111's Sketch), any colour from the picker."""
    return gr.Brush(colors=SKETCH_COLOURS, default_color="#e02020", color_mode="defaults", default_size=BRUSH_SIZE)


def eraser() -> gr.Eraser:
    return gr.Eraser(default_size=BRUSH_SIZE)


def sketch_canvas(label: str, elem_id: str) -> SafeImageEditor:
    return SafeImageEditor(label=label, type="pil", image_mode="RGBA", format="png", sources=INPUT_SOURCES,
                           brush=sketch_brush(), eraser=eraser(), layers=False, transforms=(), height=420,
                           elem_id=elem_id)  # fmt: skip


@dataclass
class GenerationInputs:
    """What Generate reads, as one flat component list for Gradio, and how the values go back by name.

    Keys: ("field", name), ("script_name",), ("script", title, arg) and ("section", index, arg).
    """

    keys: list[tuple]
    components: list[Any]
    sections: list[tuple[str, str]]  # (tab, extension name) of each section, by index

    @classmethod
    def of(cls, tab: TabControls) -> GenerationInputs:
        pairs: list[tuple[tuple, Any]] = [(("field", name), c) for name, c in tab.fields.items()]
        if tab.scripts is not None:
            pairs.append((("script_name",), tab.scripts.dropdown))
            pairs += [(("script", t, arg), c) for t, args in tab.scripts.args.items() for arg, c in args.items()]
        pairs += [(("section", i, arg), c) for i, sec in enumerate(tab.sections) for arg, c in sec.args.items()]
        return cls([k for k, _ in pairs], [c for _, c in pairs], [(sec.tab, sec.extension) for sec in tab.sections])

    def values(self, flat: tuple | list) -> dict[str, Any]:
        """Control values by name, plus "script_name", "script_args" and "extension_sections" (see convert)."""
        values: dict[str, Any] = {"script_args": {}, "extension_sections": [(t, e, {}) for t, e in self.sections]}
        for key, value in zip(self.keys, flat, strict=True):
            if key[0] == "field":
                values[key[1]] = value
            elif key[0] == "script_name":
                values["script_name"] = value
            elif key[0] == "script":
                values["script_args"].setdefault(key[1], {})[key[2]] = value
            else:
                values["extension_sections"][key[1]][2][key[2]] = value
        return values


def wire_generation(handlers: UiHandlers, tab: TabControls, mode: gr.State) -> None:
    """Generate (a generator streaming progress and the live preview), Interrupt, Skip, seed reuse, selection."""
    inputs = GenerationInputs.of(tab)
    out = tab.output
    outputs = [out.gallery, out.depth_image, out.info, out.progress, out.shown, out.selected]

    def run(mode_name: str, *values: Any):
        yield from handlers.generate(mode_name, inputs.values(values))

    for box, counter in zip((tab.prompt.prompt, tab.prompt.negative_prompt), tab.prompt.counters or (), strict=False):
        tokens.wire_token_counter(handlers.service, box, counter)
    if out.tools is not None:
        wire_gallery_tools(handlers.service, tab.name, out, handlers.store.folder)
    tab.prompt.generate.click(run, inputs=[mode, *inputs.components], outputs=outputs,
                              concurrency_limit=1, concurrency_id="generate", show_progress="hidden")  # fmt: skip
    tab.prompt.interrupt.click(handlers.interrupt, queue=False)
    tab.prompt.skip.click(handlers.skip, queue=False)

    def select(shown: dict | None, evt: gr.SelectData):
        depth_image, info = handlers.select_image(shown, evt.index)
        return depth_image, info, evt.index

    # "always_last": a select made while one is on its way (arrow keys through the lightbox) runs after it, not never
    out.gallery.select(select, inputs=out.shown, outputs=[out.depth_image, out.info, out.selected], queue=False,
                       trigger_mode="always_last")  # fmt: skip
    tab.seed.reuse_seed.click(lambda shown, i: handlers.last_seed(shown, i, "seeds"), inputs=[out.shown, out.selected],
                              outputs=tab.fields["seed"], queue=False, js=out.pick_js)  # fmt: skip
    tab.seed.reuse_subseed.click(lambda shown, i: handlers.last_seed(shown, i, "subseeds"),
                                 inputs=[out.shown, out.selected], outputs=tab.fields["subseed"], queue=False,
                                 js=out.pick_js)  # fmt: skip


def extension_controls(handlers: UiHandlers, tab: str, tabs: tuple[str, ...]) -> tuple[list, controls.ScriptControls]:
    """The extensions' sections (accordions) and the Script dropdown, at the bottom of the parameters."""
    sections = controls.extension_sections(tab, handlers.ui_sections(*tabs), visible_in=tabs[0])
    scripts = controls.script_controls(tab, handlers.scripts(*tabs))
    return sections, scripts


def _parameters(tab: str, settings: Settings, *, img2img: bool) -> tuple[dict[str, Any], controls.SeedControls]:
    fields: dict[str, Any] = {}
    if img2img:
        fields.update(controls.resize_mode_control(tab))
    fields.update(controls.sampling_controls(tab, settings))
    fields.update(size_tabs.size_controls(tab) if img2img else controls.size_and_batch_controls(tab))
    fields.update(controls.cfg_control(tab))
    if img2img:
        fields.update(controls.denoising_control(tab))
    seed = controls.seed_controls(tab)
    fields.update(seed.fields)
    return fields, seed


def build_txt2img_tab(handlers: UiHandlers) -> TabControls:
    """txt2img: for base checkpoints, and for depth checkpoints given a depth map."""
    row = controls.prompt_row("txt2img")
    tools = extra_networks.prompt_tools("txt2img", handlers.service, row)  # Styles, Tiling, Extra Networks
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=420):
            fields, seed = _parameters("txt2img", handlers.settings_now(), img2img=False)
            fields.update(controls.depth_controls("txt2img", optional=True).fields)
            fields.update(hires.hires_controls(handlers.service.hires_upscaler_names(), samplers.sampler_names(),
                                               list(samplers.SCHEDULE_TYPES)))  # fmt: skip
            sections, scripts = extension_controls(handlers, "txt2img", ("txt2img",))
        with gr.Column(scale=1, min_width=420, elem_id="txt2img_results", elem_classes="sd-results"):
            output = controls.output_panel("txt2img")
    tab = TabControls("txt2img", row, {"prompt": row.prompt, "negative_prompt": row.negative_prompt, **fields,
                                       **tools.fields},
                      seed, output, scripts=scripts, sections=sections)  # fmt: skip
    wire_generation(handlers, tab, gr.State("txt2img"))
    return tab


def _img2img_inputs() -> tuple[gr.Tabs, dict[str, gr.Tab], dict[str, Any]]:
    """The img2img sub-tabs and their inputs: img2img, Inpaint (mask brush), Inpaint upload, Batch (folders)."""
    with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t_img2img:
            init_image = SafeImage(label="Image for img2img", type="filepath", image_mode=None, sources=INPUT_SOURCES,
                                  height=340, elem_id="img2img_image")  # fmt: skip
        with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as t_sketch:
            sketch = sketch_canvas("Image for img2img (paint into it)", "img2img_sketch")
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t_inpaint:
            editor = SafeImageMask(label="Image for inpainting with mask", type="pil", image_mode="RGBA", format="png",
                                   sources=INPUT_SOURCES, brush=mask_brush(), eraser=eraser(), layers=False,
                                   transforms=(), height=420, elem_id="img2maskimg")  # fmt: skip
        with gr.Tab("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab") as t_inpaint_sketch:
            inpaint_sketch = sketch_canvas("Colour strokes to repaint (they are the mask)", "inpaint_sketch")
        with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as t_upload:
            with gr.Row():
                inpaint_image = SafeImage(label="Image", type="filepath", image_mode=None, sources=INPUT_SOURCES,
                                         height=300, elem_id="img_inpaint_base")  # fmt: skip
                inpaint_mask = SafeImage(label="Mask", type="filepath", image_mode=None, sources=INPUT_SOURCES,
                                        height=300, elem_id="img_inpaint_mask")  # fmt: skip
        with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as t_batch:
            batch_fields = batch_inputs()
    tabs = {"img2img": t_img2img, "sketch": t_sketch, "inpaint": t_inpaint, "inpaint_sketch": t_inpaint_sketch,
            "inpaint_upload": t_upload, "batch": t_batch}  # fmt: skip
    fields = {"init_image": init_image, "sketch_editor": sketch, "inpaint_editor": editor,
              "inpaint_sketch_editor": inpaint_sketch, "inpaint_image": inpaint_image, "inpaint_mask": inpaint_mask,
              **batch_fields}  # fmt: skip
    return mode_tabs, tabs, fields


BATCH_HELP = (
    "Every image in a folder on the server machine, with the parameters below. Masks and depth maps pair "
    "with an input by name (`frame1.png`, `frame1-depth.png`) or frame number; a folder with one file uses it "
    "for all. Inputs whose output exists are skipped, so a stopped batch resumes."
)


def batch_inputs() -> dict[str, Any]:
    """A1111's Batch sub-tab: folders typed as paths on the server, with a mask and a depth-map folder."""
    gr.Markdown(BATCH_HELP, elem_classes="sd-note")
    with gr.Row():
        input_dir = gr.Textbox(
            label="Input directory", placeholder="/path/to/images", elem_id="img2img_batch_input_dir"
        )
        output_dir = gr.Textbox(label="Output directory", placeholder="/path/to/outputs",
                                elem_id="img2img_batch_output_dir")  # fmt: skip
    with gr.Row():
        mask_dir = gr.Textbox(label="Inpaint batch mask directory (optional)",
                              placeholder="white = repaint; empty: img2img", elem_id="img2img_batch_inpaint_mask_dir")  # fmt: skip
        depth_dir = gr.Textbox(label="Depth map directory (optional)", placeholder="white = near; empty: Depth source",
                               elem_id="img2img_batch_depth_dir")  # fmt: skip
    with gr.Row():
        depth_invert = gr.Checkbox(label="Depth maps are z-depth (white = far)", value=False,
                                   elem_id="img2img_batch_depth_invert")  # fmt: skip
        size_from_input = gr.Checkbox(label="Keep each input's size", value=False,
                                      elem_id="img2img_batch_size_from_input")  # fmt: skip
        overwrite = gr.Checkbox(label="Redo existing outputs", value=False, elem_id="img2img_batch_overwrite")
    return {"batch_input_dir": input_dir, "batch_output_dir": output_dir, "batch_mask_dir": mask_dir,
            "batch_depth_dir": depth_dir, "batch_depth_invert": depth_invert,
            "batch_size_from_input": size_from_input, "batch_overwrite": overwrite}  # fmt: skip


def _mode_switch(name: str, scripts: controls.ScriptControls, sections: list[controls.ExtensionSection]):
    """Selecting a sub-tab sets the mode Generate uses, shows the inpaint options (not for plain img2img),
    offers the scripts of that mode and shows the extension sections that apply to it."""
    tab = forms.MODE_TABS[name]
    shown_tabs = ("*", tab, "inpaint") if name == "batch" else ("*", tab)

    def switch(selected: str | None) -> list[Any]:
        titles = scripts.titles(tab)
        value = selected if selected in titles else forms.NO_SCRIPT
        return [name, gr.update(visible=name not in NO_INPAINT_OPTIONS),
                gr.update(choices=[forms.NO_SCRIPT, *titles], value=value),
                *[gr.update(visible=s.tab in shown_tabs) for s in sections]]  # fmt: skip

    return switch


def build_img2img_tab(handlers: UiHandlers) -> TabControls:
    """img2img with sub-tabs img2img / Inpaint (mask brush) / Inpaint upload; one Generate for all three."""
    row = controls.prompt_row("img2img")
    tools = extra_networks.prompt_tools("img2img", handlers.service, row)  # Styles, Tiling, Extra Networks
    mode = gr.State("img2img")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=420):
            mode_tabs, sub_tabs, fields = _img2img_inputs()
            inpaint_group, inpaint_fields = controls.inpaint_controls("img2img")
            params, seed = _parameters("img2img", handlers.settings_now(), img2img=True)
            depth = controls.depth_controls("img2img", optional=False)
            sections, scripts = extension_controls(handlers, "img2img", ("img2img", "inpaint"))
        with gr.Column(scale=1, min_width=420, elem_id="img2img_results", elem_classes="sd-results"):
            output = controls.output_panel("img2img")
    switch_outputs = [mode, inpaint_group, scripts.dropdown, *[s.accordion for s in sections]]
    for name, tab in sub_tabs.items():
        tab.select(_mode_switch(name, scripts, sections), inputs=scripts.dropdown, outputs=switch_outputs, queue=False,
                   trigger_mode="always_last")  # fmt: skip
    all_fields = {"prompt": row.prompt, "negative_prompt": row.negative_prompt, **fields, **inpaint_fields,
                  **params, **depth.fields, **tools.fields}  # fmt: skip
    size_tabs.wire_size_controls(all_fields, mode)
    size_parts = {name: all_fields.pop(name) for name in ("_detect_size", "_scale_info")}  # not request values
    tab = TabControls("img2img", row, all_fields, seed, output, scripts=scripts, sections=sections,
                      extra={"mode": mode, "mode_tabs": mode_tabs, "inpaint_group": inpaint_group, **size_parts})  # fmt: skip
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
            image = SafeImage(label="Source", type="filepath", image_mode=None, sources=INPUT_SOURCES, height=420,
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
