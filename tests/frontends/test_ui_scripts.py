"""Scripts, extension sections / tabs, the Extensions tab and the img2img Batch sub-tab, without a browser.

The handlers run over a real Service with the built-in extensions (X/Y/Z plot, prompt_prefix) plus
test extensions written into the data folder: one whose hook raises, a script that raises, a UI
builder that raises, and one disabled when the server starts.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules.app import bootstrap
from modules.app import options as cmd_args
from modules.core import images
from modules.core.errors import ValidationError
from modules.core.request import GenerationResult
from modules.frontends.ui import batch, build_ui, forms, make_handlers, render, tabs
from modules.frontends.ui.outputs import ShownResult, depth_slots, grid_first
from tests.helpers.server import populate

W, H = 96, 64
XYZ = "X/Y/Z plot"

FLAKY = '''
"""Flaky: a hook that raises when asked to, a script that always raises, a working tab."""
import gradio as gr
from modules.app.extensions import Script


def on_step(step, args):
    if args.get("explode"):
        raise RuntimeError("the latents exploded")


def broken_run(request, args, runner):
    raise RuntimeError(f"the plot broke ({args.get('how')})")


def broken_ui(tab):
    return {"how": gr.Textbox(label="How to break", value="badly")}


def register(ext):
    ext.on_step(on_step)
    ext.add_ui_section("*", "Flaky", lambda: {"explode": gr.Checkbox(label="Explode", value=False)})
    ext.add_script(Script("Broken script", broken_run, ui=broken_ui, tabs=("img2img",)))
    ext.add_ui_tab("Flaky tab", lambda service: gr.Markdown(f"{len(service.checkpoints())} checkpoint(s) here"))
'''

BROKEN_UI = '''
"""Broken UI: its section and its tab fail to build."""


def bad_section():
    raise ValueError("no controls today")


def bad_tab(service):
    raise KeyError("tab")


def register(ext):
    ext.add_ui_section("inpaint", "Broken section", bad_section)
    ext.add_ui_tab("Broken tab", bad_tab)
'''

SLEEPER = '''
"""Sleeper: disabled when the server starts."""


def register(ext):
    pass
'''


def picture(seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 / W, yy * 255 / H, (xx + yy) * 127 / (W + H)], -1)
    return np.clip(base + rng.randint(-20, 20, (H, W, 3)), 0, 255).astype(np.uint8)


def save(folder: Path, arr: np.ndarray, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(folder / name)
    return str(folder / name)


def base_values(**kw) -> dict:
    values = {"prompt": "a house", "negative_prompt": "", "sampler_name": "DDIM", "scheduler": "Automatic",
              "steps": 3, "width": W, "height": H, "n_iter": 1, "batch_size": 1, "cfg_scale": 5.0, "seed": 11,
              "seed_extra": False, "resize_mode": "Just resize", "denoising_strength": 0.6,
              "depth_source": forms.DEPTH_MIDAS, "depth_map": None, "depth_invert": False}  # fmt: skip
    values.update(kw)
    return values


def final(generator) -> tuple:
    *_, last = list(generator)
    return last


# --- request building (pure) -------------------------------------------------------------------------


def test_request_gets_the_selected_script_and_its_args_only(tmp_path):
    path = save(tmp_path, picture(), "in.png")
    xyz = {"x_type": "Denoising", "x_values": "0.4,1.0", "y_type": "Nothing", "y_values": "", "draw_legend": True}
    values = base_values(init_image=path, script_name=XYZ, script_args={XYZ: xyz, "Other": {"n": 3}})
    req = forms.build_request("img2img", values, scripts=[XYZ, "Other"])
    assert req.script_name == XYZ and req.script_args == xyz
    req.script_args["x_values"] = "changed"
    assert xyz["x_values"] == "0.4,1.0"  # a copy: the request owns its args
    for none in ("None", None, ""):
        req = forms.build_request("img2img", {**values, "script_name": none}, scripts=[XYZ])
        assert req.script_name is None and req.script_args == {}
    with pytest.raises(ValidationError) as e:
        forms.build_request("img2img", {**values, "script_name": "Other"}, scripts=[XYZ])
    assert e.value.field == "script_name" and "X/Y/Z plot" in e.value.message


def test_extension_sections_become_extension_args_for_their_tabs(tmp_path):
    path = save(tmp_path, picture(), "in.png")
    sections = [("*", "prompt_prefix", {"enabled": True, "prefix": "oil"}), ("inpaint", "masker", {"feather": 3}),
                ("img2img", "prompt_prefix", {"weight": 0.5}), ("txt2img", "txt_only", {"x": 1})]  # fmt: skip
    req = forms.build_request("img2img", base_values(init_image=path, extension_sections=sections))
    assert req.extension_args == {"prompt_prefix": {"enabled": True, "prefix": "oil", "weight": 0.5}}
    mask = save(tmp_path, np.full((H, W), 255, np.uint8), "mask.png")
    req = forms.build_request("inpaint_upload", base_values(inpaint_image=path, inpaint_mask=mask,
                                                              extension_sections=sections))  # fmt: skip
    assert req.extension_args == {"prompt_prefix": {"enabled": True, "prefix": "oil"}, "masker": {"feather": 3}}
    req = forms.build_request("img2img", base_values(init_image=path))
    assert req.extension_args == {} and req.script_name is None


def test_depth_maps_line_up_with_a_grid():
    cells = [np.full((H, W, 3), i, np.uint8) for i in range(2)]
    grid = np.zeros((H + 20, 2 * W, 3), np.uint8)
    assert grid_first(GenerationResult(images=[grid.copy(), *cells], grid=grid))  # a script's: shown first
    assert not grid_first(GenerationResult(images=cells, grid=grid))  # a plain batch's: saved, not shown
    assert not grid_first(GenerationResult(images=cells))
    assert depth_slots(3, ["d1", "d2"], grid=True) == [None, "d1", "d2"]
    assert depth_slots(2, ["d1", "d2"], grid=False) == ["d1", "d2"]
    assert depth_slots(1, [], grid=True) == [None]  # a grid without its cells
    assert depth_slots(3, [], grid=False) == [None, None, None]  # e.g. txt2img on a base model


# --- over a real Service ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, depth_ckpt) -> Path:
    root = tmp_path_factory.mktemp("ui-scripts")
    populate(root, depth_ckpt)
    for name, source in (("flaky", FLAKY), ("broken_ui", BROKEN_UI), ("sleeper", SLEEPER)):
        (root / "extensions" / name).mkdir(parents=True)
        (root / "extensions" / name / "__init__.py").write_text(textwrap.dedent(source), "utf-8")
    (root / "config.json").write_text(json.dumps({"disabled_extensions": ["sleeper"]}), "utf-8")
    return root


@pytest.fixture(scope="module")
def service(data_dir):
    args = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", "--log-level", "WARNING"])
    svc = bootstrap.create_service(args)
    svc.select_checkpoint("tiny-depth")
    yield svc
    svc.worker.stop()


@pytest.fixture(scope="module")
def handlers(service, tmp_path_factory):
    return make_handlers(service, tmp_path_factory.mktemp("ui-scripts-outputs"))


def _img2img_tab(handlers) -> tabs.TabControls:
    with gr.Blocks():
        return tabs.build_img2img_tab(handlers)


def _component_values(inputs: tabs.GenerationInputs) -> list:
    return [getattr(c, "value", None) for c in inputs.components]


def test_script_dropdown_groups_and_sections_are_built_per_tab(handlers):
    tab = _img2img_tab(handlers)
    scripts = tab.scripts
    assert scripts.dropdown.label == "Script" and scripts.dropdown.value == "None"
    others = {"SD upscale"}  # issue 19's built-in script, offered in img2img too
    assert [c[0] for c in scripts.dropdown.choices if c[0] not in others] == ["None", XYZ, "Broken script"]
    assert [t for t in scripts.titles("inpaint") if t not in others] == [XYZ]
    assert [t for t in scripts.titles("img2img") if t not in others] == [XYZ, "Broken script"]
    assert all(group.visible is False for group in scripts.groups.values())
    assert set(scripts.args[XYZ]) >= {"x_type", "x_values", "y_type", "y_values", "draw_legend", "include_cells"}
    titles = {s.extension: s.accordion.label for s in tab.sections}
    assert titles == {"prompt_prefix": "Prompt prefix", "flaky": "Flaky", "broken_ui": "Broken section"}
    broken = next(s for s in tab.sections if s.extension == "broken_ui")
    assert broken.args == {} and broken.accordion.visible is False  # an inpaint section, img2img shown first
    # Generate's inputs come back by name: the script's args under its title, each section's under its extension
    inputs = tabs.GenerationInputs.of(tab)
    values = inputs.values(_component_values(inputs))
    assert values["script_name"] == "None" and values["prompt"] is None and values["denoising_strength"] == 0.75
    assert values["script_args"][XYZ]["x_type"] == "Denoising" and values["script_args"]["Broken script"] == {
        "how": "badly"
    }
    assert ("*", "prompt_prefix", {"enabled": False, "prefix": None}) in values["extension_sections"]
    assert ("*", "flaky", {"explode": False}) in values["extension_sections"]


def test_txt2img_offers_only_its_scripts(handlers):
    with gr.Blocks():
        tab = tabs.build_txt2img_tab(handlers)
    assert [c[0] for c in tab.scripts.dropdown.choices] == ["None", XYZ]
    assert {s.extension for s in tab.sections} == {"prompt_prefix", "flaky"}


def test_xyz_plot_through_the_handler_shows_grid_then_cells(handlers, tmp_path):
    path = save(tmp_path, picture(), "in.png")
    xyz = {"x_type": "Denoising", "x_values": "0.4,1.0", "y_type": "Nothing", "y_values": "", "z_type": "Nothing",
           "z_values": "", "draw_legend": True, "include_cells": True}  # fmt: skip
    values = base_values(init_image=path, script_name=XYZ, script_args={XYZ: xyz})
    gallery, depth_image, info, progress, shown, selected = final(handlers.generate("img2img", values))
    assert len(gallery) == 3 and progress == "" and selected == 0
    grid, cell = (np.asarray(Image.open(p)) for p in gallery[:2])
    assert cell.shape == (H, W, 3) and grid.shape[1] >= 2 * W and grid.shape[0] > H  # + the legend
    assert depth_image is None and "select a cell" in info and "Time taken" in info
    result = ShownResult.from_dict(shown)
    assert result.grid and result.depth_maps[0] is None and all(result.depth_maps[1:])
    for i, strength in ((1, 0.4), (2, 1.0)):
        assert f"Denoising strength: {strength:g}" in result.infotexts[i]
        assert images.read_infotext(Path(gallery[i]).read_bytes()) == result.infotexts[i]
        depth_i, info_i = handlers.select_image(shown, i)
        assert depth_i == result.depth_maps[i] and f"Denoising strength: {strength:g}" in info_i
        assert np.asarray(Image.open(depth_i)).shape == (H, W)
    depth_0, info_0 = handlers.select_image(shown, 0)
    assert depth_0 is None and "select a cell" in info_0  # the grid: no depth map of its own


def test_section_values_reach_the_extension(handlers, tmp_path):
    path = save(tmp_path, picture(), "in.png")
    sections = [("*", "prompt_prefix", {"enabled": True, "prefix": "oil painting"}), ("*", "flaky", {"explode": False})]
    *_, info, _, shown, _ = final(
        handlers.generate("img2img", base_values(init_image=path, extension_sections=sections))
    )
    text = ShownResult.from_dict(shown).infotexts[0]
    assert text.startswith("oil painting, a house") and "Prompt prefix: oil painting" in text
    assert "sd-warnings" not in info


def test_extension_and_script_errors_are_readable(handlers, tmp_path):
    path = save(tmp_path, picture(), "in.png")
    explode = [("*", "flaky", {"explode": True})]
    *_, info, _, shown, _ = final(
        handlers.generate("img2img", base_values(init_image=path, extension_sections=explode))
    )
    warning = "extension flaky failed in on_step: RuntimeError: the latents exploded"
    assert len(ShownResult.from_dict(shown).images) == 1  # the job went on without the extension
    assert 'class="sd-warnings"' in info and warning in info
    assert warning in handlers.select_image(shown, 0)[1]  # still shown after a gallery selection
    values = base_values(init_image=path, script_name="Broken script", script_args={"Broken script": {"how": "x"}})
    gallery, _, info, progress, shown, _ = final(handlers.generate("img2img", values))
    assert gallery is None and progress == "" and ShownResult.from_dict(shown).images == []
    assert (
        'class="sd-error"' in info
        and "the script &#x27;Broken script&#x27; failed: RuntimeError: the plot broke (x)" in info
    )
    assert "Traceback" not in info and "File " not in info
    bad_axis = {XYZ: {"x_type": "Denoising", "x_values": "0.4,lots"}}
    *_, info, _, _, _ = final(handlers.generate("img2img", base_values(init_image=path, script_name=XYZ,
                                                                       script_args=bad_axis)))  # fmt: skip
    assert 'class="sd-error"' in info and "lots" in info and "Traceback" not in info
    # a script offered in img2img only is refused in inpaint upload before anything runs
    mask = save(tmp_path, np.full((H, W), 255, np.uint8), "mask.png")
    steps = list(handlers.generate("inpaint_upload", {**values, "inpaint_image": path, "inpaint_mask": mask}))
    assert len(steps) == 1 and "Script: the script" in steps[0][2] and "not available" in steps[0][2]


def test_page_builds_with_extension_tabs_and_shows_builder_errors(handlers):
    demo = build_ui(handlers)
    tab_labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert {"Flaky tab", "Broken tab", "Extensions", "Settings"} <= set(tab_labels)
    assert tab_labels.index("Flaky tab") < tab_labels.index("Settings") < tab_labels.index("Extensions")
    html = [str(b.value) for b in demo.blocks.values() if isinstance(b, gr.HTML)]
    markdown = [str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("1 checkpoint(s) here" in m for m in markdown)
    assert any("extension broken_ui failed to build this tab: KeyError" in h for h in html)
    assert any("extension broken_ui failed to build its controls: ValueError: no controls today" in h for h in html)


# --- the Extensions tab --------------------------------------------------------------------------------


def test_extensions_table_and_enable_disable(handlers, service):
    table, boxes = handlers.extensions_view()
    for name in ("xyz_plot", "prompt_prefix", "flaky", "broken_ui", "sleeper"):
        assert f"<b>{name}</b>" in table
    assert "built-in" in table and "user" in table and "Prompt prefix: put a fixed text" in table
    assert set(boxes["choices"]) - {"sd_upscale"} == {"xyz_plot", "prompt_prefix", "flaky", "broken_ui", "sleeper"}
    assert "sleeper" not in boxes["value"] and "flaky" in boxes["value"]
    everything = boxes["choices"]

    _, boxes, status = handlers.apply_extensions([n for n in everything if n not in ("prompt_prefix", "sleeper")])
    assert "Disabled prompt_prefix: stopped now" in status and "prompt_prefix" not in boxes["value"]
    assert service.settings.disabled_extensions == ["prompt_prefix", "sleeper"]
    assert json.loads(service.settings_path.read_text("utf-8"))["disabled_extensions"] == ["prompt_prefix", "sleeper"]
    assert "prompt_prefix" not in [e.name for e in service.extensions.enabled()]  # at once, no restart

    table, boxes, status = handlers.apply_extensions(everything)
    assert "Enabled prompt_prefix again" in status
    assert "Enabled sleeper: restart the web UI to load newly enabled extensions" in status
    assert "enabled: restart to load" in table and service.settings.disabled_extensions == []
    assert "Nothing changed" in handlers.apply_extensions(everything)[2]
    handlers.apply_extensions([n for n in everything if n != "sleeper"])
    assert service.settings.disabled_extensions == ["sleeper"]


def test_extension_load_error_is_shown_in_red():
    rows = [{"name": "bad", "builtin": False, "enabled": True, "error": "SyntaxError: <oops>", "description": "",
             "path": "/x/bad"}]  # fmt: skip
    html = render.extensions_table_html(rows)
    assert '<span class="sd-ext-error">error: SyntaxError: &lt;oops&gt;</span>' in html
    assert ".sd-batch-failed, .sd-ext-error { color: #c0392b; }" in render.CSS


# --- the Batch sub-tab ------------------------------------------------------------------------------------


def _batch_values(inp: Path, out: Path, **kw) -> dict:
    return base_values(batch_input_dir=str(inp), batch_output_dir=str(out), **kw)


def test_batch_options_name_the_field(tmp_path):
    inp = tmp_path / "in"
    save(inp, picture(), "a.png")
    with pytest.raises(ValidationError) as e:
        batch.batch_options(base_values(batch_input_dir=" ", batch_output_dir=str(tmp_path / "out")))
    assert e.value.field == "batch_input_dir" and "Input directory" in e.value.message
    with pytest.raises(ValidationError) as e:
        batch.batch_options(_batch_values(tmp_path / "missing", tmp_path / "out"))
    assert e.value.field == "batch_input_dir" and "is not a folder" in e.value.message
    with pytest.raises(ValidationError) as e:
        batch.batch_options(_batch_values(inp, inp))
    assert e.value.field == "batch_output_dir"
    with pytest.raises(ValidationError) as e:
        batch.batch_options(
            _batch_values(tmp_path / "out", tmp_path / "elsewhere") | {"batch_input_dir": str(tmp_path)}
        )
    assert "no images" in e.value.message
    with pytest.raises(ValidationError) as e:
        batch.batch_options(_batch_values(inp, tmp_path / "out", batch_mask_dir=str(tmp_path / "nomask")))
    assert e.value.field == "batch_mask_dir"
    options = batch.batch_options(_batch_values(inp, tmp_path / "out", batch_depth_dir=str(inp), batch_overwrite=True))
    assert options.output_dir == (tmp_path / "out").absolute() and options.depth_dir == inp and options.overwrite
    assert options.mask_dir is None and options.size_from_input is False and batch.batch_tab(options) == "img2img"
    template = batch.batch_template(_batch_values(inp, tmp_path / "out", batch_depth_invert=True,
                                                  denoising_strength=0.3, script_name=XYZ,
                                                  script_args={XYZ: {"x_type": "Seed"}}), options, scripts=[XYZ])  # fmt: skip
    assert template.init_images == [] and template.mask is None and template.depth_invert is True
    assert (template.denoising_strength, template.steps, template.width) == (0.3, 3, W)
    assert template.script_name == XYZ and template.script_args == {"x_type": "Seed"}


def test_batch_runs_a_folder_and_summarises(handlers, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    save(inp, picture(1), "a.png")
    save(inp, picture(2), "b.png")
    (inp / "c.png").write_bytes(b"not an image")
    steps = list(handlers.generate("batch", _batch_values(inp, out)))
    assert any("Batch: " in str(s[3]) for s in steps[:-1])  # the progress line while it runs
    gallery, depth_image, info, progress, shown, _ = steps[-1]
    assert progress == "" and "Batch finished" in info and "2 done, 0 skipped (output exists), 1 failed, of 3" in info
    assert "<b>Done:</b> a.png, b.png" in info and '<li class="sd-batch-failed"><b>Failed: c.png</b>' in info
    assert str(out) in info
    assert sorted(p.name for p in out.iterdir()) == ["a-depth.png", "a.png", "b-depth.png", "b.png"]
    assert len(gallery) == 2 and depth_image is not None
    for file, name in zip(gallery, ("a.png", "b.png"), strict=True):
        assert Path(file).read_bytes() == (out / name).read_bytes()
        assert "Denoising strength: 0.6" in images.read_infotext(Path(file).read_bytes())
    assert np.asarray(Image.open(io.BytesIO((out / "a.png").read_bytes()))).shape == (H, W, 3)
    # again: the done ones are skipped, the broken one fails again
    *_, info, _, shown, _ = final(handlers.generate("batch", _batch_values(inp, out)))
    assert "0 done, 2 skipped (output exists), 1 failed" in info and "<b>Skipped:</b> a.png, b.png" in info
    assert ShownResult.from_dict(shown).images == []


def test_batch_with_masks_and_depth_maps(handlers, tmp_path):
    inp, out, masks, depths = tmp_path / "in", tmp_path / "out", tmp_path / "masks", tmp_path / "depths"
    save(inp, picture(3), "frame1.png")
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 20:60] = 255
    save(masks, mask, "frame1.png")
    save(depths, np.tile(np.linspace(0, 255, W, dtype=np.uint8), (H, 1)), "frame1-depth.png")
    values = _batch_values(inp, out, batch_mask_dir=str(masks), batch_depth_dir=str(depths), mask_blur=0,
                           denoising_strength=1.0)  # fmt: skip
    *_, info, _, shown, _ = final(handlers.generate("batch", values))
    assert "1 done" in info, info
    result = np.asarray(Image.open(out / "frame1.png"))
    changed = np.abs(result.astype(int) - picture(3).astype(int)).max(-1) > 0
    assert changed[10:30, 20:60].mean() > 0.5 and not changed[mask == 0].any()  # only the masked part repainted
    text = ShownResult.from_dict(shown).infotexts[0]
    assert "Mask blur: 0" in text and "Depth source: uploaded map" in text, text


def test_batch_interrupt_stops_before_the_next_file(handlers, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save(inp, picture(i), f"{i}.png")
    generator = handlers.generate("batch", _batch_values(inp, out))
    next(generator)  # started
    handlers.interrupt()
    *_, info, _, _, _ = final(generator)
    assert "interrupted" in info and "Generate again to resume" in info
    assert len(list(out.glob("?.png"))) < 3
