"""Prompt prefix: put a fixed text (a style, a trigger word) in front of every prompt, when enabled.

A complete example of the extension interface (see extensions/README.md): per-request arguments
by name (``{"enabled": true, "prefix": "..."}``), a hook that changes the request, an infotext
field, a UI section in the generation tabs and an HTTP route.
"""

from __future__ import annotations

import dataclasses

NAME = "prompt_prefix"


def add_prefix(request, args):
    """before_process: return a changed copy of the request (or None to leave it)."""
    if not args.get("enabled") or not args.get("prefix"):
        return None
    return dataclasses.replace(request, prompt=f"{args['prefix']}, {request.prompt}".strip(", "))


def infotext(request, args):
    """Extra "Key: value" pairs written into each image's parameters."""
    return {"Prompt prefix": args["prefix"]} if args.get("enabled") and args.get("prefix") else {}


def ui_section():
    """Controls shown in the img2img / inpaint / txt2img tabs; their values become this extension's args."""
    import gradio as gr

    with gr.Row():
        enabled = gr.Checkbox(label="Enable prompt prefix", value=False)
        prefix = gr.Textbox(label="Prefix", placeholder="e.g. oil painting, impasto")
    return {"enabled": enabled, "prefix": prefix}


def app_started(app):
    """Add an HTTP route: GET /prompt-prefix/preview?prompt=...&prefix=..."""

    @app.fastapi.get("/prompt-prefix/preview")
    def preview(prompt: str = "", prefix: str = "") -> dict:
        return {"prompt": f"{prefix}, {prompt}".strip(", ") if prefix else prompt}


def register(ext):
    ext.before_process(add_prefix)
    ext.infotext_fields(infotext)
    ext.add_ui_section("*", "Prompt prefix", ui_section)
    ext.on_app_started(app_started)
