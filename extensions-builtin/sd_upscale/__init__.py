"""SD upscale: upscale the img2img input, then img2img it tile by tile with blended seams.

Script title "SD upscale" (the API finds it as "sd upscale" too).  Arguments by name: ``overlap``
(pixels, default 64), ``upscaler`` (a name from /sdapi/v1/upscalers, or its index), ``scale_factor``
(default 2); or A1111's positional ``script_args`` ``["", overlap, upscaler_index, scale_factor]``.
Tiles are the request's width x height.  With the depth model every tile is conditioned on its crop
of one depth map of the whole upscaled picture (see modules/generation/sd_upscale.py).
"""

from __future__ import annotations

from typing import Any

from modules.app.extensions import Script
from modules.generation import sd_upscale


def ui(tab: str) -> dict[str, Any]:
    """Overlap, scale factor and upscaler (any name /sdapi/v1/upscalers lists)."""
    import gradio as gr

    gr.Markdown("Will upscale the image by the selected scale factor; use width and height to set the tile size.")
    return {
        "overlap": gr.Slider(0, 256, value=64, step=16, label="Tile overlap"),
        "scale_factor": gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Scale Factor"),
        "upscaler": gr.Dropdown(
            ["None", "Lanczos", "Nearest"], value="None", label="Upscaler", allow_custom_value=True
        ),  # fmt: skip
    }


def register(ext) -> None:
    ext.add_script(Script(sd_upscale.TITLE, sd_upscale.run, ui=ui, tabs=("img2img",), positional=sd_upscale.POSITIONAL))
