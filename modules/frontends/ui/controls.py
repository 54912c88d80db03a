"""Builders for the groups of controls the generation tabs share, with A1111's labels, ranges and defaults.

Each builder creates its components inside the current Gradio layout and returns them by name.
The names are the request field names ``forms.build_request`` reads (plus a few UI-only ones:
``init_image``, ``inpaint_editor``, ``mask_blur``, ``depth_source``, ``seed_extra`` ...).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.core import samplers
from modules.core.request import INPAINT_AREA_LABELS, MASK_MODE_LABELS, MASKED_CONTENT_LABELS, RESIZE_MODE_LABELS
from modules.core.settings import Settings
from modules.frontends.ui import forms, render
from modules.frontends.ui.gallery_tools import GalleryTools, build_gallery_tools
from modules.frontends.ui.page_js import selected_index_js
from modules.frontends.ui.safe_inputs import SafeImage
from modules.frontends.ui.tokens import token_counter

log = logging.getLogger(__name__)

Fields = dict[str, Any]  # control name -> gradio component


@dataclass
class PromptRow:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    counters: tuple[gr.HTML, gr.HTML] | None = None  # the token counters of prompt and negative prompt


@dataclass
class SeedControls:
    fields: Fields
    random_seed: gr.Button
    reuse_seed: gr.Button
    random_subseed: gr.Button
    reuse_subseed: gr.Button
    extra_group: gr.Column


@dataclass
class OutputPanel:
    gallery: gr.Gallery
    depth_image: gr.Image
    info: gr.HTML
    progress: gr.HTML
    shown: gr.State  # ShownResult as a dict
    selected: gr.Number  # index of the selected gallery image (hidden; a click's js sets it from the page)
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button
    tools: GalleryTools | None = None  # Save, Zip, Open folder, Send to extras
    pick_js: str = ""  # the ``js`` of a click that reads ``selected``: the index the gallery shows selected now


@dataclass
class DepthControls:
    fields: Fields
    depth_map: gr.Image
    source: gr.Radio | None = None


@dataclass
class ScriptControls:
    """The "Script" dropdown and, per script, its controls in a group shown only while it is selected."""

    dropdown: gr.Dropdown
    groups: dict[str, gr.Group]  # title -> group
    args: dict[str, Fields]  # title -> {arg name: component}
    tabs: dict[str, tuple[str, ...]]  # title -> the tabs the script is offered in

    def titles(self, tab: str | None = None) -> list[str]:
        return [t for t, tabs in self.tabs.items() if tab is None or tab in tabs]


@dataclass
class ExtensionSection:
    """One extension's controls in an accordion; their values go to ``extension_args[extension]``."""

    extension: str
    tab: str  # "txt2img", "img2img", "inpaint" or "*"
    accordion: gr.Accordion
    args: Fields


@dataclass
class TabControls:
    """Everything one generation tab reads, and the pieces other tabs wire to."""

    name: str
    prompt: PromptRow
    fields: Fields
    seed: SeedControls
    output: OutputPanel
    extra: dict[str, Any] = field(default_factory=dict)
    scripts: ScriptControls | None = None
    sections: list[ExtensionSection] = field(default_factory=list)


def prompt_row(tab: str) -> PromptRow:
    """Prompt and negative prompt on the left, Generate / Interrupt / Skip on the right (A1111's top row)."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=6, min_width=400, elem_classes="sd-prompts"):
            counter = token_counter(f"{tab}_token_counter")
            prompt = gr.Textbox(label="Prompt", lines=3, max_lines=12, elem_id=f"{tab}_prompt",
                                placeholder="Prompt (what the image should show)")  # fmt: skip
            negative_counter = token_counter(f"{tab}_negative_token_counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, max_lines=8, elem_id=f"{tab}_neg_prompt",
                                  placeholder="Negative prompt (what to keep out)")  # fmt: skip
        with gr.Column(scale=1, min_width=200, elem_classes="sd-generate-col"):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", elem_classes="sd-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", size="sm", elem_id=f"{tab}_interrupt", min_width=80)
                skip = gr.Button("Skip", size="sm", elem_id=f"{tab}_skip", min_width=80)
    return PromptRow(prompt, negative, generate, interrupt, skip, (counter, negative_counter))


def sampling_controls(tab: str, settings: Settings) -> Fields:
    """Sampling method, Schedule type, Sampling steps."""
    names = samplers.sampler_names()
    default = settings.default_sampler if settings.default_sampler in names else names[0]
    with gr.Row():
        sampler = gr.Dropdown(names, value=default, label="Sampling method", elem_id=f"{tab}_sampling")
        schedule = gr.Dropdown(samplers.SCHEDULE_TYPES, value="Automatic", label="Schedule type",
                               elem_id=f"{tab}_scheduler")  # fmt: skip
    steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
    return {"sampler_name": sampler, "scheduler": schedule, "steps": steps}


def size_and_batch_controls(tab: str) -> Fields:
    """Width / Height (64-2048, step 8) beside Batch count / Batch size."""
    with gr.Row():
        with gr.Column(scale=3, min_width=240):
            width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{tab}_width")
            height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tab}_height")
        with gr.Column(scale=2, min_width=200):
            n_iter = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
            batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    return {"width": width, "height": height, "n_iter": n_iter, "batch_size": batch_size}


def cfg_control(tab: str) -> Fields:
    return {"cfg_scale": gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale")}


def denoising_control(tab: str) -> Fields:
    slider = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength", elem_id=f"{tab}_denoising_strength")
    return {"denoising_strength": slider}


def _tool_button(text: str, elem_id: str, tooltip_id: str) -> gr.Button:
    """An icon button (page_js gives it its tooltip, accessible name and a text fallback)."""
    return gr.Button(text, elem_id=elem_id, elem_classes=["sd-tool", "sd-icon", tooltip_id], size="sm", min_width=42)


def seed_controls(tab: str) -> SeedControls:
    """Seed with 🎲 (random) and ♻ (reuse last); "Extra" shows variation seed and seed resize."""
    with gr.Row(elem_classes="sd-seed-row"):
        seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{tab}_seed", scale=4, minimum=-1)
        random_seed = _tool_button("🎲", f"{tab}_random_seed", "sd-random")
        reuse_seed = _tool_button("♻", f"{tab}_reuse_seed", "sd-reuse")
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=1, min_width=90)
    with gr.Column(visible=False, elem_id=f"{tab}_seed_extras") as extra_group:
        with gr.Row(elem_classes="sd-seed-row"):
            subseed = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{tab}_subseed", scale=4,
                                minimum=-1)  # fmt: skip
            random_subseed = _tool_button("🎲", f"{tab}_random_subseed", "sd-random")
            reuse_subseed = _tool_button("♻", f"{tab}_reuse_subseed", "sd-reuse")
            strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                 elem_id=f"{tab}_subseed_strength", scale=4)  # fmt: skip
        with gr.Row():
            resize_w = gr.Slider(
                0, 2048, value=0, step=8, label="Resize seed from width", elem_id=f"{tab}_seed_resize_w"
            )
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                 elem_id=f"{tab}_seed_resize_h")  # fmt: skip
    extra.change(lambda on: gr.update(visible=on), inputs=extra, outputs=extra_group, queue=False)
    random_seed.click(lambda: -1, outputs=seed, queue=False)
    random_subseed.click(lambda: -1, outputs=subseed, queue=False)
    fields = {"seed": seed, "seed_extra": extra, "subseed": subseed, "subseed_strength": strength,
              "seed_resize_from_w": resize_w, "seed_resize_from_h": resize_h}  # fmt: skip
    return SeedControls(fields, random_seed, reuse_seed, random_subseed, reuse_subseed, extra_group)


def depth_controls(tab: str, *, optional: bool) -> DepthControls:
    """Depth source: MiDaS or an uploaded map (8/16-bit, white = near), with invert for z-depth maps."""
    with gr.Accordion("Depth", open=not optional, elem_id=f"{tab}_depth"):
        source = None
        if not optional:
            source = gr.Radio(forms.DEPTH_SOURCES, value=forms.DEPTH_MIDAS, label="Depth source",
                              elem_id=f"{tab}_depth_source")  # fmt: skip
        label = "Depth map (optional; for depth checkpoints)" if optional else "Depth map"
        depth_map = SafeImage(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             height=220, visible=optional, elem_id=f"{tab}_depth_map")  # fmt: skip
        invert = gr.Checkbox(label="Invert depth map (white = far, e.g. z-depth from Blender or a depth camera)",
                             value=False, visible=optional, elem_id=f"{tab}_depth_invert")  # fmt: skip
    fields: Fields = {"depth_map": depth_map, "depth_invert": invert}
    if source is not None:
        fields["depth_source"] = source
        source.change(lambda s: (gr.update(visible=s == forms.DEPTH_UPLOAD),) * 2, inputs=source,
                      outputs=[depth_map, invert], queue=False)  # fmt: skip
    return DepthControls(fields, depth_map, source)


def inpaint_controls(tab: str) -> tuple[gr.Group, Fields]:
    """Mask blur, Mask mode, Masked content, Inpaint area, Only masked padding (A1111's defaults)."""
    with gr.Group(visible=False, elem_id=f"{tab}_inpaint_controls") as group:
        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id=f"{tab}_mask_blur")
        mask_mode = gr.Radio(MASK_MODE_LABELS, value=MASK_MODE_LABELS[0], label="Mask mode", elem_id=f"{tab}_mask_mode")
        masked_content = gr.Radio(MASKED_CONTENT_LABELS, value="original", label="Masked content",
                                  elem_id=f"{tab}_inpainting_fill")  # fmt: skip
        with gr.Row():
            area = gr.Radio(INPAINT_AREA_LABELS, value=INPAINT_AREA_LABELS[0], label="Inpaint area",
                            elem_id=f"{tab}_inpaint_full_res")  # fmt: skip
            padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                elem_id=f"{tab}_inpaint_full_res_padding")  # fmt: skip
    fields = {"mask_blur": mask_blur, "mask_mode": mask_mode, "masked_content": masked_content,
              "inpaint_area": area, "inpaint_full_res_padding": padding}  # fmt: skip
    return group, fields


def resize_mode_control(tab: str) -> Fields:
    radio = gr.Radio(RESIZE_MODE_LABELS, value=RESIZE_MODE_LABELS[0], label="Resize mode", elem_id=f"{tab}_resize_mode")
    return {"resize_mode": radio}


def output_panel(tab: str) -> OutputPanel:
    """Progress, the gallery with the depth map used beside it, send buttons, the infotext."""
    progress = gr.HTML("", elem_id=f"{tab}_progress")
    with gr.Row(equal_height=True):
        gallery = gr.Gallery(label="Output", columns=2, height=380, object_fit="contain", format="png",
                             elem_id=f"{tab}_gallery", interactive=False, scale=3, min_width=260,
                             allow_preview=True, buttons=["download", "fullscreen"])  # fmt: skip
        depth_image = gr.Image(label="Depth map used", type="filepath", height=380, interactive=False, format="png",
                               elem_id=f"{tab}_depth_used", scale=2, min_width=180)  # fmt: skip
    with gr.Row(elem_classes="sd-send-row"):
        to_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{tab}_send_to_img2img")
        to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{tab}_send_to_inpaint")
    tools = build_gallery_tools(tab)
    info = gr.HTML("", elem_id=f"{tab}_html_info")
    shown = gr.State(None)
    selected = gr.Number(0, precision=0, visible=False, elem_id=f"{tab}_selected_index")
    return OutputPanel(gallery, depth_image, info, progress, shown, selected, to_img2img, to_inpaint, tools,
                       selected_index_js(f"{tab}_gallery"))  # fmt: skip


# --- extensions: sections and scripts ----------------------------------------------------------------


def slug(text: str) -> str:
    """A title as a piece of an elem_id ("X/Y/Z plot" -> "x_y_z_plot")."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def build_extension_ui(build: Callable[[], Any], what: str) -> Fields:
    """Run an extension's UI builder; a builder that raises (or returns no dict) shows why instead of controls."""
    try:
        built = build()
        if built is None:
            return {}
        if not isinstance(built, dict):
            raise TypeError(f"expected a dict of argument name -> component, got {type(built).__name__}")
        return built
    except Exception as e:  # an extension's bug must not break the page
        log.exception("%s failed to build its controls", what)
        gr.HTML(render.error_html(f"{what} failed to build its controls: {type(e).__name__}: {e}"))
        return {}


def extension_sections(tab: str, sections: list[Any], visible_in: str) -> list[ExtensionSection]:
    """Each extension UI section (``UiSection``) in its own accordion; shown when it applies to `visible_in`."""
    built = []
    for i, section in enumerate(sections):
        with gr.Accordion(section.title, open=False, visible=section.tab in ("*", visible_in),
                          elem_id=f"{tab}_ext_{slug(section.extension)}_{i}") as accordion:  # fmt: skip
            args = build_extension_ui(section.build, f"extension {section.extension}")
        built.append(ExtensionSection(section.extension, section.tab, accordion, args))
    return built


def script_controls(tab: str, scripts: list[Any]) -> ScriptControls:
    """A1111's "Script" dropdown (default "None") and each script's controls, built once by ``script.ui(tab)``."""
    titles = [s.title for s in scripts]
    dropdown = gr.Dropdown([forms.NO_SCRIPT, *titles], value=forms.NO_SCRIPT, label="Script",
                           elem_id=f"{tab}_script")  # fmt: skip
    groups: dict[str, gr.Group] = {}
    args: dict[str, Fields] = {}
    for script in scripts:
        ui_tab = tab if tab in script.tabs else script.tabs[0]
        with gr.Group(visible=False, elem_id=f"{tab}_script_{slug(script.title)}") as group:
            build = (lambda s=script, t=ui_tab: s.ui(t)) if script.ui else (lambda: {})
            args[script.title] = build_extension_ui(build, f"script {script.title!r}")
        groups[script.title] = group

    def show(selected: str | None) -> Any:
        updates = [gr.update(visible=title == selected) for title in groups]
        return updates[0] if len(updates) == 1 else updates  # Gradio takes a lone output's value as it is

    if groups:
        dropdown.change(show, inputs=dropdown, outputs=list(groups.values()), queue=False)
    return ScriptControls(dropdown, groups, args, {s.title: tuple(s.tabs) for s in scripts})
