"""The whole page: top bar (checkpoint), the tabs (extensions' own among them), and the "Send to" wiring.

``build_ui(handlers)`` builds a fresh ``gr.Blocks`` every call; nothing lives at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.frontends.ui import ext_visibility, extensions_tab, extra_networks, extras_tab, forms, settings_tab, tabs
from modules.frontends.ui.controls import TabControls
from modules.frontends.ui.gallery_tools import copy_to_extras, selected_image
from modules.frontends.ui.handlers import UiHandlers
from modules.frontends.ui.outputs import ShownResult

TITLE = "Stable Diffusion 2 depth2img"
SENDABLE = (
    "prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "seed", "subseed",
    "subseed_strength", "seed_extra", "seed_resize_from_w", "seed_resize_from_h", "width", "height",
    "denoising_strength", "mask_blur", "mask_mode", "masked_content", "inpaint_area", "inpaint_full_res_padding",
    "depth_invert",
)  # fmt: skip


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    status: gr.HTML
    notice: gr.HTML


def build_top_bar(handlers: UiHandlers) -> TopBar:
    """ "Stable Diffusion checkpoint" with 🔄, the load status, and what to do when there is no checkpoint."""
    dropdown, status, notice = handlers.top_bar()
    with gr.Row(elem_id="quicksettings", equal_height=False):
        checkpoint = gr.Dropdown(dropdown["choices"], value=dropdown["value"], label="Stable Diffusion checkpoint",
                                 elem_id="sd_checkpoint", scale=4, min_width=320)  # fmt: skip
        refresh = gr.Button("🔄", elem_id="refresh_sd_checkpoint", elem_classes=["sd-tool", "sd-icon"], size="sm",
                            min_width=42)  # fmt: skip
        extra_networks.vae_dropdown(handlers.service)  # SD VAE beside the checkpoint (A1111's quicksettings)
        status_html = gr.HTML(status, elem_id="checkpoint_status")
    notice_html = gr.HTML(notice["value"], visible=notice["visible"], elem_id="no_checkpoint_notice")
    # a pick made while one loads is loaded after it (Gradio's default for select drops it)
    checkpoint.select(handlers.select_checkpoint, inputs=checkpoint, outputs=[checkpoint, status_html],
                      concurrency_limit=1, concurrency_id="checkpoint", show_progress="hidden",
                      trigger_mode="always_last")  # fmt: skip
    refresh.click(handlers.refresh_checkpoints, outputs=[checkpoint, status_html, notice_html],
                  concurrency_limit=1, concurrency_id="checkpoint", show_progress="hidden")  # fmt: skip
    return TopBar(checkpoint, refresh, status_html, notice_html)


@dataclass
class Targets:
    """Where "Send to" buttons put things."""

    top_tabs: gr.Tabs
    txt2img: TabControls
    img2img: TabControls

    def field_names(self, target: TabControls) -> list[str]:
        return [n for n in SENDABLE if n in target.fields]

    def outputs(self, target: str) -> list[Any]:
        tab = self.txt2img if target == "txt2img" else self.img2img
        outs: list[Any] = [self.top_tabs]
        if target != "txt2img":
            extra = self.img2img.extra
            image = "init_image" if target == "img2img" else "inpaint_editor"
            outs += [extra["mode_tabs"], extra["mode"], extra["inpaint_group"], self.img2img.fields[image]]
        return outs + [tab.fields[n] for n in self.field_names(tab)]


def send_updates(targets: Targets, target: str, image: str | None, text: str) -> list[Any]:
    """Updates that move `image` (a file path) and the parameters in `text` to the `target` tab."""
    tab = targets.txt2img if target == "txt2img" else targets.img2img
    values = forms.infotext_to_values(text)
    out: list[Any] = [gr.Tabs(selected="txt2img" if target == "txt2img" else "img2img")]
    if target != "txt2img":
        if image is None:
            picture = gr.skip()
        elif target == "inpaint":
            picture = {"background": image, "layers": [], "composite": image}
        else:
            picture = image
        out += [gr.Tabs(selected=target), target, gr.update(visible=target == "inpaint"), picture]
    return out + [values[n] if n in values else gr.skip() for n in targets.field_names(tab)]


def wire_sends(targets: Targets, panels: list[TabControls], png: tabs.PngInfoTab) -> None:
    """Send to img2img / inpaint from each output, and Send to txt2img / img2img / inpaint from PNG Info."""

    def from_output(target: str):
        def send(shown: dict | None, index: int | None) -> list[Any]:
            result = ShownResult.from_dict(shown)
            if not result.images:
                return [gr.skip()] * len(targets.outputs(target))
            i = index if index is not None and index < len(result.images) else 0
            text = result.infotexts[i] if i < len(result.infotexts) else ""
            return send_updates(targets, target, result.images[i], text)

        return send

    def from_png_info(target: str):
        def send(image: str | None, text: str) -> list[Any]:
            return send_updates(targets, target, image, text or "")

        return send

    for panel in panels:
        out = panel.output
        for target, button in (("img2img", out.send_to_img2img), ("inpaint", out.send_to_inpaint)):
            button.click(from_output(target), inputs=[out.shown, out.selected], outputs=targets.outputs(target),
                         queue=False, js=out.pick_js)  # fmt: skip
    for target, button in png.send.items():
        button.click(from_png_info(target), inputs=[png.image, png.text], outputs=targets.outputs(target), queue=False)


def wire_send_to_extras(handlers: UiHandlers, top_tabs: gr.Tabs, extras_image: Any, panels: list[TabControls]) -> None:
    """"Send to extras": the selected picture into the Extras tab's Single Image, and that tab opened."""

    def send(shown: dict | None, index: int | None) -> tuple[Any, Any]:
        picture = copy_to_extras(selected_image(shown, index), handlers.store.folder)
        return (gr.Tabs(selected="extras"), picture) if picture else (gr.skip(), gr.skip())

    for panel in panels:
        tools = panel.output.tools
        if tools is not None and extras_image is not None:
            out = panel.output
            tools.send_to_extras.click(send, inputs=[out.shown, out.selected], outputs=[top_tabs, extras_image],
                                       queue=False, js=out.pick_js)  # fmt: skip


def build_ui(handlers: UiHandlers) -> gr.Blocks:
    """The page: top bar, then txt2img / img2img / PNG Info / Settings tabs."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        top = build_top_bar(handlers)
        with gr.Tabs(elem_id="tabs") as top_tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = tabs.build_txt2img_tab(handlers)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = tabs.build_img2img_tab(handlers)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = tabs.build_png_info_tab(handlers)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras_image = extras_tab.build_extras_tab(handlers.service)
            extensions_tab.build_extension_tabs(handlers)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = settings_tab.build_settings_tab(handlers)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions = extensions_tab.build_extensions_tab(handlers)
        wire_sends(Targets(top_tabs, txt2img, img2img), [txt2img, img2img], png)
        wire_send_to_extras(handlers, top_tabs, extras_image, [txt2img, img2img])
        ext_visibility.wire(handlers, [txt2img, img2img], extensions.applied, demo)
        _on_page_load(demo, handlers, top, settings, extensions, [txt2img, img2img])
    return demo


def _on_page_load(demo: gr.Blocks, handlers: UiHandlers, top: TopBar, settings: settings_tab.SettingsTab,
                  extensions: extensions_tab.ExtensionsTab, panels: list[TabControls]) -> None:  # fmt: skip
    """A fresh page shows the service as it is now: checkpoints, load status, settings, extensions, sampler."""
    names = list(settings.components)
    samplers = [p.fields["sampler_name"] for p in panels]

    def load() -> list[Any]:
        current = settings_tab.current_form_values(handlers, names)
        default_sampler = handlers.settings_now().default_sampler
        return [*handlers.top_bar(), *current, *handlers.extensions_view(), *([default_sampler] * len(samplers))]

    outputs = [top.checkpoint, top.status, top.notice, *settings.components.values(), extensions.table,
               extensions.enabled, *samplers]  # fmt: skip
    demo.load(load, outputs=outputs, queue=False)
