"""The Settings tab: a form generated from the ``Settings`` fields' metadata (label, section, choices, range).

Apply sends only the changed values to ``service.update_settings``, which validates them and saves
the JSON file; the result (or the error, naming the setting) is shown beside the button.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.core import samplers
from modules.core.settings import Settings
from modules.frontends.ui.handlers import UiHandlers

SKIPPED = {"sd_model_checkpoint", "disabled_extensions", "a1111_options"}  # top bar / Extensions tab / API only
DYNAMIC_CHOICES = {"default_sampler": samplers.sampler_names}


@dataclass
class SettingsTab:
    components: dict[str, Any]  # setting name -> component
    apply: gr.Button
    status: gr.HTML


def setting_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Settings) if f.name not in SKIPPED]


def sections() -> dict[str, list[dataclasses.Field]]:
    """Fields grouped by their section, in declaration order."""
    out: dict[str, list[dataclasses.Field]] = {}
    for f in setting_fields():
        out.setdefault(f.metadata.get("section", "Other"), []).append(f)
    return out


def _kind(f: dataclasses.Field) -> type:
    return type(f.default) if f.default is not dataclasses.MISSING else list


def to_form(name: str, value: Any) -> Any:
    """A setting's value as its control holds it (lists as comma-separated text)."""
    return ", ".join(value) if isinstance(value, list) else value


def from_form(values: dict[str, Any]) -> dict[str, Any]:
    """The form's values back to setting values (comma-separated text -> list, whole floats -> int)."""
    kinds = {f.name: _kind(f) for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is list:
            value = [part.strip() for part in str(value or "").split(",") if part.strip()]
        elif kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif kind is str and value is None:
            value = ""
        out[name] = value
    return out


def setting_component(f: dataclasses.Field, value: Any) -> Any:
    """One control for one setting, chosen by its type and metadata."""
    meta, kind = f.metadata, _kind(f)
    label, elem_id = meta.get("label", f.name), f"setting_{f.name}"
    choices = DYNAMIC_CHOICES[f.name]() if f.name in DYNAMIC_CHOICES else meta.get("choices")
    if kind is bool:
        return gr.Checkbox(value=value, label=label, elem_id=elem_id)
    if choices:
        return gr.Dropdown(list(choices), value=value, label=label, elem_id=elem_id)
    if kind in (int, float) and "minimum" in meta and "maximum" in meta:
        step = 1 if kind is int else 0.01
        return gr.Slider(meta["minimum"], meta["maximum"], value=value, step=step, label=label, elem_id=elem_id)
    if kind in (int, float):
        # no minimum here: the Service checks the range and names the setting in its message
        return gr.Number(value=value, label=label, precision=0 if kind is int else None, elem_id=elem_id)
    if kind is list:
        return gr.Textbox(value=to_form(f.name, value), label=f"{label} (comma-separated)", elem_id=elem_id)
    return gr.Textbox(value=value, label=label, elem_id=elem_id)


def build_settings_tab(handlers: UiHandlers) -> SettingsTab:
    """The form, one sub-tab per section, with Apply settings on top."""
    current = handlers.settings_now()
    with gr.Row(equal_height=True):
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=0, min_width=180)
        status = gr.HTML("", elem_id="settings_result")
    components: dict[str, Any] = {}
    with gr.Tabs(elem_id="settings_sections"):
        for section, fields in sections().items():
            with gr.Tab(section):
                for f in fields:
                    components[f.name] = setting_component(f, to_form(f.name, getattr(current, f.name)))
    names = list(components)

    def apply_settings(*values: Any) -> str:
        return handlers.apply_settings(from_form(dict(zip(names, values, strict=True))))

    apply.click(apply_settings, inputs=[components[n] for n in names], outputs=status)
    return SettingsTab(components, apply, status)


def current_form_values(handlers: UiHandlers, names: list[str]) -> list[Any]:
    """The settings as they are now (another client or the API may have changed them), in `names` order."""
    settings = handlers.settings_now()
    return [to_form(n, getattr(settings, n)) for n in names]
