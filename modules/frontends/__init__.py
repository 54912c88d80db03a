"""frontends: the A1111-compatible HTTP API (``api``), the Gradio web UI (``ui``), the folder batch
(``batch``: plan, runner, CLI) and ``server`` (the FastAPI app they are mounted on).

May import: modules.app and modules.core (never torch, models or generation directly).
"""
