"""The Extensions tab (A1111's): what is installed, its state (load errors in red), enable / disable.

Extensions are imported when the server starts: disabling one stops its hooks at once (the Service
passes ``disabled_extensions`` to the registry), while a newly enabled one loads at the next start.
Also the top-level tabs that extensions add (``ExtensionRegistry.ui_tabs``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.frontends.ui import controls, render
from modules.frontends.ui.handlers import UiHandlers

log = logging.getLogger(__name__)

GUIDE = Path(__file__).resolve().parents[3] / "extensions" / "README.md"
EXPLAIN = (
    "Untick an extension and press Apply to disable it: it stops running at once and its controls leave the "
    "page. Extensions load when the server starts, so restart to load newly enabled extensions."
)
INSTALL = (
    "**Install an extension:** put its folder into `extensions/` (one folder per extension, with an `__init__.py` "
    "that defines `register(ext)`), then restart the web UI. Built-in ones live in `extensions-builtin/`. "
    "[How to write one: the guide](#extension_guide) (`extensions/README.md`)."
)


def guide_text() -> str:
    try:
        return GUIDE.read_text("utf-8")
    except OSError as e:
        return f"The guide `extensions/README.md` could not be read here: {e}"


@dataclass
class ExtensionsTab:
    table: gr.HTML
    enabled: gr.CheckboxGroup
    apply: gr.Button
    status: gr.HTML
    applied: Any = None  # the Apply event (what follows it: the controls of disabled extensions go)


def build_extensions_tab(handlers: UiHandlers) -> ExtensionsTab:
    """Apply + "Enabled" checkboxes on top, the table of every extension found below."""
    table_html, choices = handlers.extensions_view()
    gr.Markdown(INSTALL, elem_id="extensions_install")
    gr.Markdown(EXPLAIN, elem_classes="sd-note")
    with gr.Row(equal_height=True):
        apply = gr.Button("Apply and save", variant="primary", elem_id="extensions_apply", scale=0, min_width=180)
        status = gr.HTML("", elem_id="extensions_result")
    enabled = gr.CheckboxGroup(choices["choices"], value=choices["value"], label="Enabled extensions",
                               elem_id="extensions_enabled")  # fmt: skip
    table = gr.HTML(table_html, elem_id="extensions_table")
    with gr.Accordion("How to write an extension (extensions/README.md)", open=False, elem_id="extension_guide"):
        gr.Markdown(guide_text(), elem_id="extension_guide_text")
    applied = apply.click(handlers.apply_extensions, inputs=enabled, outputs=[table, enabled, status],
                          concurrency_limit=1, concurrency_id="settings")  # fmt: skip
    return ExtensionsTab(table, enabled, apply, status, applied)


def build_extension_tabs(handlers: UiHandlers) -> None:
    """One top-level tab per ``UiTab`` an extension added; ``build(service)`` fills it (an error is shown there)."""
    for i, ui_tab in enumerate(handlers.service.ui_tabs()):
        with gr.Tab(ui_tab.title, id=f"ext_tab_{i}", elem_id=f"tab_ext_{controls.slug(ui_tab.extension)}_{i}"):
            try:
                ui_tab.build(handlers.service)
            except Exception as e:  # an extension's bug must not break the page
                log.exception("extension %s failed to build its tab %r", ui_tab.extension, ui_tab.title)
                message = f"extension {ui_tab.extension} failed to build this tab: {type(e).__name__}: {e}"
                gr.HTML(render.error_html(message))
