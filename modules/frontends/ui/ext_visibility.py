"""A disabled extension's controls leave the page once Apply is pressed (and on every page load):
its sections are hidden, its scripts leave the Script dropdowns (a selected one falls back to None)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.frontends.ui import forms
from modules.frontends.ui.controls import TabControls
from modules.frontends.ui.handlers import UiHandlers


def _outputs(panels: list[TabControls]) -> list[Any]:
    outs: list[Any] = []
    for panel in panels:
        outs += [s.accordion for s in panel.sections]
        if panel.scripts is not None:
            outs += [panel.scripts.dropdown, *panel.scripts.groups.values()]
    return outs


def _inputs(panels: list[TabControls]) -> list[Any]:
    return [p.scripts.dropdown for p in panels if p.scripts is not None]


def updates(handlers: UiHandlers, panels: list[TabControls], selected: list[str | None]) -> list[Any]:
    """Visibility of every section and script group, the dropdowns' choices, for the extensions enabled now."""
    enabled = set(handlers.service.enabled_extension_names())
    chosen = iter(selected)
    out: list[Any] = []
    for panel in panels:
        out += [gr.skip() if s.extension in enabled and s.tab in ("*", panel.name) else
                gr.update(visible=s.extension in enabled and s.tab in ("*", panel.name))
                for s in panel.sections]  # fmt: skip
        if panel.scripts is None:
            continue
        titles = handlers.script_titles(panel.name)
        current = next(chosen)
        value = current if current in titles else forms.NO_SCRIPT
        out.append(gr.update(choices=[forms.NO_SCRIPT, *titles], value=value))
        out += [gr.update(visible=t == value) for t in panel.scripts.groups]
    return out


def wire(handlers: UiHandlers, panels: list[TabControls], event: Any, demo: gr.Blocks) -> None:
    """After `event` (the Extensions tab's Apply) and when the page loads."""

    def refresh(*selected: str | None) -> list[Any]:
        return updates(handlers, panels, list(selected))

    outputs = _outputs(panels)
    if not outputs:
        return
    event.then(refresh, inputs=_inputs(panels), outputs=outputs, queue=False)
    demo.load(refresh, inputs=_inputs(panels), outputs=outputs, queue=False)
