"""The small pieces of HTML the UI shows: progress bar, generation info, status lines, notices; and the CSS."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from modules.core.request import GenerationResult
from modules.frontends.ui.outputs import grid_first

CHECKPOINT_NAMES = "512-depth-ema.ckpt or 512-depth-ema.safetensors"
ETA_AFTER_STEPS, ETA_AFTER_FRACTION = 3, 0.05  # "estimating…" until this many steps and this much of the job
GRID_NOTE = "The first image is the grid: select a cell for its own parameters and depth map"


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
    if _steps_run(state) < ETA_AFTER_STEPS or float(progress.get("progress", 0.0)) < ETA_AFTER_FRACTION:
        # the first steps carry the loading and warm-up: an ETA from them is far too long
        parts.append("ETA estimating…")
    elif progress.get("eta_relative", 0) > 0:
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


def _steps_run(state: dict[str, Any]) -> int:
    """Sampling steps done in this job so far (earlier images' steps included)."""
    return int(state.get("job_no", 0)) * int(state.get("sampling_steps", 0)) + int(state.get("sampling_step", 0))


def stopped_text(state: dict[str, Any] | None, done: int) -> str:
    """"stopped at step 11/30 of image 1/3" from the job's last counters (or the images done without them)."""
    if not state or not state.get("sampling_steps"):
        return f"Interrupted: {done} image(s) done"
    count = max(1, int(state.get("job_count") or 1))
    image = min(int(state.get("job_no", 0)) + 1, count)
    return f"Interrupted: stopped at step {state.get('sampling_step', 0)}/{state['sampling_steps']} of image {image}/{count}"


def error_html(message: str) -> str:
    return f'<div class="sd-error" role="alert"><b>Error:</b> {html.escape(message)}</div>'


def info_html(result: GenerationResult, index: int = 0, stopped: dict[str, Any] | None = None) -> str:
    """The infotext of image `index` and a footer: time taken, where an interrupted job stopped, warnings."""
    if not result.images:
        text = "No images were made."
        if result.interrupted:
            text = stopped_text(stopped, 0) + " (no image was done)." if stopped else "Interrupted before the first image was done."
        return f'<div class="sd-info"><p class="sd-note">{text}</p>{_warnings(result.warnings)}</div>'
    index = min(max(index, 0), len(result.infotexts) - 1)
    footer = [f"Time taken: {_duration(result.timings.get('total', 0.0))}"]
    if grid_first(result):
        footer.append(GRID_NOTE)
    if result.interrupted:
        footer.append(stopped_text(stopped, len(result.images)))
    return (
        f'<div class="sd-info"><pre class="sd-infotext">{html.escape(result.infotexts[index])}</pre>'
        f'<p class="sd-note">{html.escape(" · ".join(footer))}</p>{_warnings(result.warnings)}</div>'
    )


def info_from_text(text: str, note: str = "", warnings: list[str] | None = None) -> str:
    """The same look for a stored infotext (after the gallery selection changes), warnings kept in view."""
    extra = f'<p class="sd-note">{html.escape(note)}</p>' if note else ""
    return f'<div class="sd-info"><pre class="sd-infotext">{html.escape(text)}</pre>{extra}{_warnings(warnings or [])}</div>'


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


def _bar(percent: int, text: str) -> str:
    return (
        f'<div class="sd-progress" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" '
        f'aria-valuemax="100"><div class="sd-progress-bar" style="width:{percent}%"></div>'
        f'<div class="sd-progress-text">{html.escape(text)}</div></div>'
    )


def batch_progress_html(counts: dict[str, int], total: int, progress: dict[str, Any]) -> str:
    """The batch's own bar (files done of all, counts), then the bar of the image being made."""
    finished = sum(counts.values())
    current = float(progress.get("progress", 0.0)) if progress.get("active") else 0.0
    percent = round(100 * min(1.0, (finished + current) / max(1, total)))
    text = (f"Batch: {finished}/{total} files · {counts.get('done', 0)} done, {counts.get('skipped', 0)} skipped, "
            f"{counts.get('failed', 0)} failed")  # fmt: skip
    image = progress_html(progress) if finished < total else ""
    return f'<div class="sd-batch-progress">{_bar(percent, text)}{image}</div>'


def batch_summary_html(report: Any, total: int, output_dir: Path) -> str:
    """What a finished batch did: counts, then the files by outcome (failures in red, with the reason)."""
    head = (f"{report.count('done')} done, {report.count('skipped')} skipped (output exists), "
            f"{report.count('failed')} failed, of {total} in {_duration(report.seconds)}")  # fmt: skip
    if report.interrupted:
        head += f"; interrupted with {total - len(report.outcomes)} not started (Generate again to resume)"
    rows = []
    for status, title in (("done", "Done"), ("skipped", "Skipped")):
        names = [o.item.image.name for o in report.outcomes if o.status == status]
        if names:
            rows.append(f'<li class="sd-batch-{status}"><b>{title}:</b> {html.escape(", ".join(names))}</li>')
    rows += [
        f'<li class="sd-batch-failed"><b>Failed: {html.escape(o.item.image.name)}</b> — {html.escape(o.message)}</li>'
        for o in report.failed
    ]
    notes = [o for o in report.outcomes if o.status == "done" and o.message]
    rows += [f'<li class="sd-warnings">{html.escape(o.item.image.name)}: {html.escape(o.message)}</li>' for o in notes]
    return (
        f'<div class="sd-info sd-batch-summary"><p><b>Batch finished:</b> {html.escape(head)}.</p>'
        f'<p class="sd-note">Outputs in <code>{html.escape(str(output_dir))}</code></p><ul>{"".join(rows)}</ul></div>'
    )


def extensions_table_html(rows: list[dict[str, Any]], restart: set[str] | None = None) -> str:
    """The Extensions tab's table: name, built-in or user, state (a load error in red), description, path."""
    if not rows:
        return (
            '<p class="sd-note">No extensions found (put one folder per extension into <code>extensions/</code>).</p>'
        )
    body = []
    for row in rows:
        if row.get("error"):
            state = f'<span class="sd-ext-error">error: {html.escape(str(row["error"]))}</span>'
        elif not row.get("enabled"):
            state = "disabled"
        elif row["name"] in (restart or set()):
            state = "enabled: restart to load"
        else:
            state = '<span class="sd-ext-enabled">enabled</span>'
        kind = "built-in" if row.get("builtin") else "user"
        body.append(
            f"<tr><td><b>{html.escape(row['name'])}</b></td><td>{kind}</td><td>{state}</td>"
            f"<td>{html.escape(row.get('description') or '')}</td><td><code>{html.escape(row.get('path') or '')}</code></td></tr>"
        )
    head = "<tr><th>Extension</th><th>Type</th><th>State</th><th>Description</th><th>Path</th></tr>"
    return f'<table class="sd-extensions"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


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
.sd-batch-progress { display: flex; flex-direction: column; gap: 4px; }
.sd-batch-summary ul { margin: 4px 0; padding-left: 18px; }
.sd-batch-failed, .sd-ext-error { color: #c0392b; }
.sd-extensions { border-collapse: collapse; width: 100%; font-size: 0.9em; border: none !important; }
.sd-extensions tr { border: none !important; }
.sd-extensions th, .sd-extensions td { text-align: left; vertical-align: top; padding: 6px 12px 6px 0 !important;
                                       border: none !important;
                                       border-bottom: 1px solid var(--border-color-primary) !important; }
.sd-extensions th { font-weight: 600; }
.sd-extensions td:nth-child(-n+2) { white-space: nowrap; }
.sd-ext-enabled { color: #1e8449; }
.sd-extensions code { font-size: 0.85em; word-break: break-all; }
.sd-prompts { position: relative; }
.sd-token-counter-box { height: 0 !important; min-height: 0 !important; overflow: visible !important;
                        padding: 0 !important; margin: 0 !important; z-index: 5; align-self: flex-end; }
.sd-token-counter { position: relative; top: 6px; right: 8px; float: right; font-size: 0.8em; padding: 1px 6px;
                    border-radius: 4px; background: var(--block-background-fill); color: var(--body-text-color-subdued);
                    border: 1px solid var(--border-color-primary); }
.sd-token-over { color: #b9770e; }
.sd-tool.sd-icon-text { font-size: 0.72em !important; flex: 0 0 auto !important; max-width: none !important;
                        min-width: 52px !important; padding: 0 6px !important; }
#settings_search_row { align-items: flex-end; }
.sd-setting-hidden { display: none !important; }
"""
