"""A1111's token counter in the corner of each prompt box: "12/75", the limit growing in chunks of 75."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.app.service import Service


def counter_html(count: int, limit: int) -> str:
    over = " sd-token-over" if count > 75 and limit > 75 else ""
    return f'<div class="sd-token-counter{over}" title="tokens / chunk limit (75 per chunk)">{count}/{limit}</div>'


def token_counter(elem_id: str) -> gr.HTML:
    """The counter (build it right above its prompt box: CSS puts it in the box's corner)."""
    return gr.HTML(counter_html(0, 75), elem_id=elem_id, elem_classes="sd-token-counter-box")


def wire_token_counter(service: Service, textbox: Any, counter: gr.HTML) -> None:
    def count(text: str | None) -> str:
        return counter_html(*service.token_count(text or ""))

    textbox.change(count, inputs=textbox, outputs=counter, queue=False, show_progress="hidden")
