"""The small pieces of HTML the UI shows: progress bar, generation info, status lines, notices; and the CSS."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from modules.request import GenerationResult

CHECKPOINT_NAMES = "512-depth-ema.ckpt or 512-depth-ema.safetensors"


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m {rest:02d}s"


def progress_html(progress: dict[str, Any]) -> str:
    """A progress bar with percentage, ETA, sampling step and image number (A1111's /progress fields)."""
    if not progress.get("active"):
        queued = progress.get("queued", 0)
        text = f"Waiting in the queue ({queued} ahead)…" if queued else "Starting…"
        return f'<div class="sd-progress"><div class="sd-progress-text">{text}</div></div>'
    state = progress.get("state", {})
    percent = round(100 * float(progress.get("progress", 0.0)))
    parts = [f"{percent}%"]
    if progress.get("eta_relative", 0) > 0:
        parts.append(f"ETA {_duration(progress['eta_relative'])}")
    if state.get("sampling_steps"):
        parts.append(f"step {state.get('sampling_step', 0)}/{state['sampling_steps']}")
    if state.get("job_count", 0) > 1:
        parts.append(f"image {min(state.get('job_no', 0) + 1, state['job_count'])}/{state['job_count']}")
    if state.get("interrupted"):
        parts.append("interrupting…")
    elif state.get("skipped"):
        parts.append("skipping…")
    text = html.escape(" · ".join(parts))
    return (
        f'<div class="sd-progress" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" '
        f'aria-valuemax="100"><div class="sd-progress-bar" style="width:{percent}%"></div>'
        f'<div class="sd-progress-text">{text}</div></div>'
    )


def error_html(message: str) -> str:
    return f'<div class="sd-error" role="alert"><b>Error:</b> {html.escape(message)}</div>'


def info_html(result: GenerationResult, index: int = 0) -> str:
    """The infotext of image `index` and a footer: time taken, interruption, warnings."""
    if not result.images:
        text = "Interrupted before the first image was done." if result.interrupted else "No images were made."
        return f'<div class="sd-info"><p class="sd-note">{text}</p>{_warnings(result.warnings)}</div>'
    index = min(max(index, 0), len(result.infotexts) - 1)
    footer = [f"Time taken: {_duration(result.timings.get('total', 0.0))}"]
    if result.interrupted:
        footer.append(f"Interrupted: {len(result.images)} image(s) done")
    return (
        f'<div class="sd-info"><pre class="sd-infotext">{html.escape(result.infotexts[index])}</pre>'
        f'<p class="sd-note">{html.escape(" · ".join(footer))}</p>{_warnings(result.warnings)}</div>'
    )


def info_from_text(text: str, note: str = "") -> str:
    """The same look for a stored infotext (after the gallery selection changes)."""
    extra = f'<p class="sd-note">{html.escape(note)}</p>' if note else ""
    return f'<div class="sd-info"><pre class="sd-infotext">{html.escape(text)}</pre>{extra}</div>'


def _warnings(warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f'<ul class="sd-warnings">{items}</ul>'


def status_html(message: str, kind: str = "ok") -> str:
    """A one-line status ('ok', 'busy' or 'error')."""
    return f'<div class="sd-status sd-status-{kind}">{html.escape(message)}</div>'


def no_checkpoint_html(folder: Path) -> str:
    """What to do when there is no checkpoint at all."""
    return (
        '<div class="sd-notice"><b>No checkpoint found.</b> Put the Stable Diffusion 2 depth checkpoint '
        f"(<code>{html.escape(CHECKPOINT_NAMES)}</code>, with its <code>512-depth-ema.yaml</code> beside it) "
        f"into <code>{html.escape(str(folder))}</code> (<code>models/Stable-diffusion/</code>), then press 🔄.</div>"
    )


def png_info_html(text: str, params: dict[str, str]) -> str:
    """PNG Info: the raw parameters text and a table of the parsed keys."""
    if not text:
        return '<div class="sd-info"><p class="sd-note">This image has no generation parameters.</p></div>'
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in params.items()
        if k not in ("Prompt", "Negative prompt")
    )
    return (
        f'<div class="sd-info"><h4>parameters</h4><pre class="sd-infotext">{html.escape(text)}</pre>'
        f'<table class="sd-params">{rows}</table></div>'
    )


CSS = """
.gradio-container { max-width: 100% !important; padding: 0 12px !important; overflow: visible !important;
                    overflow-x: clip !important; }  /* clip, not hidden: the results column can stay in view */
#quicksettings { align-items: flex-end; gap: 8px; flex-wrap: nowrap; }
#quicksettings > .form { flex: 0 1 520px !important; min-width: 320px !important; }
#quicksettings > #checkpoint_status { flex: 1 1 auto !important; min-width: 200px !important; align-self: flex-end; }
.sd-tool { flex: 0 0 42px !important; max-width: 42px !important; min-width: 42px !important; height: 42px;
           padding: 0 !important; align-self: flex-end; font-size: 1.1em; }
#tab_settings .form { max-width: 960px; }
.sd-status { padding: 10px 4px; font-size: 0.9em; }
.sd-status-ok { color: var(--body-text-color); }
.sd-status-busy { color: var(--body-text-color-subdued); }
.sd-status-error { color: #c0392b; font-weight: 600; }
.sd-notice { border: 1px solid #e0b252; background: rgba(224, 178, 82, 0.12); padding: 8px 12px;
             border-radius: 6px; margin: 4px 0; }
.sd-error { color: #c0392b; border: 1px solid #c0392b; background: rgba(192, 57, 43, 0.08);
            padding: 8px 12px; border-radius: 6px; }
.sd-progress { position: relative; height: 22px; border-radius: 6px; overflow: hidden;
               background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.sd-progress-bar { position: absolute; left: 0; top: 0; bottom: 0; background: var(--color-accent);
                   opacity: 0.55; transition: width 0.2s; }
.sd-progress-text { position: relative; text-align: center; font-size: 0.85em; line-height: 22px; }
.sd-info { font-size: 0.9em; }
.sd-infotext { white-space: pre-wrap; word-break: break-word; margin: 0; padding: 6px 0;
               font-family: var(--font); background: none; border: none; }
.sd-note { color: var(--body-text-color-subdued); margin: 2px 0; }
.sd-warnings { color: #b9770e; margin: 4px 0; }
.sd-params { border-collapse: collapse; margin-top: 6px; }
.sd-params th, .sd-params td { border: none !important; padding: 1px 14px 1px 0 !important; font-size: 0.9em;
                               text-align: left; vertical-align: top; }
.sd-params th { font-weight: 600; white-space: nowrap; }
.sd-results { position: sticky; top: 8px; align-self: flex-start; }
.sd-generate-col { min-width: 200px !important; max-width: 260px; }
.sd-generate { min-height: 70px; font-size: 1.2em !important; }
.sd-seed-row { align-items: flex-end; }
.sd-send-row button { font-size: 0.85em; }
"""
