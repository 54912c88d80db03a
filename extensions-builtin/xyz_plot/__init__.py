"""X/Y/Z plot: the same job over a grid of settings (denoising strength x checkpoint, samplers, seeds...).

Script title "X/Y/Z plot". Arguments (UI controls, or the API's ``script_args`` object):
``x_type``, ``x_values``, ``y_type``, ``y_values``, ``z_type``, ``z_values`` (absent axes allowed),
``draw_legend`` (default true), ``include_cells`` (default true: every cell follows the grid).
Values are lists (``0.4,0.6,0.8,1.0``, quotes protect commas) or ranges (``1-5``, ``1-9 (+2)``,
``0.4-1.0 (+0.2)``, ``1-10 [4]`` for 4 evenly spaced values).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modules.app.extensions import Script
from modules.core.hooks import ScriptRunner
from modules.core.request import GenerationRequest, GenerationResult

from . import axes, grid

TITLE = "X/Y/Z plot"


def plan(request: GenerationRequest, args: dict[str, Any]):
    """The three axes with their values, validated before anything is generated."""
    return [axes.parse_axis(args.get(f"{w}_type"), args.get(f"{w}_values"), w) for w in ("x", "y", "z")]


def cell_requests(request: GenerationRequest, planned) -> list[tuple[tuple[int, int, int], GenerationRequest]]:
    """One request per (z, y, x) cell, with one shared seed unless the seed is an axis."""
    base = dataclasses.replace(request, seed=axes.fixed_seed(request.seed), override_settings_restore_afterwards=False)
    (xa, xs), (ya, ys), (za, zs) = planned
    cells = []
    for zi, zv in enumerate(zs):
        for yi, yv in enumerate(ys):
            for xi, xv in enumerate(xs):
                r = base
                for axis, value in ((za, zv), (ya, yv), (xa, xv)):
                    r = axis.apply(r, value)
                cells.append(((zi, yi, xi), r))
    return cells


def _model_of(req: GenerationRequest) -> str:
    return str(req.override_settings.get("sd_model_checkpoint") or "")


def run(request: GenerationRequest, args: dict[str, Any], runner: ScriptRunner) -> GenerationResult:
    planned = plan(request, args)
    cells = cell_requests(request, planned)
    # generate grouped by checkpoint so each model is loaded once; place results by position
    order = sorted(range(len(cells)), key=lambda i: _model_of(cells[i][1]))
    done: dict[tuple[int, int, int], GenerationResult] = {}
    warnings: list[str] = []
    interrupted = False
    for i in order:
        pos, req = cells[i]
        if runner.interrupted():
            interrupted = True
            break
        res = runner.process(req)
        done[pos] = res
        warnings += [w for w in res.warnings if w not in warnings]
        if res.interrupted:
            interrupted = True
            break
    return assemble(request, args, planned, cells, done, runner, warnings, interrupted)


def assemble(request, args, planned, cells, done, runner, warnings, interrupted) -> GenerationResult:
    """The labelled grid first, then every cell with its own infotext."""
    (xa, xs), (ya, ys), (za, zs) = planned
    result = GenerationResult(warnings=warnings, interrupted=interrupted, width=request.width, height=request.height)
    positions = [pos for pos, _ in cells if pos in done]
    if not positions:
        return result
    first = done[positions[0]]
    h, w = first.images[0].shape[:2]
    blank = first.images[0] * 0 + 255
    legend = args.get("draw_legend", True) not in (False, "false", 0)
    panels, titles = [], []
    for zi, zv in enumerate(zs):
        rows = [[done[(zi, yi, xi)].images[0] if (zi, yi, xi) in done else blank for xi in range(len(xs))]
                for yi in range(len(ys))]  # fmt: skip
        x_labels = [xa.label(xa.name, v) if legend else "" for v in xs]
        y_labels = [ya.label(ya.name, v) if legend else "" for v in ys]
        panels.append(grid.draw_grid(rows, x_labels, y_labels))
        titles.append(za.label(za.name, zv) if legend else "")
    picture = grid.join_panels(panels, titles, w, h)
    text = first.infotexts[0]
    path = runner.save_grid(picture, request, text)
    result.grid = picture
    result.images.append(picture)
    result.infotexts.append(text)
    result.seeds.append(first.seeds[0])
    result.subseeds.append(first.subseeds[0])
    result.prompts.append(request.prompt)
    result.negative_prompts.append(request.negative_prompt)
    result.model_name, result.model_hash = first.model_name, first.model_hash
    if path:
        result.saved_paths.append(path)
    if args.get("include_cells", True) not in (False, "false", 0):
        for pos, _ in cells:
            if pos not in done:
                continue
            cell = done[pos]
            result.images += cell.images
            result.infotexts += cell.infotexts
            result.seeds += cell.seeds
            result.subseeds += cell.subseeds
            result.prompts += cell.prompts
            result.negative_prompts += cell.negative_prompts
            result.depth_maps += cell.depth_maps
            result.saved_paths += cell.saved_paths
    return result


def axis_choices(axis_type: str | None, checkpoints: Any = None) -> list[str]:
    """The names an enumerated axis takes (📒 and the dropdown): samplers, schedules, checkpoints..."""
    if axis_type == "Checkpoint name":
        return [str(t) for t in checkpoints()] if checkpoints is not None else []
    axis = axes.AXES.get(axis_type or "")
    return list(axis.choices()) if axis is not None and axis.choices is not None else []


def fill_text(axis_type: str | None, checkpoints: Any = None) -> str:
    """📒: every value of the axis, quoted where a name holds a comma."""
    return ", ".join(f'"{n}"' if "," in n else n for n in axis_choices(axis_type, checkpoints))


def ui_for(checkpoints: Any) -> Any:
    """The script's controls; `checkpoints()` lists the checkpoint titles (the service's, once the app started)."""

    def ui(tab: str) -> dict[str, Any]:
        import gradio as gr

        names = list(axes.AXES)
        controls: dict[str, Any] = {}
        defaults = {"x": "Denoising", "y": "Nothing", "z": "Nothing"}
        for which in ("x", "y", "z"):
            with gr.Row(equal_height=False):
                kind = gr.Dropdown(names, value=defaults[which], label=f"{which.upper()} type", scale=2,
                                   min_width=160)  # fmt: skip
                values = gr.Textbox(value="0.4,0.6,0.8,1.0" if which == "x" else "", label=f"{which.upper()} values",
                                    scale=4)  # fmt: skip
                pick = gr.Dropdown([], value=[], multiselect=True, label=f"{which.upper()} choices", visible=False,
                                   scale=4, elem_id=f"{tab}_xyz_{which}_choices")  # fmt: skip
                fill = gr.Button("📒", elem_id=f"{tab}_xyz_{which}_fill", elem_classes=["sd-tool", "sd-icon"],
                                 size="sm", min_width=42)  # fmt: skip
            fill.click(lambda t: fill_text(t, checkpoints) or gr.skip(), inputs=kind, outputs=values, queue=False)
            kind.change(lambda t: gr.update(choices=axis_choices(t, checkpoints), value=[],
                                            visible=bool(axis_choices(t, checkpoints))),
                        inputs=kind, outputs=pick, queue=False)  # fmt: skip
            pick.input(lambda chosen: ", ".join(chosen or []), inputs=pick, outputs=values, queue=False)
            controls[f"{which}_type"], controls[f"{which}_values"] = kind, values
        with gr.Row():
            for a, b in (("x", "y"), ("y", "z"), ("x", "z")):
                swap = gr.Button(f"⇅ {a.upper()}/{b.upper()}", size="sm", elem_id=f"{tab}_xyz_swap_{a}{b}",
                                 min_width=70)  # fmt: skip
                pair = [controls[f"{a}_type"], controls[f"{a}_values"], controls[f"{b}_type"], controls[f"{b}_values"]]
                swap.click(lambda ta, va, tb, vb: (tb, vb, ta, va), inputs=pair, outputs=pair, queue=False)
        with gr.Row():
            controls["draw_legend"] = gr.Checkbox(value=True, label="Draw legend")
            controls["include_cells"] = gr.Checkbox(value=True, label="Include sub images")
        return controls

    return ui


def register(ext) -> None:
    checkpoints: dict[str, Any] = {}
    ext.on_app_started(lambda app: checkpoints.update(service=app.service))

    def titles() -> list[str]:
        service = checkpoints.get("service")
        return [c.title for c in service.checkpoints()] if service is not None else []

    ext.add_script(Script(TITLE, run, ui=ui_for(titles), tabs=("img2img", "inpaint", "txt2img")))
