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


SHOW_ALL = "Show all pages"


@dataclass
class SettingsTab:
    components: dict[str, Any]  # setting name -> component
    apply: gr.Button
    status: gr.HTML
    search: Any = None  # the search box
    page: Any = None  # the page list (one per section, then "Show all pages")


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


def matches(f: dataclasses.Field, query: str) -> bool:
    """Whether a setting answers the search: every word in its label, name or section (any case)."""
    text = f"{f.metadata.get('label', '')} {f.name} {f.metadata.get('section', '')}".lower()
    return all(word in text for word in query.lower().split())


def visibility(query: str, page: str, by_section: dict[str, list[dataclasses.Field]]) -> list[Any]:
    """Updates for each section's group, then each setting: the page shown, or every match of the search."""
    query = (query or "").strip()
    groups: list[Any] = []
    settings: list[Any] = []
    for section, fields in by_section.items():
        hits = [matches(f, query) if query else True for f in fields]
        shown = any(hits) if query else page in (section, SHOW_ALL)
        groups.append(gr.update(visible=shown))
        settings += [gr.update(visible=hit) for hit in hits]
    return groups + settings


def build_settings_tab(handlers: UiHandlers) -> SettingsTab:
    """Apply settings and Reload UI on top, a search over all settings, the pages (A1111's, and Show all pages)."""
    current = handlers.settings_now()
    with gr.Row(equal_height=True):
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=0, min_width=180)
        reload = gr.Button("Reload UI", elem_id="settings_restart_gradio", scale=0, min_width=120)
        status = gr.HTML("", elem_id="settings_result")
    by_section = sections()
    names_of = list(by_section)
    with gr.Row(elem_id="settings_search_row"):
        search = gr.Textbox(label="Search settings", placeholder="Search settings (label or name)",
                            elem_id="settings_search", scale=3)  # fmt: skip
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=200):
            page = gr.Radio([*names_of, SHOW_ALL], value=names_of[0], label="Settings page",
                            elem_id="settings_pages")  # fmt: skip
        with gr.Column(scale=4):
            components: dict[str, Any] = {}
            groups = []
            for section, fields in by_section.items():
                with gr.Group(visible=section == names_of[0], elem_id=f"settings_section_{controls_slug(section)}") as g:
                    gr.Markdown(f"#### {section}", elem_classes="sd-settings-heading")
                    for f in fields:
                        components[f.name] = setting_component(f, to_form(f.name, getattr(current, f.name)))
                groups.append(g)
    names = list(components)

    def apply_settings(*values: Any) -> str:
        return handlers.apply_settings(from_form(dict(zip(names, values, strict=True))))

    def show(query: str, chosen: str) -> list[Any]:
        return visibility(query, chosen, by_section)

    apply.click(apply_settings, inputs=[components[n] for n in names], outputs=status)
    reload.click(None, js="() => { window.location.reload(); }")
    view = [*groups, *components.values()]
    search.change(show, inputs=[search, page], outputs=view, queue=False, show_progress="hidden")
    page.change(lambda chosen: ["", *show("", chosen)], inputs=page, outputs=[search, *view], queue=False,
                show_progress="hidden")  # fmt: skip
    return SettingsTab(components, apply, status, search, page)


def controls_slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def current_form_values(handlers: UiHandlers, names: list[str]) -> list[Any]:
    """The settings as they are now (another client or the API may have changed them), in `names` order."""
    settings = handlers.settings_now()
    return [to_form(n, getattr(settings, n)) for n in names]
