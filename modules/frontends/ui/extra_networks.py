"""The UI for what A1111 users bring: the SD VAE quicksetting, Styles and Tiling under the prompt, and
the Extra Networks panel (cards for LoRA, embeddings and checkpoints; a click inserts into the prompt).

Everything goes through ``service.extra_networks`` (app layer); mounted by a few lines in ``blocks``
(the VAE dropdown in the top bar) and ``tabs`` (``prompt_tools`` under each tab's prompt row).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.app.service import Service
from modules.core.errors import UserError
from modules.frontends.ui.controls import PromptRow

KINDS = {"Lora": "lora", "Textual Inversion": "embedding", "Checkpoints": "checkpoint"}


# --- the SD VAE quicksetting ------------------------------------------------------------------------


def vae_dropdown(service: Service) -> gr.Dropdown:
    """ "SD VAE" beside the checkpoint dropdown (Automatic, None, the files of models/VAE), with its own 🔄."""
    extra = service.extra_networks
    dropdown = gr.Dropdown(extra.vae_choices(), value=service.settings.sd_vae, label="SD VAE", elem_id="sd_vae",
                           scale=2, min_width=200)  # fmt: skip
    refresh = gr.Button("🔄", elem_id="refresh_sd_vae", elem_classes=["sd-tool", "sd-icon"], size="sm", min_width=42)

    def choose(choice: str) -> Any:
        try:
            service.update_settings({"sd_vae": choice})
        except UserError as e:
            gr.Warning(str(e))
        return gr.update(value=service.settings.sd_vae)

    def rescan() -> Any:
        extra.refresh_vae()
        return gr.update(choices=extra.vae_choices(), value=service.settings.sd_vae)

    dropdown.select(choose, inputs=dropdown, outputs=dropdown, show_progress="hidden", trigger_mode="always_last")
    refresh.click(rescan, outputs=dropdown, show_progress="hidden")
    return dropdown


# --- Styles, Tiling and the Extra Networks panel under a tab's prompt ----------------------------------


@dataclass
class PromptTools:
    styles: gr.Dropdown
    tiling: gr.Checkbox
    fields: dict[str, Any]  # "styles", "tiling": what Generate reads


def prompt_tools(tab: str, service: Service, row: PromptRow) -> PromptTools:
    """Styles (with apply-to-prompt), Tiling, and the Extra Networks accordion for one generation tab."""
    extra = service.extra_networks
    with gr.Row(elem_id=f"{tab}_styles_row"):
        styles = gr.Dropdown(extra.style_names(), value=[], multiselect=True, label="Styles", elem_id=f"{tab}_styles",
                             scale=4)  # fmt: skip
        apply = gr.Button("📋", elem_id=f"{tab}_style_apply", elem_classes=["sd-tool", "sd-icon"], size="sm",
                          min_width=42)  # fmt: skip
        refresh = gr.Button("🔄", elem_id=f"{tab}_styles_refresh", elem_classes=["sd-tool", "sd-icon"], size="sm",
                            min_width=42)  # fmt: skip
        tiling = gr.Checkbox(False, label="Tiling", elem_id=f"{tab}_tiling", scale=1, min_width=100)
    apply.click(lambda p, n, names: (*extra.apply_styles(p, n, names), []),
                inputs=[row.prompt, row.negative_prompt, styles], outputs=[row.prompt, row.negative_prompt, styles],
                show_progress="hidden")  # fmt: skip
    refresh.click(lambda: gr.update(choices=extra.style_names()), outputs=styles, show_progress="hidden")
    networks_panel(tab, service, row)
    return PromptTools(styles, tiling, {"styles": styles, "tiling": tiling})


def card_html(card: dict[str, Any]) -> str:
    """One card: the preview (or the name's first letter), the name, the trigger text."""
    name, desc = html.escape(card["name"]), html.escape(card["description"] or "")
    picture = (f'<img src="{card["preview"]}" alt="">' if card["preview"]
               else f'<div class="sd-card-empty">{html.escape(card["name"][:1].upper())}</div>')  # fmt: skip
    return (f'<div class="sd-card" data-kind="{card["kind"]}" title="{html.escape(card["insert"])}">{picture}'
            f'<div class="sd-card-name">{name}</div><div class="sd-card-desc">{desc}</div></div>')  # fmt: skip


def insert_text(prompt: str, text: str) -> str:
    """The prompt with `text` added at its end (once: a second click on the same card takes it out, as A1111)."""
    prompt = prompt or ""
    if text in prompt:
        return " ".join(prompt.replace(text, "").split())
    return f"{prompt.rstrip()} {text}".strip() if prompt.strip() else text


def networks_panel(tab: str, service: Service, row: PromptRow) -> None:
    """The "Extra Networks" accordion: a tab of cards per kind, search, refresh; a card click inserts its text."""
    extra = service.extra_networks
    with gr.Accordion("Extra Networks", open=False, elem_id=f"{tab}_extra_networks"):
        with gr.Row():
            search = gr.Textbox(label="Search", placeholder="Search...", elem_id=f"{tab}_extra_search", scale=4)
            refresh = gr.Button("🔄 Refresh", elem_id=f"{tab}_extra_refresh", size="sm", scale=1)
        views = []
        for label, kind in KINDS.items():
            with gr.Tab(label, elem_id=f"{tab}_{kind}_cards_tab"):
                cards = gr.State(extra.cards(kind))
                dataset = gr.Dataset(components=[gr.HTML(visible=False)], samples=_samples(cards.value),
                                     label=None, samples_per_page=24, elem_id=f"{tab}_{kind}_cards",
                                     elem_classes=["sd-cards"], type="index")  # fmt: skip
                views.append((kind, cards, dataset))
                _wire_card_click(service, kind, dataset, cards, row)

    def reload(text: str, do_refresh: bool):
        if do_refresh:
            extra.refresh_cards()
        out = []
        for kind, _cards, _dataset in views:
            found = extra.cards(kind, text or "")
            out += [found, gr.update(samples=_samples(found))]
        return out

    outputs = [c for _kind, cards, dataset in views for c in (cards, dataset)]
    search.change(lambda t: reload(t, False), inputs=search, outputs=outputs, show_progress="hidden")
    refresh.click(lambda t: reload(t, True), inputs=search, outputs=outputs, show_progress="hidden")


def _samples(cards: list[dict[str, Any]]) -> list[list[str]]:
    return [[card_html(c)] for c in cards] or [['<div class="sd-card-none">Nothing here yet</div>']]


def _wire_card_click(service: Service, kind: str, dataset: gr.Dataset, cards: gr.State, row: PromptRow) -> None:
    def click(index: int | None, shown: list[dict[str, Any]], prompt: str) -> Any:
        if index is None or not 0 <= index < len(shown):
            return gr.update()
        card = shown[index]
        if kind == "checkpoint":
            try:
                service.select_checkpoint(card["insert"])
                gr.Info(f"Loaded {card['insert']}")
            except UserError as e:
                gr.Warning(str(e))
            return gr.update()
        return insert_text(prompt, card["insert"])

    dataset.click(click, inputs=[dataset, cards, row.prompt], outputs=row.prompt, show_progress="hidden")


CSS = """
.sd-cards .sd-card { width: 150px; display: inline-flex; flex-direction: column; gap: 2px; cursor: pointer; }
.sd-card img, .sd-card-empty { width: 150px; height: 110px; object-fit: cover; border-radius: 6px; }
.sd-card-empty { display: flex; align-items: center; justify-content: center; font-size: 40px; opacity: .5;
                 background: var(--background-fill-secondary); }
.sd-card-name { font-weight: 600; word-break: break-all; }
.sd-card-desc { font-size: 0.8em; opacity: .75; max-height: 3em; overflow: hidden; }
"""
